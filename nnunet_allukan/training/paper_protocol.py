"""The paper's training protocol as one nnU-Net trainer base: :class:`nnUNetTrainerPaperProtocol`.

A subclass names its network (a row of the paper's Table 2, ``table2_row``) and may set ``epochs``, ``kan_fc_lr``
and ``layer_options`` (the KA / KAN layers' options, e.g. another spline grid); the named trainers are in
:mod:`nnunet_allukan.training.trainers`. What differs from ``nnUNetTrainer`` (docs/training.md; the numbers are
in :mod:`nnunet_allukan.paper`, the protocol's functions in :mod:`nnunet_allukan.training.protocol`):

- network: recorded in the configuration's standard ``architecture`` entry (``nnunet_allukan.networks.UKAN`` with
  the row's layer types), so nnU-Net's own ``get_network_from_plans`` builds it in training and in
  ``nnUNetv2_predict``; no deep supervision. 2D: patch sides rounded up to multiples of 32; 3D: the U-KAN
  down-sampling follows the configuration's planned strides (docs/networks.md).
- folds 0, 1, 2 = the paper's hold-out splits (seeds 2981, 6142, 1187), written to
  ``nnUNet_preprocessed/DatasetX/splits_allukan_paper.json`` and copied into the model folder.
- Adam (lr 1e-4, weight decay 1e-4), closed-form cosine annealing to 1e-5, 400 epochs, batch size 8,
  floor(n_train / 8) training iterations per epoch (the reference loader drops the last partial batch).
- binary datasets: one sigmoid output (nnU-Net region), loss 0.5 * BCE + (1 - Dice), sigmoid > 0.5 in
  validation and prediction. Several foreground labels: softmax with K + 1 outputs, CE + Dice.
- torch / numpy / random seeded with the fold's seed (under DDP, the ranks after 0 reseeded after the network is
  built, so that each draws its own batches).

Everything else (data augmentation, sliding-window inference, checkpoints, logs, progress plot, DDP) is
nnU-Net's own code.
"""
from __future__ import annotations

import json
import os

import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_allukan.networks import layer_counts_text, network_summary, table2_row
from nnunet_allukan.paper import (BCE_WEIGHT, DICE_SMOOTH, GRID_RANGE, GRID_SIZE, INITIAL_LR, MIN_LR, NUM_EPOCHS,
                                  SPLINE_ORDER, SPLIT_SEEDS, SPLITS_FILE_NAME, WEIGHT_DECAY)
from nnunet_allukan.training.architectures import plans_with_ukan_architecture
from nnunet_allukan.training.base import KATrainerBase, unwrapped_network
from nnunet_allukan.training.protocol import (
    ClosedFormCosineLRScheduler, binary_labels_as_region, is_kan_fc_parameter, iterations_per_epoch,
    paper_splits_for_cases, rank_seed, seed_everything,
)

__all__ = ["PaperBCEDiceLoss", "nnUNetTrainerPaperProtocol"]


class PaperBCEDiceLoss(DC_and_BCE_loss):
    """0.5 * BCE-with-logits + (1 - soft Dice) on sigmoid probabilities, Dice per sample and channel, smooth 1e-5.

    nnU-Net's ``DC_and_BCE_loss`` returns ``w_ce * BCE - w_dice * Dice``; adding ``w_dice`` gives the paper's
    value (same gradients), so logged losses are comparable with the reference U-KAN code.
    """

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(net_output, target) + self.weight_dice


class nnUNetTrainerPaperProtocol(KATrainerBase):
    """The paper's protocol for a U-KAN-family network; subclasses set ``table2_row`` (and ``epochs``) only."""

    table2_row: "int | str | None" = None  # the network: a row of the paper's Table 2 (number or name)
    epochs: int = NUM_EPOCHS
    # The reference script's separate lr for the tokenised blocks' fc layers (its kan_lr); None: one lr for all.
    kan_fc_lr: "float | None" = None
    # Options of the network's KA / KAN layers (each layer type takes those its constructor has), recorded in the
    # plans' architecture entry, so that prediction and the activation plots rebuild the same layers.
    layer_options: dict = {"grid_size": GRID_SIZE, "spline_order": SPLINE_ORDER, "grid_range": GRID_RANGE,
                           "basis": "bspline"}

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
        plans, plan_messages = plans_with_ukan_architecture(plans, configuration, self.table2_row,
                                                            **self.layer_options)
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

    def on_train_start(self):
        super().on_train_start()
        if self.device.type == "cuda" and self.local_rank == 0:
            from nnunet_allukan.training.memory import estimate_training_memory, memory_message

            patch = self.configuration_manager.patch_size
            estimate = estimate_training_memory(self._network_for_memory_probe, (self.num_input_channels, *patch),
                                                self.batch_size, self.device, gradient_buckets=self.is_ddp)
            row = table2_row(self.table2_row)
            self.print_to_log_file(memory_message(estimate, f"Table 2 row {row.row} ({row.name})", patch,
                                                  self.configuration_manager.batch_size)[1])

    def _network_for_memory_probe(self):
        """A network of the training network's architecture as nnU-Net builds it, before torch.compile and, under
        DDP, before SyncBatchNorm: the probe on rank 0 alone makes no collective."""
        return self.build_network_architecture(self.plans_manager, self.configuration_manager,
                                               self.num_input_channels, self.label_manager.num_segmentation_heads,
                                               self.enable_deep_supervision)

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
        if self.local_rank > 0:
            # DDP gave every rank rank 0's weights; the data loaders draw with this process' random state, which the
            # fold's seed made the same on every rank: each rank draws its own batches from here on.
            seed_everything(rank_seed(self.split_seed, self.local_rank))
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


def _write_json_if_changed(obj, path: str) -> None:
    """Writes ``obj`` as JSON atomically (temp file + rename), leaving an identical file untouched."""
    text = json.dumps(obj, indent=1)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    tmp = f"{path}.{os.getpid()}.tmp"  # the folds of a model may train at the same time and write the same file
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
