"""Every trainer name of nnunet-allukan, for ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr NAME``.

nnU-Net finds ``-tr NAME`` through the re-export module that the wheel installs into its trainer folder
(:mod:`nnunet_allukan.training.nnunet_trainer_shim`: ``from nnunet_allukan.training.trainers import *``), so
``__all__`` below is the list of names users can train and predict with.

- The paper's protocol (:class:`~nnunet_allukan.training.paper_protocol.nnUNetTrainerPaperProtocol`) for a network
  of the paper's Table 2: ``nnUNetTrainerAllUKAN``, ``nnUNetTrainerUKAN``, ``nnUNetTrainerUKAN_MLP``, the
  reference script's separate fc-layer lr (``..._kanlr``) and every ablation row by number
  (``nnUNetTrainerTable2Row4`` ... ``Row13``; rows 4, 5, 13 are the three named networks).
- nnU-Net's own protocol with its planned network made fully KA: ``nnUNetTrainerKAUNet``
  (:mod:`nnunet_allukan.training.ka_unet_trainers`).
- Short runs, as nnU-Net's ``nnUNetTrainer_Xepochs``: ``<trainer>_<N>epoch(s)``, one-line subclasses that set
  ``epochs`` (the paper's cosine schedule then spans those epochs), all made by :func:`_short_run_variant` from
  the table ``SHORT_RUNS``.
"""
from __future__ import annotations

from nnunet_allukan.paper import KAN_FC_LR
from nnunet_allukan.training.ka_unet_trainers import nnUNetTrainerKAUNet, nnUNetTrainerKAUNet_smoke
from nnunet_allukan.training.paper_protocol import nnUNetTrainerPaperProtocol


class nnUNetTrainerAllUKAN(nnUNetTrainerPaperProtocol):
    """ALL U-KAN (every conv a KAonv layer, every fc a KA layer; grad-free splines): Table 2 row 13."""

    table2_row = "allukan"


class nnUNetTrainerUKAN(nnUNetTrainerPaperProtocol):
    """The paper's U-KAN baseline (vanilla KAN fc layers, ordinary convolutions): Table 2 row 5."""

    table2_row = "ukan"


class nnUNetTrainerUKAN_MLP(nnUNetTrainerPaperProtocol):
    """U-KAN with its KAN fc layers replaced by nn.Linear ("U-KAN_MLP"): Table 2 row 4."""

    table2_row = "ukan_mlp"


class nnUNetTrainerUKAN_kanlr(nnUNetTrainerUKAN):
    """U-KAN with the reference training script's recipe: lr 1e-2 for the KAN fc layers (its kan_lr)."""

    kan_fc_lr = KAN_FC_LR


class nnUNetTrainerAllUKAN_kanlr(nnUNetTrainerAllUKAN):
    """ALL U-KAN with the reference script's kan_lr 1e-2 for its KA fc layers."""

    kan_fc_lr = KAN_FC_LR


def _define(name: str, base: type, doc: str, **attributes) -> type:
    """A one-line subclass of ``base`` defined in this module (nnU-Net finds trainers by class name)."""
    trainer = type(name, (base,), {"__module__": __name__, "__qualname__": name, "__doc__": doc, **attributes})
    globals()[name] = trainer
    return trainer


def _table2_row_trainer(row: int) -> type:
    """``nnUNetTrainerTable2Row<row>``: rows 4, 5 and 13 are the named trainers under their row number."""
    base = {4: nnUNetTrainerUKAN_MLP, 5: nnUNetTrainerUKAN, 13: nnUNetTrainerAllUKAN}.get(row)
    if base is not None:
        return _define(f"nnUNetTrainerTable2Row{row}", base, f"Table 2 row {row}: {base.__name__}.")
    return _define(f"nnUNetTrainerTable2Row{row}", nnUNetTrainerPaperProtocol, f"Table 2 row {row}.",
                   table2_row=row)


def _short_run_variant(base: type, epochs: int) -> type:
    suffix = "1epoch" if epochs == 1 else f"{epochs}epochs"
    return _define(f"{base.__name__}_{suffix}", base, f"{base.__name__} for {epochs} epoch(s).", epochs=epochs)


TABLE2_ROW_TRAINERS = [_table2_row_trainer(row) for row in range(4, 14)]

_LENGTHS = (1, 2, 5, 10, 20, 50, 100)
# The trainers that have short-run variants, and their lengths in epochs.
SHORT_RUNS: dict[type, tuple[int, ...]] = {
    nnUNetTrainerAllUKAN: _LENGTHS,
    nnUNetTrainerUKAN: _LENGTHS,
    nnUNetTrainerUKAN_MLP: _LENGTHS,
    nnUNetTrainerUKAN_kanlr: (1, 5, 50),
    nnUNetTrainerAllUKAN_kanlr: (1, 5, 50),
    nnUNetTrainerKAUNet: _LENGTHS + (250,),
    **{trainer: _LENGTHS for trainer in TABLE2_ROW_TRAINERS},
}
SHORT_RUN_TRAINERS = [_short_run_variant(base, epochs) for base, lengths in SHORT_RUNS.items() for epochs in lengths]

__all__ = ["nnUNetTrainerPaperProtocol", "nnUNetTrainerAllUKAN", "nnUNetTrainerUKAN", "nnUNetTrainerUKAN_MLP",
           "nnUNetTrainerUKAN_kanlr", "nnUNetTrainerAllUKAN_kanlr", "nnUNetTrainerKAUNet",
           "nnUNetTrainerKAUNet_smoke"] + [t.__name__ for t in TABLE2_ROW_TRAINERS + SHORT_RUN_TRAINERS]
