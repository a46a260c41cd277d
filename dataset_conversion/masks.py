"""Mask files as a foreground: binary masks (0/255 or 0/1; thresholded at 128 where not exactly two-valued,
unless labelled objects would be lost) and instance maps (> 0), with checks that the file is a mask at all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset_conversion.errors import ConversionError

# Masks that are not exactly two-valued are thresholded here: the object is >= 128, the dataset authors' and
# the reference code's cut.
SOFT_MASK_THRESHOLD = 128
# A mask (binary or instance map) is piecewise constant: few neighbouring pixels differ (< 1 % on the real
# CVC/BUSI masks, up to 7 % in re-encoded copies). A photograph or ultrasound frame passed by mistake has
# 55-85 % differing neighbours (measured on the BUSI and CVC samples).
MAX_MASK_NEIGHBOUR_CHANGE = 0.15
# Compression noise makes more neighbours differ (up to 26 % in a JPEG of a mask shrunk 4x), but keeps the
# values near the two levels: at most 5 % of such masks' pixels lie between them, 40-99 % of the sample
# images' pixels (within LEVEL_TOLERANCE of neither the lowest nor the highest value).
MAX_MASK_INTERMEDIATE_FRACTION = 0.2
# Values within this fraction of the value range of a level are noise of that level ("faint"); the rest are
# intermediate (soft edges, resampling, compression ringing, stray pixels; or a grey-level image).
LEVEL_TOLERANCE = 1 / 8
# Thresholding loses labelled objects only where values below the threshold fill a solid region: a square
# of this side. What resampling, compression and CVC-ClinicDB's own masks add is thinner: soft edges and
# ringing 1-4 pixels wide, single stray pixels, faint strips up to 4 rows high (CVC's official masks).
SOLID_REGION_SIDE = 8
# A solid region of one exact faint level is a label (0/1/2/255) only in a mask of few tones; in a
# continuous-tone mask (44-50 distinct values in each CVC sample, whose faint halo holds a 44x44 block of
# the value 11) it is the halo of the mask's drawing tool.
MIN_TONES_FOR_NOISE = 16


def _check_piecewise_constant(mask: np.ndarray, path: Path) -> None:
    if mask.shape[0] < 2 or mask.shape[1] < 2:
        return
    changes = np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1])
    change = changes / (mask[:, 1:].size + mask[1:].size)
    if change <= MAX_MASK_NEIGHBOUR_CHANGE:
        return
    # compression noise also makes neighbours differ, but leaves the values near the two levels
    low, high = int(mask.min()), int(mask.max())
    tolerance = (high - low) * LEVEL_TOLERANCE
    between = np.count_nonzero((mask > low + tolerance) & (mask < high - tolerance)) / mask.size
    if between > MAX_MASK_INTERMEDIATE_FRACTION:
        raise ConversionError(
            f"{path} does not look like a mask: {100 * change:.0f} % of neighbouring pixels differ and "
            f"{100 * between:.0f} % of the pixels lie between its lowest and highest values (masks are piecewise "
            f"constant, < {100 * MAX_MASK_NEIGHBOUR_CHANGE:.0f} %, or near two levels, < "
            f"{100 * MAX_MASK_INTERMEDIATE_FRACTION:.0f} % between them). Is it an image stored under a mask's name? "
            "Replace it with the mask from the dataset archive"
        )


def _check_not_whole_frame(foreground: np.ndarray, mask: np.ndarray, path: Path) -> None:
    if foreground.size > 1 and foreground.all():
        raise ConversionError(
            f"mask {path} marks every pixel as object (all values {_shown_values(np.unique(mask))}): a blank or "
            "inverted mask, not a lesion outline. Replace it with the mask from the dataset archive"
        )


def _shown_values(values: np.ndarray, limit: int = 8) -> list:
    return values.tolist() if values.size <= limit else values[:limit].tolist() + ["..."]


def _window_extremes(mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum of every ``side`` x ``side`` window of ``mask`` (indexed by its top-left pixel).

    Windows of width w give those of width 2w (or ``side``) from two overlapping ones: log2(side) array
    operations per axis."""
    extremes = []
    for reduce in (np.minimum, np.maximum):
        values = mask
        for _ in range(2):  # rows, then (transposed) columns
            width = 1
            while width < side:
                step = min(width, side - width)
                values = reduce(values[:-step], values[step:])
                width += step
            values = values.T
        extremes.append(values)
    return extremes[0], extremes[1]


@dataclass(frozen=True)
class BinarisedMask:
    """A mask file read as a foreground, with what it took (summarised per dataset).

    kind: "empty" (all 0), "binary" (two values), "soft" (not exactly two-valued: thresholded) or "instance".
    values: distinct values in the file.
    edge_pixels: pixels of intermediate value (soft edges, resampling, compression ringing, stray pixels).
    faint_pixels: pixels within LEVEL_TOLERANCE of the lowest or highest value but not equal to it
        (compression noise, halos, faint strips).
    changed_pixels: pixels that changed class: not background (above the lowest value) in the file, but
        below SOFT_MASK_THRESHOLD and so background in the label.
    """

    foreground: np.ndarray
    kind: str
    values: int = 0
    edge_pixels: int = 0
    faint_pixels: int = 0
    changed_pixels: int = 0
    instances: int = 0


