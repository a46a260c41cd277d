"""Mask files as a foreground: binary masks (0/255 or 0/1; a mask holding a value >= 128 thresholded there, a
mask of more values with none that high refused as a label map) and instance maps (> 0), with checks that the
file is a mask at all."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset_conversion.errors import ConversionError

# A mask holding a value >= this is binary in intent (the dataset authors' and the reference code's cut): the
# object is >= 128, and every lower value (faint levels, halos, patches, soft edges, noise) is background.
SOFT_MASK_THRESHOLD = 128
# A level below the threshold covering more than this fraction of the image is dropped with a warning: a lot of
# background that was not 0 in the file (CVC-ClinicDB's faint patches cover up to 8 %; BUSI's JPEG noise 1 %).
LARGE_DROPPED_LEVEL_FRACTION = 0.01
# A mask (binary or instance map) is piecewise constant: few neighbouring pixels differ (< 2 % on the real
# CVC-ClinicDB masks, up to 7.4 % on BUSI's re-encoded ones). A photograph or ultrasound frame passed by mistake
# has 55-85 % differing neighbours (measured on the BUSI and CVC samples).
MAX_MASK_NEIGHBOUR_CHANGE = 0.15
# Compression noise makes more neighbours differ (up to 26 % in a JPEG of a mask shrunk 4x), but keeps the
# values near the two levels: at most 5 % of such masks' pixels lie between them, 40-99 % of the sample
# images' pixels (within LEVEL_TOLERANCE of neither the lowest nor the highest value).
MAX_MASK_INTERMEDIATE_FRACTION = 0.2
# More than half the pixels intermediate is an image (a smooth grey image, a gradient) whatever its texture: no
# mask has that many (real masks < 1 %; resized or compressed ones at most 5 %).
MAX_BINARY_MASK_INTERMEDIATE_FRACTION = 0.5
# Values within this fraction of the value range of a level are noise of that level ("faint"); the rest are
# intermediate (soft edges, resampling, compression ringing, stray pixels; or a grey-level image).
LEVEL_TOLERANCE = 1 / 8


def _histogram(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``mask``, ascending, and how many pixels hold each."""
    if mask.dtype == np.uint8:  # one counting pass instead of a sort
        counts = np.bincount(mask.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


def _intermediate(values: np.ndarray) -> np.ndarray:
    """Which of ``values`` lie within LEVEL_TOLERANCE of neither the lowest nor the highest value."""
    low, high = int(values[0]), int(values[-1])
    tolerance = (high - low) * LEVEL_TOLERANCE
    return (values > low + tolerance) & (values < high - tolerance)


def _neighbour_change(mask: np.ndarray) -> float:
    if mask.shape[0] < 2 or mask.shape[1] < 2:
        return 0.0
    changes = np.count_nonzero(mask[:, 1:] != mask[:, :-1]) + np.count_nonzero(mask[1:] != mask[:-1])
    return changes / (mask[:, 1:].size + mask[1:].size)


def _check_is_mask(mask: np.ndarray, values: np.ndarray, counts: np.ndarray, path: Path,
                   max_intermediate: float | None) -> None:
    """Refuse a texture (differing neighbours and many intermediate values: a photograph) and, where
    ``max_intermediate`` is given, a file with more intermediate pixels than that whatever its texture."""
    between = counts[_intermediate(values)].sum() / mask.size
    if between <= MAX_MASK_INTERMEDIATE_FRACTION:
        return
    if max_intermediate is not None and between > max_intermediate:
        raise ConversionError(
            f"mask {path} does not look like a mask: {100 * between:.0f} % of its pixels lie between its lowest and "
            f"highest values (values {_shown_values(values)}), where a mask's pixels are near its two levels (at "
            "most a few % in soft-edged, resized or compressed masks). Is it a grey image or a gradient stored "
            "under a mask's name? Replace it with the mask from the dataset archive"
        )
    change = _neighbour_change(mask)
    if change > MAX_MASK_NEIGHBOUR_CHANGE:
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


@dataclass(frozen=True)
class BinarisedMask:
    """A mask file read as a foreground, with what it took (summarised per dataset).

    kind: "empty" (all 0), "binary" (two values), "soft" (not exactly two-valued: thresholded) or "instance".
    values: distinct values in the file.
    edge_pixels: pixels of intermediate value (soft edges, resampling, compression ringing, stray pixels).
    faint_pixels: pixels within LEVEL_TOLERANCE of the lowest or highest value but not equal to it
        (compression noise, halos, faint strips and patches).
    changed_pixels: pixels that changed class: not background (above the lowest value) in the file, but
        below SOFT_MASK_THRESHOLD and so background in the label.
    dropped_level, dropped_level_pixels: of those, the value held by the most pixels, and their number
        (-1 and 0 where none changed class).
    large_dropped_level: that level covers more than LARGE_DROPPED_LEVEL_FRACTION of the image.
    """

    foreground: np.ndarray
    kind: str
    values: int = 0
    edge_pixels: int = 0
    faint_pixels: int = 0
    changed_pixels: int = 0
    instances: int = 0
    dropped_level: int = -1
    dropped_level_pixels: int = 0
    large_dropped_level: bool = False


def binarize_binary_mask(mask: np.ndarray, path: Path, strict: bool = False) -> BinarisedMask:
    """A 0/255 (or 0/1) mask as a foreground; a mask of more values holding one >= SOFT_MASK_THRESHOLD is
    thresholded there.

    Two values: the larger one is the object. More values, the largest >= SOFT_MASK_THRESHOLD (8-bit): the
    mask is binary in intent and the object is ``>= SOFT_MASK_THRESHOLD``, whatever soft edges, resampling,
    compression noise, faint levels, halos, patches or stray pixels it holds besides. Refused: more values none
    of which reaches the threshold (a 0/1/2 label map), a file that is not a mask (a texture, or more than
    MAX_BINARY_MASK_INTERMEDIATE_FRACTION of the pixels intermediate: a grey image, a gradient), the whole frame
    as object. ``strict`` refuses every mask with more than two values.
    """
    values, counts = _histogram(mask)
    _check_is_mask(mask, values, counts, path, MAX_BINARY_MASK_INTERMEDIATE_FRACTION)
    if values.size == 1 and values[0] == 0:
        return BinarisedMask(np.zeros(mask.shape, dtype=bool), "empty", values=1)
    if values.size <= 2:
        foreground = mask == values[-1]
        _check_not_whole_frame(foreground, mask, path)
        return BinarisedMask(foreground, "binary", values=int(values.size))
    low, high = int(values[0]), int(values[-1])
    if strict:
        extra = mask.size - int(counts[0]) - int(counts[-1])
        raise ConversionError(
            f"mask {path} is not exactly binary: it has the values {_shown_values(values)} ({extra} pixels are "
            f"neither {low} nor {high}), and --strict-masks refuses such masks. Replace it with a two-valued mask, "
            f"or convert without --strict-masks to threshold it at {SOFT_MASK_THRESHOLD}"
        )
    if mask.dtype != np.uint8 or high < SOFT_MASK_THRESHOLD:
        raise ConversionError(
            f"mask {path} has the values {_shown_values(values)}: more than two, none of them >= "
            f"{SOFT_MASK_THRESHOLD}, so not a binary mask to threshold but a multi-class label map (or the wrong "
            "file), whose labels thresholding would drop. Replace it with the binary mask from the dataset archive "
            "(or merge the labels into 0/255 yourself)"
        )
    foreground = mask >= SOFT_MASK_THRESHOLD
    _check_not_whole_frame(foreground, mask, path)
    tolerance = (high - low) * LEVEL_TOLERANCE
    near_low, near_high = values <= low + tolerance, values >= high - tolerance
    dropped = (values > low) & (values < SOFT_MASK_THRESHOLD)
    level = int(np.argmax(np.where(dropped, counts, 0)))
    dropped_level_pixels = int(counts[level]) if dropped[level] else 0
    return BinarisedMask(
        foreground, "soft", values=int(values.size),
        edge_pixels=int(counts[~(near_low | near_high)].sum()),
        faint_pixels=int(counts[near_low | near_high].sum() - counts[0] - counts[-1]),
        changed_pixels=int(counts[dropped].sum()),
        dropped_level=int(values[level]) if dropped_level_pixels else -1,
        dropped_level_pixels=dropped_level_pixels,
        large_dropped_level=dropped_level_pixels > LARGE_DROPPED_LEVEL_FRACTION * mask.size,
    )


def binarize_instance_map(label_map: np.ndarray, path: Path) -> BinarisedMask:
    """Instance map (0 background, 1..N objects) -> foreground ``> 0`` and N."""
    values, counts = _histogram(label_map)
    # labels 1..N are intermediate by value: only a texture betrays an image here
    _check_is_mask(label_map, values, counts, path, max_intermediate=None)
    foreground = label_map > 0
    _check_not_whole_frame(foreground, label_map, path)
    instances = int(np.count_nonzero(values > 0))
    return BinarisedMask(foreground, "instance", values=instances + int(not foreground.all()), instances=instances)
