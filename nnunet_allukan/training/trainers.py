"""nnU-Net v2 trainers for ALL U-KAN and the paper's baselines, under the paper's protocol.

``nnUNetv2_train DATASET 2d FOLD -tr nnUNetTrainerAllUKAN`` (or ``nnUNetTrainerUKAN``, ``nnUNetTrainerUKAN_MLP``,
or a short variant such as ``nnUNetTrainerAllUKAN_5epochs``). What differs from ``nnUNetTrainer`` (see
docs/training.md; the numbers live in :mod:`nnunet_allukan.training.protocol`):

- network: built from the plans by class path + kwargs recorded under ``"allukan_network"`` in the
  configuration, so ``nnUNetv2_predict`` rebuilds the same module tree from the model folder's plans.json;
  no deep supervision; patch sizes rounded up to multiples of 32; 3D configurations are refused.
- folds 0, 1, 2 = the paper's hold-out splits (seeds 2981, 6142, 1187), written to
  ``nnUNet_preprocessed/DatasetX/splits_allukan_paper.json`` and copied into the model folder.
- Adam (lr 1e-4, weight decay 1e-4), closed-form cosine annealing to 1e-5, 400 epochs, batch size 8,
  ceil(n_train / 8) iterations per epoch.
- binary datasets: one sigmoid output (nnU-Net region), loss 0.5 * BCE + (1 - Dice), sigmoid > 0.5 in
  validation and prediction. Several foreground labels: softmax with K + 1 outputs, CE + Dice.
- torch / numpy / random seeded with the fold's seed.

Everything else (data augmentation, sliding-window inference, checkpoints, logs, progress plot, DDP) is
nnU-Net's own code.
"""
from __future__ import annotations

import importlib
import json
import os
from copy import deepcopy
from typing import Mapping

import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_allukan.networks import network_summary
from nnunet_allukan.training.protocol import (
    PAPER_BATCH_SIZE, PAPER_BCE_WEIGHT, PAPER_DICE_SMOOTH, PAPER_INITIAL_LR, PAPER_MIN_LR, PAPER_NUM_EPOCHS,
    PAPER_SPLIT_SEEDS, PAPER_WEIGHT_DECAY, SPLITS_FILE_NAME, ClosedFormCosineLRScheduler,
    binary_labels_as_region, iterations_per_epoch, paper_splits_for_cases, round_up_patch_size, seed_everything,
)

__all__ = [
    f"nnUNetTrainer{network}{length}"
    for network in ("AllUKAN", "UKAN", "UKAN_MLP")
    for length in ("", "_1epoch", "_5epochs", "_10epochs", "_20epochs", "_50epochs", "_100epochs")
]

# Key of the network record inside a configuration of plans.json.
NETWORK_PLANS_KEY = "allukan_network"


