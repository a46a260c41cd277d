"""nnU-Net v2 trainers for ALL U-KAN and the paper's baselines, under the paper's protocol (2D and 3D).

``nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerAllUKAN`` (or ``3d_fullres`` / ``3d_lowres``; or
``nnUNetTrainerUKAN``, ``nnUNetTrainerUKAN_MLP``, or a short variant such as ``nnUNetTrainerAllUKAN_5epochs``).
:class:`nnUNetTrainerPaperProtocol` applies the protocol; each subclass only names its network (a row of the paper's
Table 2). What differs from ``nnUNetTrainer`` (docs/training.md; the numbers are in :mod:`nnunet_allukan.paper`):

- network: recorded in the configuration's standard ``architecture`` entry (``nnunet_allukan.networks.UKAN`` with
  the row's layer types), so nnU-Net's own ``get_network_from_plans`` builds it in training and in
  ``nnUNetv2_predict``; no deep supervision. 2D: patch sides rounded up to multiples of 32; 3D: the U-KAN
  down-sampling follows the configuration's planned strides (docs/architecture.md).
- folds 0, 1, 2 = the paper's hold-out splits (seeds 2981, 6142, 1187), written to
  ``nnUNet_preprocessed/DatasetX/splits_allukan_paper.json`` and copied into the model folder.
- Adam (lr 1e-4, weight decay 1e-4), closed-form cosine annealing to 1e-5, 400 epochs, batch size 8,
  floor(n_train / 8) training iterations per epoch (the reference loader drops the last partial batch).
- binary datasets: one sigmoid output (nnU-Net region), loss 0.5 * BCE + (1 - Dice), sigmoid > 0.5 in
  validation and prediction. Several foreground labels: softmax with K + 1 outputs, CE + Dice.
- torch / numpy / random seeded with the fold's seed.

Everything else (data augmentation, sliding-window inference, checkpoints, logs, progress plot, DDP) is
nnU-Net's own code. The fully KA versions of nnU-Net's own planned networks, under nnU-Net's own protocol, are
in :mod:`nnunet_allukan.training.ka_unet_trainers` (``nnUNetTrainerKAUNet``), re-exported here.
"""
from __future__ import annotations

import json
import os

import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_allukan.networks import UKAN, layer_counts_text, network_summary, table2_row
from nnunet_allukan.paper import (BCE_WEIGHT, DICE_SMOOTH, INITIAL_LR, KAN_FC_LR, MIN_LR, NUM_EPOCHS,
                                  SPLIT_SEEDS, SPLITS_FILE_NAME, WEIGHT_DECAY)
from nnunet_allukan.training.architectures import plans_with_ukan_architecture
from nnunet_allukan.training.faults import TrainingFaultsMixin, check_architecture_importable, unwrapped_network
from nnunet_allukan.training.ka_unet_trainers import *  # noqa: F401,F403  (one module for nnU-Net's trainer hook)
from nnunet_allukan.training.ka_unet_trainers import __all__ as _ka_unet_trainers
from nnunet_allukan.training.protocol import (
    ClosedFormCosineLRScheduler, binary_labels_as_region, is_kan_fc_parameter, iterations_per_epoch,
    paper_splits_for_cases, seed_everything,
)

_LENGTHS = {"_1epoch": 1, "_2epochs": 2, "_5epochs": 5, "_10epochs": 10, "_20epochs": 20, "_50epochs": 50,
            "_100epochs": 100}
__all__ = ["nnUNetTrainerPaperProtocol"] + [
    f"nnUNetTrainer{network}{length}" for network in ("AllUKAN", "UKAN", "UKAN_MLP") for length in ("", *_LENGTHS)
] + list(_ka_unet_trainers)

# Where nnunet-allukan 0.1.0 recorded the network; model folders written by it still predict.
LEGACY_NETWORK_PLANS_KEY = "allukan_network"


class PaperBCEDiceLoss(DC_and_BCE_loss):
    """0.5 * BCE-with-logits + (1 - soft Dice) on sigmoid probabilities, Dice per sample and channel, smooth 1e-5.

    nnU-Net's ``DC_and_BCE_loss`` returns ``w_ce * BCE - w_dice * Dice``; adding ``w_dice`` gives the paper's
    value (same gradients), so logged losses are comparable with the reference U-KAN code.
    """

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(net_output, target) + self.weight_dice


