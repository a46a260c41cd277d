"""The paper's training protocol as small, nnU-Net-independent functions.

How the trainers in :mod:`nnunet_allukan.training.trainers` apply the paper's settings (the numbers themselves are
in :mod:`nnunet_allukan.paper`), so it can be read and tested on its own:

- the three hold-out splits (folds 0, 1, 2 = seeds 2981, 6142, 1187; 80/20 ``train_test_split`` of the
  sorted original image names),
- the cosine learning-rate schedule as a closed-form function of the epoch,
- iterations per epoch,
- patch sizes rounded up to multiples of 32 (five 2x down-samplings in U-KAN / ALL U-KAN) and the 3D strides,
- binary datasets expressed as a one-label nnU-Net *region* (1 sigmoid output, BCE + Dice, sigmoid > 0.5),
- seeding of torch / numpy / random per fold (and, under DDP, per rank for the data).
"""
from __future__ import annotations

import math
import random
from copy import deepcopy
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from nnunet_allukan.paper import (BATCH_SIZE, DIVISOR, INITIAL_LR, MIN_LR, NUM_DOWNSAMPLINGS, SPLIT_SEEDS)


def cosine_annealing_lr(epoch: int, num_epochs: int, initial_lr: float = INITIAL_LR,
                        min_lr: float = MIN_LR) -> float:
    """Learning rate of epoch ``epoch`` (0-based) under cosine annealing from ``initial_lr`` to ``min_lr``.

    lr(e) = min_lr + (initial_lr - min_lr) * (1 + cos(pi * e / num_epochs)) / 2, the closed form of
    ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=num_epochs, eta_min=min_lr)`` stepped once per epoch
    (the reference U-KAN script). Being a function of the epoch alone, it resumes exactly with ``--c``.
    Epochs beyond ``num_epochs`` stay at ``min_lr``.
    """
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    progress = min(epoch, num_epochs) / num_epochs
    return min_lr + (initial_lr - min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


class ClosedFormCosineLRScheduler(LRScheduler):
    """Sets each parameter group's lr to :func:`cosine_annealing_lr` of the given epoch, from the group's own
    starting lr (``initial_lr``, recorded when the scheduler is built) down to ``min_lr``.

    With one group this is the paper's schedule; with the reference script's separate KAN fc group (lr 1e-2) each
    group anneals from its own lr, as ``CosineAnnealingLR`` does. Same calling convention as nnU-Net's
    ``PolyLRScheduler``: nnU-Net calls ``step(current_epoch)`` at the start of every epoch; no scheduler state
    needs to be checkpointed.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, min_lr: float, num_epochs: int):
        self.initial_lr = initial_lr
        self.min_lr = min_lr
        self.num_epochs = num_epochs
        self.ctr = 0
        super().__init__(optimizer, -1)

    def step(self, current_step: int | None = None) -> None:
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = cosine_annealing_lr(current_step, self.num_epochs,
                                                    param_group.get("initial_lr", self.initial_lr), self.min_lr)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return self._last_lr


def is_kan_fc_parameter(name: str) -> bool:
    """The reference U-KAN training script's rule for its ``kan_lr`` group, applied to parameter names as it
    applies it: ``'layer' in name.lower() and 'fc' in name.lower()`` (the fc1/fc2/fc3 layers of the tokenised
    blocks, e.g. ``block1.layer.fc1.u``)."""
    lowered = name.lower()
    return "layer" in lowered and "fc" in lowered


def iterations_per_epoch(num_cases: int, batch_size: int = BATCH_SIZE, drop_last: bool = True) -> int:
    """Batches in one pass over ``num_cases`` cases, as the reference code's PyTorch loaders give them.

    Training (``drop_last=True``, the reference's training loader): floor(num_cases / batch_size), at least 1 (a
    data set smaller than one batch still trains). Validation (``drop_last=False``): ceil(num_cases / batch_size).
    """
    if num_cases < 1:
        raise ValueError(f"need at least one case, got {num_cases}")
    if drop_last:
        return max(1, num_cases // batch_size)
    return math.ceil(num_cases / batch_size)


def round_up_patch_size(patch_size: Sequence[int], multiple: "int | Sequence[int]" = DIVISOR) -> list[int]:
    """Each side rounded up to the next multiple of ``multiple`` (one value, or one per axis); nnU-Net pads
    patches that are larger than an image."""
    multiples = [int(multiple)] * len(patch_size) if isinstance(multiple, int) else [int(m) for m in multiple]
    return [int(math.ceil(int(s) / m) * m) for s, m in zip(patch_size, multiples)]


def ukan_strides(planned_strides: Sequence[Sequence[int]] | None, dim: int) -> list[list[int]]:
    """The five per-axis down-sampling factors of the U-KAN topology for a configuration.

    2D (``planned_strides`` None): the paper's five 2x down-samplings. 3D: the first five down-sampling steps that
    nnU-Net's planner chose for this configuration (its ``strides`` without the leading stride-1 stage), so an
    axis is pooled only where the planner found it large enough and not too coarsely sampled (anisotropic
    spacing); when the plan has fewer than five, the remaining U-KAN stages keep their resolution (factor 1).
    """
    if planned_strides is None:
        return [[2] * dim for _ in range(NUM_DOWNSAMPLINGS)]
    steps = [[int(v) for v in s] for s in planned_strides[1:] if any(int(v) > 1 for v in s)]
    steps = steps[:NUM_DOWNSAMPLINGS]
    return steps + [[1] * dim for _ in range(NUM_DOWNSAMPLINGS - len(steps))]


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, numpy's global RNG (nnU-Net's data loader samples with it) and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of DDP rank ``rank`` > 0 for a run seeded with ``seed`` (rank 0 keeps ``seed``): each rank's data
    loader then draws its own cases and augmentations instead of the same ones as every other rank."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _foreground_labels(labels: Mapping[str, object]) -> dict[str, object]:
    return {name: value for name, value in labels.items() if name not in ("background", "ignore")}


def is_binary_label_map(dataset_json: Mapping) -> bool:
    """True when the dataset has exactly one foreground label given as a plain integer (no regions)."""
    foreground = _foreground_labels(dataset_json["labels"])
    return len(foreground) == 1 and not isinstance(next(iter(foreground.values())), (list, tuple))


def binary_labels_as_region(dataset_json: Mapping) -> dict:
    """Copy of ``dataset_json`` whose single foreground label is declared as an nnU-Net region.

    nnU-Net treats a label as a region (sigmoid outputs, ``DC_and_BCE_loss``, ``sigmoid > 0.5`` at inference)
    only when its value is a list with more than one entry. ``{"lesion": [1, 1]}`` is the region "label 1"
    written twice, so with ``regions_class_order [1]`` the network has one output channel, trains with
    BCE + Dice and ``nnUNetv2_predict`` writes label 1 where sigmoid > 0.5. The trainer saves this
    dataset.json into the model folder, which is where the predictor reads it from.
    Datasets that are not binary are returned unchanged (copied).
    """
    converted = deepcopy(dict(dataset_json))
    if not is_binary_label_map(converted):
        return converted
    name, value = next(iter(_foreground_labels(converted["labels"]).items()))
    value = int(value)
    labels = dict(converted["labels"])
    labels[name] = [value, value]
    converted["labels"] = labels
    converted["regions_class_order"] = [value]
    return converted


def paper_splits_for_cases(case_ids: Sequence[str], original_ids: Mapping[str, str] | None = None,
                           seeds: Sequence[int] = SPLIT_SEEDS) -> list[dict[str, list[str]]]:
    """The paper's three 80/20 hold-out splits of ``case_ids``, one per seed (fold i = seeds[i]).

    Each split is ``sklearn.model_selection.train_test_split(sorted ids, test_size=0.2, random_state=seed)``
    where the ids are the original image names (``original_ids``: nnU-Net case id -> original image stem,
    recorded by ``nnUNetv2_convert_allukan_dataset`` in dataset.json) or, without them, the nnU-Net case ids.
    Returns ``[{"train": [case ids], "val": [case ids]}, ...]`` in nnU-Net's splits_final.json format.
    Uses :func:`nnunet_allukan.splits.paper_splits`, the same function the converter documents.
    """
    from nnunet_allukan.splits import paper_splits

    case_ids = sorted(str(c) for c in case_ids)
    if original_ids:
        missing = sorted(set(case_ids) - set(original_ids))
        extra = sorted(set(original_ids) - set(case_ids))
        if missing or extra:
            raise ValueError(
                "dataset.json 'original_ids' does not match the preprocessed cases: "
                f"{len(missing)} case(s) without an original name (e.g. {missing[:3]}), "
                f"{len(extra)} original name(s) without a case (e.g. {extra[:3]}). "
                "Re-run nnUNetv2_convert_allukan_dataset and nnUNetv2_plan_and_preprocess, or remove "
                "'original_ids' from dataset.json to split on the nnU-Net case identifiers.")
        id_map = {c: str(original_ids[c]) for c in case_ids}
    else:
        id_map = {c: c for c in case_ids}
    # Lists keep train_test_split's order: the reference code evaluates the held-out images in that order.
    return paper_splits(id_map, seeds=tuple(seeds))