def network_class_from_path(class_path: str) -> type[nn.Module]:
    """Imports ``package.module.ClassName`` (no fallback search: nnU-Net's would import timm)."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        network_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise RuntimeError(
            f"Cannot import the network class {class_path!r} recorded under '{NETWORK_PLANS_KEY}' in plans.json: "
            f"{e}. Is nnunet-allukan installed in this environment (pip install nnunet-allukan)?") from e
    return network_class


def build_network_from_plans(configuration_manager: ConfigurationManager, num_input_channels: int,
                             num_output_channels: int) -> nn.Module:
    """The network recorded in the configuration by :func:`plans_for_paper_protocol`.

    Input [B, num_input_channels, H, W] (H, W multiples of 32), output logits [B, num_output_channels, H, W].
    """
    record = configuration_manager.configuration.get(NETWORK_PLANS_KEY)
    if record is None:
        raise RuntimeError(
            f"The plans have no '{NETWORK_PLANS_KEY}' entry: this model folder was not written by an nnunet-allukan "
            "trainer. Re-train with -tr nnUNetTrainerAllUKAN (or nnUNetTrainerUKAN / nnUNetTrainerUKAN_MLP).")
    network_class = network_class_from_path(record["class"])
    return network_class(num_input_channels, num_output_channels, **record["kwargs"])


def plans_for_paper_protocol(plans: dict, configuration: str, network_class: str,
                             network_kwargs: Mapping) -> tuple[dict, list[str]]:
    """Copy of ``plans`` with the paper's batch size, a patch size of multiples of 32 and the network record.

    Writing these into the plans (rather than only into trainer attributes) keeps plans.json, nnU-Net's logs
    and the predictor consistent. Returns the new plans and log messages describing what was changed.
    Raises ValueError for configurations that are not 2D.
    """
    configuration_manager = PlansManager(deepcopy(plans)).get_configuration(configuration)
    patch_size = [int(s) for s in configuration_manager.patch_size]
    if len(patch_size) != 2:
        raise ValueError(
            f"Configuration {configuration!r} is {len(patch_size)}D (patch size {patch_size}). U-KAN and ALL U-KAN "
            "are 2D networks: train the '2d' configuration (nnUNetv2_train DATASET 2d FOLD -tr ...).")
    new_plans = deepcopy(plans)
    entry = new_plans["configurations"][configuration]
    messages = []
    rounded = round_up_patch_size(patch_size)
    if rounded != patch_size:
        messages.append(f"Patch size {patch_size} rounded up to {rounded} (multiples of 32: five 2x down-samplings).")
    entry["patch_size"] = rounded
    if configuration_manager.batch_size != PAPER_BATCH_SIZE:
        messages.append(f"Batch size {configuration_manager.batch_size} from the plans replaced by the paper's "
                        f"{PAPER_BATCH_SIZE}.")
    entry["batch_size"] = PAPER_BATCH_SIZE
    entry[NETWORK_PLANS_KEY] = {"class": network_class, "kwargs": deepcopy(dict(network_kwargs))}
    return new_plans, messages


class PaperBCEDiceLoss(DC_and_BCE_loss):
    """0.5 * BCE-with-logits + (1 - soft Dice) on sigmoid probabilities, Dice per sample and channel, smooth 1e-5.

    nnU-Net's ``DC_and_BCE_loss`` returns ``w_ce * BCE - w_dice * Dice``; adding ``w_dice`` gives the paper's
    value (same gradients), so logged losses are comparable with the reference U-KAN code.
    """

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(net_output, target) + self.weight_dice


class nnUNetTrainerAllUKAN(nnUNetTrainer):
    """ALL U-KAN (every conv a KAonv layer, every fc a KA layer; grad-free splines) under the paper's protocol."""

    network_class: str = "nnunet_allukan.networks.ALLUKAN"
    network_kwargs: dict = {"embed_dims": [128, 160, 256], "grad_free": True, "implementation": "fast",
                            "chunk_size": 32}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if isinstance(fold, bool) or fold not in range(len(PAPER_SPLIT_SEEDS)):
            raise ValueError(
                f"Fold {fold!r} does not exist for {self.__class__.__name__}: folds 0, 1, 2 are the paper's three "
                f"80/20 splits (seeds {', '.join(map(str, PAPER_SPLIT_SEEDS))}). Use nnUNetv2_train DATASET 2d 0 "
                f"-tr {self.__class__.__name__} (or 1, 2).")
        plans, plan_messages = plans_for_paper_protocol(plans, configuration, self.network_class,
                                                        self.network_kwargs)
        dataset_json = binary_labels_as_region(dataset_json)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = PAPER_NUM_EPOCHS
        self.initial_lr = PAPER_INITIAL_LR
        self.min_lr = PAPER_MIN_LR
        self.weight_decay = PAPER_WEIGHT_DECAY
        self.enable_deep_supervision = False
        self.split_seed = PAPER_SPLIT_SEEDS[fold]
        for message in plan_messages:
            self.print_to_log_file(message)

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Rebuilt from the plans alone (the predictor calls this with the model folder's plans.json).

        The networks have no deep supervision; ``enable_deep_supervision`` is accepted for nnU-Net's signature.
        """
        return build_network_from_plans(configuration_manager, num_input_channels, num_output_channels)

    def set_deep_supervision_enabled(self, enabled: bool):
        """The U-KAN family has a single full-resolution output and no ``.decoder``: nothing to switch."""

    def initialize(self):
        if not self.was_initialized:
            # Seed before the network is built so that weights and data sampling repeat per fold.
            seed_everything(self.split_seed)
            train_keys, val_keys = self.do_split()
            global_batch_size = self.configuration_manager.batch_size
            self.num_iterations_per_epoch = iterations_per_epoch(len(train_keys), global_batch_size)
            self.num_val_iterations_per_epoch = iterations_per_epoch(len(val_keys), global_batch_size)
        super().initialize()
        self._log_network_and_protocol()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        lr_scheduler = ClosedFormCosineLRScheduler(optimizer, self.initial_lr, self.min_lr, self.num_epochs)
        return optimizer, lr_scheduler

    def _build_loss(self):
        if self.label_manager.has_regions:
            loss = PaperBCEDiceLoss({}, {"batch_dice": False, "do_bg": True, "smooth": PAPER_DICE_SMOOTH,
                                         "ddp": self.is_ddp},
                                    weight_ce=PAPER_BCE_WEIGHT, weight_dice=1,
                                    use_ignore_label=self.label_manager.ignore_label is not None,
                                    dice_class=MemoryEfficientSoftDiceLoss)
        else:
            loss = DC_and_CE_loss({"batch_dice": False, "smooth": PAPER_DICE_SMOOTH, "do_bg": False,
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
        network = self.network.module if self.is_ddp else self.network
        network = getattr(network, "_orig_mod", network)
        record = self.configuration_manager.configuration[NETWORK_PLANS_KEY]
        summary = network_summary(network)
        layer_counts = ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("class", "parameters"))
        loss = ("loss 0.5 * BCE + (1 - Dice), one sigmoid output, prediction = sigmoid > 0.5"
                if self.label_manager.has_regions else
                "loss CE + Dice, softmax over background + foreground labels, prediction = argmax")
        batch_size, patch_size = self.configuration_manager.batch_size, self.configuration_manager.patch_size
        self.print_to_log_file(
            f"\nNetwork: {summary['class']} ({record['class']}, kwargs {json.dumps(record['kwargs'])}), "
            f"{self.num_input_channels} input channels -> {self.label_manager.num_segmentation_heads} outputs, "
            f"{summary['parameters']:,} parameters; layers: {layer_counts}\n"
            f"Protocol (ALL U-KAN paper): fold {self.fold} = split seed {self.split_seed}; "
            f"Adam lr {self.initial_lr:g}, weight decay {self.weight_decay:g}; cosine annealing to {self.min_lr:g} "
            f"over {self.num_epochs} epochs (closed form of the epoch); batch size {batch_size}; "
            f"{self.num_iterations_per_epoch} training / {self.num_val_iterations_per_epoch} validation iterations "
            f"per epoch (ceil(n / batch size)); patch size {patch_size}; {loss}; no deep supervision\n",
            add_timestamp=False)


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


class nnUNetTrainerUKAN(nnUNetTrainerAllUKAN):
    """The paper's U-KAN baseline (KAN fc layers, ordinary convolutions) under the same protocol."""

    network_class = "nnunet_allukan.networks.UKAN"
    network_kwargs = {"embed_dims": [128, 160, 256], "fc": "kan"}


class nnUNetTrainerUKAN_MLP(nnUNetTrainerAllUKAN):
    """U-KAN with its KAN fc layers replaced by nn.Linear (paper Table 2 'U-KAN_MLP'), same protocol."""

    network_class = "nnunet_allukan.networks.UKAN"
    network_kwargs = {"embed_dims": [128, 160, 256], "fc": "linear"}


# Short variants for quick runs (nnU-Net's nnUNetTrainer_Xepochs habit). The cosine schedule spans num_epochs.
class nnUNetTrainerAllUKAN_1epoch(nnUNetTrainerAllUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1


class nnUNetTrainerAllUKAN_5epochs(nnUNetTrainerAllUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class nnUNetTrainerAllUKAN_10epochs(nnUNetTrainerAllUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10


class nnUNetTrainerAllUKAN_20epochs(nnUNetTrainerAllUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 20


class nnUNetTrainerAllUKAN_50epochs(nnUNetTrainerAllUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


class nnUNetTrainerAllUKAN_100epochs(nnUNetTrainerAllUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 100


class nnUNetTrainerUKAN_1epoch(nnUNetTrainerUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1


class nnUNetTrainerUKAN_5epochs(nnUNetTrainerUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class nnUNetTrainerUKAN_10epochs(nnUNetTrainerUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10


class nnUNetTrainerUKAN_20epochs(nnUNetTrainerUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 20


class nnUNetTrainerUKAN_50epochs(nnUNetTrainerUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


class nnUNetTrainerUKAN_100epochs(nnUNetTrainerUKAN):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 100


class nnUNetTrainerUKAN_MLP_1epoch(nnUNetTrainerUKAN_MLP):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1


class nnUNetTrainerUKAN_MLP_5epochs(nnUNetTrainerUKAN_MLP):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class nnUNetTrainerUKAN_MLP_10epochs(nnUNetTrainerUKAN_MLP):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10


class nnUNetTrainerUKAN_MLP_20epochs(nnUNetTrainerUKAN_MLP):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 20


class nnUNetTrainerUKAN_MLP_50epochs(nnUNetTrainerUKAN_MLP):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


class nnUNetTrainerUKAN_MLP_100epochs(nnUNetTrainerUKAN_MLP):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 100