def _check_no_solid_region_dropped(mask: np.ndarray, values: np.ndarray, path: Path) -> None:
    """Refuse a mask in which values below the threshold fill a solid region (SOLID_REGION_SIDE square):
    mid-grey values anywhere (a grey-level image, a gradient, a mid-grey label), or, in a mask of few tones,
    one exact faint level (a label map such as 0/1/2/255)."""
    low, high = int(values[0]), int(values[-1])
    candidates = (mask > low) & (mask < SOFT_MASK_THRESHOLD)
    side = SOLID_REGION_SIDE
    if min(mask.shape) < side or np.count_nonzero(candidates) < side * side:
        return
    lowest, highest = _window_extremes(mask, side)
    dropped = highest < SOFT_MASK_THRESHOLD
    grey_floor = low + (high - low) * LEVEL_TOLERANCE
    grey = dropped & (lowest > grey_floor)
    if grey.any():
        row, col = (int(i[0]) for i in np.nonzero(grey))
        block = sorted({int(lowest[row, col]), int(highest[row, col])})
        raise ConversionError(
            f"mask {path} is not binary: intermediate values away from the object's border fill a solid region "
            f"({side}x{side} pixels of the value{'s' if len(block) > 1 else ''} {'-'.join(map(str, block))} from row "
            f"{row}, column {col}; values {_shown_values(values)}) that thresholding at {SOFT_MASK_THRESHOLD} would "
            "drop. Soft edges, compression noise and stray pixels are thin; this is a grey-level image, gradient "
            "or label map, not a binary mask. Replace it with the binary mask from the dataset archive"
        )
    if values.size >= MIN_TONES_FOR_NOISE:
        return
    labels = dropped & (lowest == highest) & (lowest > low)
    if labels.any():
        row, col = (int(i[0]) for i in np.nonzero(labels))
        levels = np.unique(lowest[labels])
        raise ConversionError(
            f"mask {path} has the values {_shown_values(values)}: besides {low} and {high}, the levels "
            f"{_shown_values(levels)} each cover a solid region of their own (at least {side}x{side} pixels, e.g. "
            f"{int(lowest[row, col])} at row {row}, column {col}), not a thin strip or halo. That is a label map, "
            f"not a binary mask, and thresholding at {SOFT_MASK_THRESHOLD} would drop them. Replace it with the "
            "binary mask from the dataset archive (or merge the labels into 0/255 yourself)"
        )


def binarize_binary_mask(mask: np.ndarray, path: Path, strict: bool = False) -> BinarisedMask:
    """A 0/255 (or 0/1) mask as a foreground; a mask that is not exactly two-valued is thresholded at
    SOFT_MASK_THRESHOLD unless thresholding would lose labelled objects.

    Two values: the larger one is the object. More values (8-bit, the largest >= SOFT_MASK_THRESHOLD): the
    object is ``>= SOFT_MASK_THRESHOLD``, whatever soft edges, resampling, compression noise, faint strips,
    halos or stray pixels the file holds. Refused: more values none of which reaches the threshold (0/1/2),
    and values below the threshold filling a solid region (see :func:`_check_no_solid_region_dropped`).
    ``strict`` refuses every mask with more than two values. The whole frame as object is refused.
    """
    _check_piecewise_constant(mask, path)
    values = np.unique(mask)
    if values.size == 1 and values[0] == 0:
        return BinarisedMask(np.zeros(mask.shape, dtype=bool), "empty", values=1)
    if values.size <= 2:
        foreground = mask == values[-1]
        _check_not_whole_frame(foreground, mask, path)
        return BinarisedMask(foreground, "binary", values=int(values.size))
    if strict:
        extra = np.count_nonzero((mask != values[0]) & (mask != values[-1]))
        raise ConversionError(
            f"mask {path} is not exactly binary: it has the values {_shown_values(values)} ({extra} pixels are "
            f"neither {int(values[0])} nor {int(values[-1])}), and --strict-masks refuses such masks. Replace it "
            f"with a two-valued mask, or convert without --strict-masks to threshold it at {SOFT_MASK_THRESHOLD}"
        )
    if mask.dtype != np.uint8 or values[-1] < SOFT_MASK_THRESHOLD:
        raise ConversionError(
            f"mask {path} has the values {_shown_values(values)}: neither a 0/255 mask nor one to threshold (whose "
            f"object is >= {SOFT_MASK_THRESHOLD}); a multi-class label map or the wrong file, whose labels "
            f"thresholding would drop. Replace it with the binary mask from the dataset archive"
        )
    _check_no_solid_region_dropped(mask, values, path)
    low, high = int(values[0]), int(values[-1])
    tolerance = (high - low) * LEVEL_TOLERANCE
    near_low, near_high = mask <= low + tolerance, mask >= high - tolerance
    foreground = mask >= SOFT_MASK_THRESHOLD
    _check_not_whole_frame(foreground, mask, path)
    return BinarisedMask(
        foreground, "soft", values=int(values.size),
        edge_pixels=int(np.count_nonzero(~(near_low | near_high))),
        faint_pixels=int(np.count_nonzero(near_low & (mask != low)) + np.count_nonzero(near_high & (mask != high))),
        changed_pixels=int(np.count_nonzero((mask > low) & ~foreground)),
    )


def binarize_instance_map(label_map: np.ndarray, path: Path) -> BinarisedMask:
    """Instance map (0 background, 1..N objects) -> foreground ``> 0`` and N."""
    _check_piecewise_constant(label_map, path)
    foreground = label_map > 0
    _check_not_whole_frame(foreground, label_map, path)
    instances = int(np.unique(label_map[foreground]).size)
    return BinarisedMask(foreground, "instance", values=instances + int(not foreground.all()), instances=instances)
