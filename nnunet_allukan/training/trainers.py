"""Every trainer name of nnunet-allukan, for ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr NAME``
(``nnUNetv2_allukan_trainers`` prints them, grouped, with what each changes).

nnU-Net finds ``-tr NAME`` through the re-export module that the wheel installs into its trainer folder
(:mod:`nnunet_allukan.training.nnunet_trainer_shim`: ``from nnunet_allukan.training.trainers import *``), so
``TRAINER_NAMES`` below (exported by ``__all__``) is the list of names users can train and predict with. A name
nnU-Net looks for and this module lacks reaches the module ``__getattr__``, which ``__all__`` re-exports into the
shim too: a misspelling of one of these names is answered there, at once, with the closest names.

- The paper's protocol (:class:`~nnunet_allukan.training.paper_protocol.nnUNetTrainerPaperProtocol`) for a network
  of the paper's Table 2: ``nnUNetTrainerAllUKAN``, ``nnUNetTrainerUKAN``, ``nnUNetTrainerUKAN_MLP``, the
  reference script's separate fc-layer lr (``..._kanlr``) and every ablation row by number
  (``nnUNetTrainerTable2Row4`` ... ``Row13``). Rows 4, 5 and 13 are the three named trainers under a second
  name (the same class: nnU-Net names the results folder after the class, e.g. ``nnUNetTrainerAllUKAN__...``).
- nnU-Net's own protocol with its planned network made fully KA: ``nnUNetTrainerKAUNet``
  (:mod:`nnunet_allukan.training.ka_unet_trainers`).
- Other basis families of the KA layers than the paper's cubic B-splines (layers/splines.py), for both protocols:
  ``nnUNetTrainerKAUNet_<family>`` and ``nnUNetTrainerAllUKAN_<family>`` with family ``rbf``, ``chebyshev``,
  ``relu``, ``bspline1`` and ``bspline2`` (B-splines of order 1 and 2), made by :func:`_basis_variant` from the
  table ``BASIS_VARIANTS``.
- Short runs, as nnU-Net's ``nnUNetTrainer_Xepochs``: ``<trainer>_<N>epoch(s)``, one-line subclasses that set
  ``epochs`` (the paper's cosine schedule then spans those epochs), all made by :func:`_short_run_variant` from
  the table ``SHORT_RUNS``; those of rows 4, 5 and 13 are again the named trainers' ones.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

from nnunet_allukan.networks import table2_row
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
    """``nnUNetTrainerTable2Row<row>`` for an ablation row that no named trainer trains."""
    return _define(f"nnUNetTrainerTable2Row{row}", nnUNetTrainerPaperProtocol,
                   f"Table 2 row {row}: {table2_row(row).description}.", table2_row=row)


def _short_run_suffix(epochs: int) -> str:
    return "1epoch" if epochs == 1 else f"{epochs}epochs"


def _short_run_variant(base: type, epochs: int) -> type:
    return _define(f"{base.__name__}_{_short_run_suffix(epochs)}", base,
                   f"{base.__name__} for {epochs} epoch{'s' if epochs > 1 else ''}.", epochs=epochs)


# Basis families of the KA layers: trainer suffix -> (layer options, what the trainer changes).
BASIS_VARIANTS: dict[str, tuple[dict, str]] = {
    "rbf": ({"basis": "rbf"}, "Gaussian RBF bases on the grid (FastKAN's)"),
    "chebyshev": ({"basis": "chebyshev"}, "Chebyshev polynomials of tanh x (ChebyKAN's)"),
    "relu": ({"basis": "relu"}, "ReLU-KAN's squared-ReLU bumps"),
    "bspline1": ({"spline_order": 1}, "linear B-splines (spline order 1)"),
    "bspline2": ({"spline_order": 2}, "quadratic B-splines (spline order 2)"),
}


def _basis_variant(base: type, suffix: str) -> type:
    """``<base>_<suffix>``: ``base`` with the KA layer options of ``BASIS_VARIANTS[suffix]``, recorded in the plans
    (``ka_kwargs`` of nnU-Net's protocol, ``layer_options`` of the paper's)."""
    options, what = BASIS_VARIANTS[suffix]
    attribute = "ka_kwargs" if issubclass(base, nnUNetTrainerKAUNet) else "layer_options"
    return _define(f"{base.__name__}_{suffix}", base,
                   f"{base.__name__} with {what} instead of the cubic B-splines in every KA layer.",
                   **{attribute: {**getattr(base, attribute), **options}})


BASIS_TRAINERS = [_basis_variant(base, suffix) for base in (nnUNetTrainerKAUNet, nnUNetTrainerAllUKAN)
                  for suffix in BASIS_VARIANTS]
PAPER_PROTOCOL_TRAINERS = [nnUNetTrainerAllUKAN, nnUNetTrainerUKAN, nnUNetTrainerUKAN_MLP, nnUNetTrainerUKAN_kanlr,
                           nnUNetTrainerAllUKAN_kanlr]
# The Table 2 rows that a named trainer trains: the row's name is that trainer (one class, one results folder).
NAMED_TABLE2_ROWS: dict[int, type] = {4: nnUNetTrainerUKAN_MLP, 5: nnUNetTrainerUKAN, 13: nnUNetTrainerAllUKAN}
TABLE2_ROW_TRAINERS = [_table2_row_trainer(row) for row in range(4, 14) if row not in NAMED_TABLE2_ROWS]
KA_UNET_TRAINERS = [nnUNetTrainerKAUNet, nnUNetTrainerKAUNet_smoke]

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



def _row_aliases() -> dict[str, type]:
    """Second names of the named trainers: Table 2 rows 4, 5, 13 and their short runs."""
    aliases = {}
    for row, trainer in NAMED_TABLE2_ROWS.items():
        aliases[f"nnUNetTrainerTable2Row{row}"] = trainer
        for epochs in SHORT_RUNS[trainer]:
            suffix = _short_run_suffix(epochs)
            aliases[f"nnUNetTrainerTable2Row{row}_{suffix}"] = globals()[f"{trainer.__name__}_{suffix}"]
    return aliases


ALIASES: dict[str, type] = _row_aliases()
globals().update(ALIASES)

# Every name, grouped as nnUNetv2_allukan_trainers lists them.
TRAINER_GROUPS: dict[str, list[str]] = {
    "The paper's protocol (its split per fold, optimiser, schedule, loss; 400 epochs) for a network of Table 2":
        [t.__name__ for t in [nnUNetTrainerPaperProtocol] + PAPER_PROTOCOL_TRAINERS],
    "Table 2 ablation rows (the paper's protocol)":
        sorted([t.__name__ for t in TABLE2_ROW_TRAINERS] + [f"nnUNetTrainerTable2Row{r}" for r in NAMED_TABLE2_ROWS],
               key=lambda name: int(name.rsplit("Row", 1)[1])),
    "nnU-Net's own protocol with its planned U-Net made fully Kolmogorov-Arnold":
        [t.__name__ for t in KA_UNET_TRAINERS],
    "Other basis families of the KA layers (layers/splines.py; docs/layers.md, \"Basis families\")":
        [t.__name__ for t in BASIS_TRAINERS],
    "Short runs: the trainer before the suffix, for that many epochs (the schedule spans them)":
        [t.__name__ for t in SHORT_RUN_TRAINERS] + [n for n in ALIASES if "_" in n.rsplit("Row", 1)[1]],
}
TRAINER_NAMES: tuple[str, ...] = tuple(name for names in TRAINER_GROUPS.values() for name in names)


def describe_trainer(name: str) -> str:
    """One line: what the trainer ``name`` changes (the first sentence of its docstring), or which trainer it is."""
    trainer = globals()[name]
    if name in ALIASES:
        return f"= {trainer.__name__} (the same trainer, the same results folder)"
    if trainer is nnUNetTrainerPaperProtocol:
        return "the protocol's base class: it names no network, so -tr takes one of the trainers below"
    first_paragraph = " ".join((trainer.__doc__ or "").strip().split("\n\n")[0].replace("``", "").split())
    return re.split(r"(?<=\.) ", first_paragraph, maxsplit=1)[0]


def closest_trainer_names(name: str, count: int = 5) -> list[str]:
    """The trainer names of this package closest to ``name`` (case ignored), best first."""
    lowered = {trainer.lower(): trainer for trainer in TRAINER_NAMES}
    return [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=count, cutoff=0.6)]


def nnunet_defines(name: str) -> bool:
    """True if a module in nnU-Net's trainer folder, or in an ``nnUNet_extTrainer`` folder, defines ``name``
    (read as text: importing nnU-Net's variants imports timm)."""
    from nnunetv2.paths import nnUNet_extTrainer

    from nnunet_allukan.training.registration import nnunet_trainer_folder

    folders = [nnunet_trainer_folder()]
    if nnUNet_extTrainer.is_set():
        folders += [Path(folder) for folder in nnUNet_extTrainer.get().split(os.pathsep) if folder.strip()]
    definition = re.compile(rf"^\s*(class\s+{re.escape(name)}\b|{re.escape(name)}\s*=)", re.MULTILINE)
    for folder in folders:
        for module in folder.rglob("*.py") if folder.is_dir() else ():
            try:
                if definition.search(module.read_text(errors="replace")):
                    return True
            except OSError:
                continue
    return False


_HINTED: set[str] = set()


def __getattr__(name: str):
    """A trainer name this module lacks. nnU-Net's lookup of ``-tr NAME`` asks every plain module of its trainer
    folder, the shim included: if no module there (nor in an ``nnUNet_extTrainer`` folder) defines the name, the
    closest names of this package are printed at once, before nnU-Net's search goes on into its sub-packages
    (which import timm: where torchvision cannot load, that search ends in a long traceback that does not name the
    trainer)."""
    if name.startswith("nnUNetTrainer") and name not in _HINTED and not nnunet_defines(name):
        _HINTED.add(name)
        close = closest_trainer_names(name)
        hint = (f"no trainer is called {name}; the closest of nnunet-allukan: {', '.join(close)} "
                if close else f"no trainer is called {name} ")
        print(f"nnunet-allukan: {hint}(all of them: nnUNetv2_allukan_trainers)", file=sys.stderr, flush=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ``__getattr__`` is exported so that the shim's ``import *`` gives the shim the same lookup hint.
__all__ = [*TRAINER_NAMES, "__getattr__"]
