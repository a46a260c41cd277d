"""IoU and F1 for binary segmentation, under two protocols (pure numpy).

Both protocols start from the same per-case pixel counts (prediction > 0.5, target > 0.5, as in the
reference U-KAN code; nnU-Net label maps hold 0/1, so this is "label == 1"):

- **per-image** (the standard protocol): IoU and F1 (= Dice) of every case, then their mean over cases;
- **reference batch-pooled** (the protocol behind the paper's numbers, U-KAN's ``iou_score``): the
  validation cases are taken in batches of 8 in loader order, IoU = (|A and B| + 1e-5) / (|A or B| + 1e-5)
  pooled over all pixels of a batch, F1 = 2 IoU / (1 + IoU) of that batch IoU, and the reported value is the
  batch-size-weighted mean over the batches (the last batch may be smaller; no drop_last).

Pooling over a batch only needs the per-case intersection and union counts: the pixel sets of different
images are disjoint, so the batch intersection / union are sums of the per-case ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nnunet_allukan.paper import BATCH_SIZE, METRIC_SMOOTH, METRIC_THRESHOLD


class NonBinaryMaskError(ValueError):
    """A mask holds values other than {0, 1} (or {0, 255})."""


@dataclass(frozen=True)
class CaseCounts:
    """Pixel counts of one case. intersection = |A and B|, union = |A or B|, A = prediction, B = target."""

    intersection: int
    union: int
    predicted: int
    target: int

    @property
    def iou(self) -> float:
        return iou_from_counts(self.intersection, self.union)

    @property
    def f1(self) -> float:
        """Per-image F1 (= Dice) = (2|A and B| + s) / (|A| + |B| + s)."""
        return (2.0 * self.intersection + METRIC_SMOOTH) / (self.predicted + self.target + METRIC_SMOOTH)


def binarize(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    """Boolean foreground of a binary label map.

    mask: integer or float array of any shape holding only {0, 1} (nnU-Net labels) or only {0, 255}
    (binary images as distributed). Returns mask > 0.5 (resp. > 127.5), i.e. the paper's threshold on a
    [0, 1]-scaled mask. Anything else (soft edges, several foreground labels) raises NonBinaryMaskError
    naming ``what``: thresholding it silently would hide a conversion or multi-class problem.
    """
    values = np.unique(mask)
    if np.all(np.isin(values, (0, 1))):
        return mask > METRIC_THRESHOLD
    if np.all(np.isin(values, (0, 255))):
        return mask > 255 * METRIC_THRESHOLD
    shown = ", ".join(str(v) for v in values[:10]) + (" ..." if values.size > 10 else "")
    raise NonBinaryMaskError(
        f"{what} is not binary: it holds the values [{shown}]; expected only 0/1 (nnU-Net labels) or 0/255. "
        "These metrics are for the paper's binary tasks: convert the masks with nnUNetv2_convert_allukan_dataset "
        "(which thresholds soft edges) or evaluate a single foreground label."
    )


def case_counts(prediction: np.ndarray, target: np.ndarray, what: str = "case") -> CaseCounts:
    """Pixel counts of one case. prediction, target: boolean arrays of the same shape (e.g. [H, W])."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"{what}: prediction shape {tuple(prediction.shape)} differs from ground truth shape "
            f"{tuple(target.shape)}; predictions must be at the label resolution (nnU-Net writes them so)."
        )
    prediction = prediction.astype(bool, copy=False)
    target = target.astype(bool, copy=False)
    return CaseCounts(
        intersection=int(np.count_nonzero(prediction & target)),
        union=int(np.count_nonzero(prediction | target)),
        predicted=int(np.count_nonzero(prediction)),
        target=int(np.count_nonzero(target)),
    )


def iou_from_counts(intersection: float, union: float, smooth: float = METRIC_SMOOTH) -> float:
    """IoU = (|A and B| + s) / (|A or B| + s), U-KAN's iou_score."""
    return float((intersection + smooth) / (union + smooth))


def f1_from_iou(iou: float | np.ndarray) -> float | np.ndarray:
    """F1 = 2 IoU / (1 + IoU) (U-KAN's conversion; exact for Dice of the same pixel set)."""
    return 2.0 * iou / (1.0 + iou)


@dataclass(frozen=True)
class ProtocolScores:
    """Mean IoU / F1 of one fold under one protocol, as fractions in [0, 1]."""

    iou: float
    f1: float


def per_image_scores(counts: Sequence[CaseCounts]) -> ProtocolScores:
    """Mean over cases of the per-case IoU and of the per-case F1 (Dice)."""
    if not counts:
        raise ValueError("no cases to evaluate")
    return ProtocolScores(
        iou=float(np.mean([c.iou for c in counts])),
        f1=float(np.mean([c.f1 for c in counts])),
    )


@dataclass(frozen=True)
class BatchScore:
    """One validation batch of the reference protocol: its cases, pooled IoU and F1 = 2 IoU / (1 + IoU)."""

    cases: tuple[str, ...]
    iou: float
    f1: float


def reference_batches(
    ordered_cases: Sequence[str], counts: Mapping[str, CaseCounts], batch_size: int = BATCH_SIZE
) -> list[BatchScore]:
    """Reference protocol, batch by batch: consecutive chunks of ``batch_size`` cases of ``ordered_cases``
    (loader order), IoU pooled over all pixels of the chunk."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not ordered_cases:
        raise ValueError("no cases to evaluate")
    batches = []
    for start in range(0, len(ordered_cases), batch_size):
        names = tuple(ordered_cases[start:start + batch_size])
        intersection = sum(counts[n].intersection for n in names)
        union = sum(counts[n].union for n in names)
        iou = iou_from_counts(intersection, union)
        batches.append(BatchScore(cases=names, iou=iou, f1=float(f1_from_iou(iou))))
    return batches


def reference_scores(batches: Sequence[BatchScore]) -> ProtocolScores:
    """Batch-size-weighted mean of the batch IoUs and batch F1s (U-KAN's AverageMeter.update(v, n))."""
    sizes = np.array([len(b.cases) for b in batches], dtype=np.float64)
    return ProtocolScores(
        iou=float(np.sum(sizes * [b.iou for b in batches]) / sizes.sum()),
        f1=float(np.sum(sizes * [b.f1 for b in batches]) / sizes.sum()),
    )


def mean_std(values: Sequence[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over the seeds (folds). ddof=0: numpy's default population std;
    a single value has std 0."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values")
    if array.size <= ddof:
        return float(array.mean()), float("nan")
    return float(array.mean()), float(array.std(ddof=ddof))