class nnUNetTrainerPaperProtocol(TrainingFaultsMixin, nnUNetTrainer):
    """The paper's protocol for a U-KAN-family network; subclasses set ``table2_row`` (and ``epochs``) only."""

    table2_row: "int | str | None" = None  # the network: a row of the paper's Table 2 (number or name)
    epochs: int = NUM_EPOCHS
    # The reference script's separate lr for the tokenised blocks' fc layers (its kan_lr); None: one lr for all.
    kan_fc_lr: "float | None" = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        name = self.__class__.__name__
        if self.table2_row is None:
            raise TypeError(f"{name} is the protocol's base class and names no network: train nnUNetTrainerAllUKAN, "
                            "nnUNetTrainerUKAN or nnUNetTrainerUKAN_MLP")
        if isinstance(fold, bool) or fold not in range(len(SPLIT_SEEDS)):
            raise ValueError(
                f"Fold {fold!r} does not exist for {name}: folds 0, 1, 2 are the paper's three 80/20 splits (seeds "
                f"{', '.join(map(str, SPLIT_SEEDS))}). Use nnUNetv2_train DATASET {configuration} 0 -tr {name} "
                "(or 1, 2).")
        plans, plan_messages = plans_with_ukan_architecture(plans, configuration, self.table2_row)
        dataset_json = binary_labels_as_region(dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.initial_lr = INITIAL_LR
        self.min_lr = MIN_LR
        self.weight_decay = WEIGHT_DECAY
        self.enable_deep_supervision = False
        self.split_seed = SPLIT_SEEDS[fold]
        for message in plan_messages:
            self.print_to_log_file(message)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """nnU-Net's own build from the ``architecture`` entry (what the predictor calls with the model folder's
        plans.json); model folders of nnunet-allukan 0.1.0 are rebuilt from their ``allukan_network`` record."""
        legacy = configuration_manager.configuration.get(LEGACY_NETWORK_PLANS_KEY)
        if legacy is not None:
            return _build_legacy_network(legacy, num_input_channels, num_output_channels)
        check_architecture_importable(configuration_manager.configuration["architecture"])
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision=False)

    def on_train_start(self):
        super().on_train_start()
        if self.device.type == "cuda" and self.local_rank == 0:
            from nnunet_allukan.training.memory import estimate_training_memory, memory_message

            patch = self.configuration_manager.patch_size
            estimate = estimate_training_memory(unwrapped_network(self.network), (self.num_input_channels, *patch),
                                                self.batch_size, self.device)
            row = table2_row(self.table2_row)
            self.print_to_log_file(memory_message(estimate, f"Table 2 row {row.row} ({row.name})", patch)[1])

    def set_deep_supervision_enabled(self, enabled: bool):
        """The U-KAN family has a single full-resolution output and no ``.decoder``: nothing to switch."""

    def initialize(self):
        if not self.was_initialized:
            # Seed before the network is built so that weights and data sampling repeat per fold.
            seed_everything(self.split_seed)
            train_keys, val_keys = self.do_split()
            global_batch_size = self.configuration_manager.batch_size
            self.num_iterations_per_epoch = iterations_per_epoch(len(train_keys), global_batch_size)
            self.num_val_iterations_per_epoch = iterations_per_epoch(len(val_keys), global_batch_size,
                                                                     drop_last=False)
        super().initialize()
        self._log_network_and_protocol()

    def configure_optimizers(self):
        if self.kan_fc_lr is None:
            groups = [{"params": list(self.network.parameters())}]
        else:
            named = list(unwrapped_network(self.network).named_parameters())
            fc = [p for n, p in named if is_kan_fc_parameter(n)]
            groups = [{"params": [p for n, p in named if not is_kan_fc_parameter(n)]},
                      {"params": fc, "lr": self.kan_fc_lr}]
            self.print_to_log_file(f"Reference recipe: lr {self.kan_fc_lr:g} for the {len(fc)} fc-layer parameter "
                                   f"tensors ('layer' and 'fc' in the name), {self.initial_lr:g} for the rest")
        optimizer = torch.optim.Adam(groups, lr=self.initial_lr, weight_decay=self.weight_decay)
        lr_scheduler = ClosedFormCosineLRScheduler(optimizer, self.initial_lr, self.min_lr, self.num_epochs)
        return optimizer, lr_scheduler

    def _build_loss(self):
        if self.label_manager.has_regions:
            loss = PaperBCEDiceLoss({}, {"batch_dice": False, "do_bg": True, "smooth": DICE_SMOOTH,
                                         "ddp": self.is_ddp},
                                    weight_ce=BCE_WEIGHT, weight_dice=1,
                                    use_ignore_label=self.label_manager.ignore_label is not None,
                                    dice_class=MemoryEfficientSoftDiceLoss)
        else:
            loss = DC_and_CE_loss({"batch_dice": False, "smooth": DICE_SMOOTH, "do_bg": False,
                                   "ddp": self.is_ddp}, {}, weight_ce=1, weight_dice=1,
                                  ignore_label=self.label_manager.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        if self._do_i_compile():
            loss.dc = torch.compile(loss.dc)
        return loss

    def do_split(self):
        """The paper's split for this fold; all three are written where the user can read them."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        case_ids = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
        original_ids = self.dataset_json.get("original_ids")
        splits = paper_splits_for_cases(case_ids, original_ids)
        if self.local_rank == 0:
            for folder in (self.preprocessed_dataset_folder_base, self.output_folder_base):
                _write_json_if_changed(splits, join(folder, SPLITS_FILE_NAME))
        train_keys, val_keys = splits[self.fold]["train"], splits[self.fold]["val"]
        names = "original image names" if original_ids else "nnU-Net case identifiers"
        self.print_to_log_file(
            f"Paper split fold {self.fold} (seed {self.split_seed}, 80/20 train_test_split of the sorted {names}): "
            f"{len(train_keys)} training, {len(val_keys)} validation cases. All splits: "
            f"{join(self.preprocessed_dataset_folder_base, SPLITS_FILE_NAME)}")
        return train_keys, val_keys

    def _log_network_and_protocol(self):
        network = unwrapped_network(self.network)
        architecture = self.configuration_manager.configuration["architecture"]
        summary = network_summary(network)
        layer_counts = layer_counts_text(summary)
        loss = ("loss 0.5 * BCE + (1 - Dice), one sigmoid output, prediction = sigmoid > 0.5"
                if self.label_manager.has_regions else
                "loss CE + Dice, softmax over background + foreground labels, prediction = argmax")
        batch_size, patch_size = self.configuration_manager.batch_size, self.configuration_manager.patch_size
        row = table2_row(self.table2_row)
        self.print_to_log_file(
            f"\nNetwork: Table 2 row {row.row} ({row.description}): {architecture['network_class_name']}, "
            f"arch_kwargs {json.dumps(architecture['arch_kwargs'])}, "
            f"{self.num_input_channels} input channels -> {self.label_manager.num_segmentation_heads} outputs, "
            f"{summary['parameters']:,} parameters; layers: {layer_counts}\n"
            f"Protocol (ALL U-KAN paper): fold {self.fold} = split seed {self.split_seed}; "
            f"Adam lr {self.initial_lr:g}, weight decay {self.weight_decay:g}; cosine annealing to {self.min_lr:g} "
            f"over {self.num_epochs} epochs (closed form of the epoch); batch size {batch_size}; "
            f"{self.num_iterations_per_epoch} training / {self.num_val_iterations_per_epoch} validation iterations "
            f"per epoch (floor / ceil of n / batch size); patch size {patch_size}; {loss}; no deep supervision\n",
            add_timestamp=False)


def _build_legacy_network(record: dict, num_input_channels: int, num_output_channels: int) -> nn.Module:
    """A network recorded by nnunet-allukan 0.1.0: ``{"class": "...ALLUKAN" | "...UKAN", "kwargs": {...}}``."""
    from nnunet_allukan.networks import ALLUKAN

    kwargs = dict(record["kwargs"])
    if record["class"].endswith(".ALLUKAN"):
        return ALLUKAN(num_input_channels, num_output_channels, **kwargs)
    row = {"kan": "ukan", "linear": "ukan_mlp"}[kwargs.pop("fc")]
    return UKAN(num_input_channels, num_output_channels, kwargs.pop("embed_dims"),
                **table2_row(row).network_kwargs(2))


def _write_json_if_changed(obj, path: str) -> None:
    """Writes ``obj`` as JSON atomically (temp file + rename), leaving an identical file untouched."""
    text = json.dumps(obj, indent=1)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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


# Every ablation row of Table 2 by its number (rows 4, 5, 13 are the three trainers above).
class nnUNetTrainerTable2Row4(nnUNetTrainerUKAN_MLP): pass
class nnUNetTrainerTable2Row5(nnUNetTrainerUKAN): pass
class nnUNetTrainerTable2Row6(nnUNetTrainerPaperProtocol): table2_row = 6
class nnUNetTrainerTable2Row7(nnUNetTrainerPaperProtocol): table2_row = 7
class nnUNetTrainerTable2Row8(nnUNetTrainerPaperProtocol): table2_row = 8
class nnUNetTrainerTable2Row9(nnUNetTrainerPaperProtocol): table2_row = 9
class nnUNetTrainerTable2Row10(nnUNetTrainerPaperProtocol): table2_row = 10
class nnUNetTrainerTable2Row11(nnUNetTrainerPaperProtocol): table2_row = 11
class nnUNetTrainerTable2Row12(nnUNetTrainerPaperProtocol): table2_row = 12
class nnUNetTrainerTable2Row13(nnUNetTrainerAllUKAN): pass


# Short variants for quick runs (nnU-Net's nnUNetTrainer_Xepochs habit); the cosine schedule spans `epochs`.
class nnUNetTrainerAllUKAN_1epoch(nnUNetTrainerAllUKAN): epochs = 1
class nnUNetTrainerAllUKAN_2epochs(nnUNetTrainerAllUKAN): epochs = 2
class nnUNetTrainerAllUKAN_5epochs(nnUNetTrainerAllUKAN): epochs = 5
class nnUNetTrainerAllUKAN_10epochs(nnUNetTrainerAllUKAN): epochs = 10
class nnUNetTrainerAllUKAN_20epochs(nnUNetTrainerAllUKAN): epochs = 20
class nnUNetTrainerAllUKAN_50epochs(nnUNetTrainerAllUKAN): epochs = 50
class nnUNetTrainerAllUKAN_100epochs(nnUNetTrainerAllUKAN): epochs = 100
class nnUNetTrainerUKAN_1epoch(nnUNetTrainerUKAN): epochs = 1
class nnUNetTrainerUKAN_2epochs(nnUNetTrainerUKAN): epochs = 2
class nnUNetTrainerUKAN_5epochs(nnUNetTrainerUKAN): epochs = 5
class nnUNetTrainerUKAN_10epochs(nnUNetTrainerUKAN): epochs = 10
class nnUNetTrainerUKAN_20epochs(nnUNetTrainerUKAN): epochs = 20
class nnUNetTrainerUKAN_50epochs(nnUNetTrainerUKAN): epochs = 50
class nnUNetTrainerUKAN_100epochs(nnUNetTrainerUKAN): epochs = 100
class nnUNetTrainerUKAN_MLP_1epoch(nnUNetTrainerUKAN_MLP): epochs = 1
class nnUNetTrainerUKAN_MLP_2epochs(nnUNetTrainerUKAN_MLP): epochs = 2
class nnUNetTrainerUKAN_MLP_5epochs(nnUNetTrainerUKAN_MLP): epochs = 5
class nnUNetTrainerUKAN_MLP_10epochs(nnUNetTrainerUKAN_MLP): epochs = 10
class nnUNetTrainerUKAN_MLP_20epochs(nnUNetTrainerUKAN_MLP): epochs = 20
class nnUNetTrainerUKAN_MLP_50epochs(nnUNetTrainerUKAN_MLP): epochs = 50
class nnUNetTrainerUKAN_MLP_100epochs(nnUNetTrainerUKAN_MLP): epochs = 100
class nnUNetTrainerUKAN_kanlr_1epoch(nnUNetTrainerUKAN_kanlr): epochs = 1
class nnUNetTrainerUKAN_kanlr_5epochs(nnUNetTrainerUKAN_kanlr): epochs = 5
class nnUNetTrainerUKAN_kanlr_50epochs(nnUNetTrainerUKAN_kanlr): epochs = 50
class nnUNetTrainerAllUKAN_kanlr_1epoch(nnUNetTrainerAllUKAN_kanlr): epochs = 1
class nnUNetTrainerAllUKAN_kanlr_5epochs(nnUNetTrainerAllUKAN_kanlr): epochs = 5
class nnUNetTrainerAllUKAN_kanlr_50epochs(nnUNetTrainerAllUKAN_kanlr): epochs = 50


def _table2_row_short_variants() -> list[str]:
    """nnUNetTrainerTable2Row<N>_<length> for rows 4-13 and the lengths of the main trainers' variants:
    one-line subclasses (``epochs = n``), made in a loop rather than written out 70 times."""
    names = []
    for row in range(4, 14):
        base = globals()[f"nnUNetTrainerTable2Row{row}"]
        for suffix, epochs in _LENGTHS.items():
            name = f"nnUNetTrainerTable2Row{row}{suffix}"
            globals()[name] = type(name, (base,), {"epochs": epochs, "__module__": __name__,
                                                   "__doc__": f"Table 2 row {row}, {epochs} epoch(s)."})
            names.append(name)
    return names


__all__ += ["nnUNetTrainerUKAN_kanlr", "nnUNetTrainerAllUKAN_kanlr"] + [
    f"nnUNetTrainer{n}_kanlr_{length}" for n in ("UKAN", "AllUKAN") for length in ("1epoch", "5epochs", "50epochs")
] + [f"nnUNetTrainerTable2Row{row}" for row in range(4, 14)] + _table2_row_short_variants()
