"""Shared machinery of the converters: reading images and masks, binarising, resizing, and writing an
nnU-Net raw dataset (``imagesTr``/``labelsTr``/``dataset.json``) into a temporary folder that is moved
into ``$nnUNet_raw/DatasetXXX_NAME`` only once it is complete.

Every problem with the user's input raises :class:`ConversionError` with a message that names the file
and says how to fix it; the command line prints it and exits non-zero. Problems of the source data are
collected over all cases and raised together (:class:`ConversionProblems`), so one run reports them all.
"""

from __future__ import annotations

import csv
import errno
import logging
import multiprocessing
import os
import re
import secrets
import shutil
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from batchgenerators.utilities.file_and_folder_operations import save_json, subdirs
from nnunetv2 import paths as nnunet_paths
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporary folders are then only named
    fcntl = None

# Masks that are not exactly two-valued are thresholded here: the object is >= 128, the dataset authors' and
# the reference code's cut.
SOFT_MASK_THRESHOLD = 128
# A mask (binary or instance map) is piecewise constant: few neighbouring pixels differ (< 1 % on the
# real CVC/BUSI masks, up to 7 % in re-encoded copies). A photograph or ultrasound frame passed by mistake has 50-80 % differing
# neighbours (measured on the BUSI and CVC samples). 15 % separates the two with a wide margin.
MAX_MASK_NEIGHBOUR_CHANGE = 0.15
# Compression noise makes more neighbours differ (up to 26 % in a JPEG of a mask shrunk 4x), but keeps the
# values near the two levels: at most 5 % of such masks' pixels lie between them, 40-99 % of the sample
# images' pixels (within LEVEL_TOLERANCE of neither the lowest nor the highest value).
MAX_MASK_INTERMEDIATE_FRACTION = 0.2
# Values within this fraction of the value range of a level are noise of that level ("faint"); the rest are
# intermediate (soft edges, resampling, compression ringing). Only counted, for the record.
LEVEL_TOLERANCE = 1 / 8
# Thresholding loses labelled objects only where values below the threshold fill a solid region: a square
# of this side. What resampling, compression and CVC-ClinicDB's own masks add is thinner: soft edges and
# ringing 1-4 pixels wide, single stray pixels, faint strips up to 4 rows high (CVC's official masks).
SOLID_REGION_SIDE = 8
# A solid region of one exact faint level is a label (0/1/2/255) only in a mask of few tones; in a
# continuous-tone mask (44-50 distinct values in each CVC sample, whose faint halo holds a 44x44 block of
# the value 11) it is the halo of the mask's drawing tool.
MIN_TONES_FOR_NOISE = 16
# Next to dataset.json: the masks that were thresholded, with what it changed.
MASK_REPORT_NAME = "thresholded_masks.csv"
IGNORED_FILE_NAMES = {"Thumbs.db", "desktop.ini"}
# At most this many problems are listed; the rest are counted.
MAX_PROBLEMS_SHOWN = 20


class ConversionError(Exception):
    """Bad input or arguments: the message names the offending file/argument and the fix."""


class ConversionProblems(ConversionError):
    """Every problem found in the source data, reported together (the message lists the first
    MAX_PROBLEMS_SHOWN and counts the rest)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more problems" if more > 0 else ""
        return f"{len(self.problems)} problems in the source data; fix all of them, then re-run:\n{shown}{tail}"


def raise_problems(problems: Sequence[str]) -> None:
    if problems:
        raise ConversionProblems(problems)


def filesystem_error(error: OSError, folder: Path, variable: str = "nnUNet_raw") -> ConversionError:
    """A clear message for a failed write below ``folder`` (read-only, full, or not a folder)."""
    path = error.filename or folder
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = f"Free space on that file system, or set {variable} to a folder on another disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"Make {folder} writable for you, or set {variable} to a folder you can write to"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = f"{variable} must name a folder ({folder}): point it to a folder, or move the file away"
    else:
        fix = f"Check {folder} and its file system"
    return ConversionError(f"cannot write {path}: {reason}. {fix}")


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a supported dataset."""

    key: str  # command-line name, e.g. "busi"
    name: str  # nnU-Net dataset name, e.g. "BUSI" -> Dataset601_BUSI
    default_id: int
    label_name: str  # name of label 1 in dataset.json
    default_size: int  # paper's square input size; --native keeps native resolution
    source_description: str  # what SOURCE_FOLDER should be, for error messages
    description: str
    reference: str
    licence: str


@dataclass(frozen=True)
class CaseSource:
    """One case as found in the distributed folder.

    ``mask_kind`` is "binary" (0/255 masks, possibly soft-edged) or "instance" (0 background,
    1..N objects). Several masks are united (BUSI's ``_mask_1.png`` ... hold further lesions).
    """

    case_id: str
    original_id: str
    image: Path
    masks: tuple[Path, ...]
    mask_kind: str = "binary"


@dataclass
class ConversionResult:
    """What :func:`write_nnunet_dataset` did."""

    dataset_folder: Path
    dataset_id: int
    records: dict[str, dict]
    summary: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------


def sanitize_id(text: str) -> str:
    """Readable, file-system- and nnU-Net-safe id: runs of other characters become one underscore."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    if not cleaned:
        raise ConversionError(f"cannot derive a case id from the file name {text!r}; rename the file")
    return cleaned


def visible_entries(folder: Path) -> list[Path]:
    """Sorted entries of ``folder`` without hidden files and OS clutter (``.DS_Store``, ``Thumbs.db``)."""
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_FILE_NAMES
    )


def _readable_subfolders(folder: Path) -> list[Path]:
    try:
        return [c for c in visible_entries(folder) if c.is_dir()]
    except OSError:  # unreadable folder: not where the dataset is
        return []


def locate_source_folder(source: Path | str, looks_right: Callable[[Path], bool], expected: str,
                         max_depth: int = 2) -> Path:
    """Find the dataset folder the user meant.

    Accepts the folder itself, or a parent up to ``max_depth`` levels above it (found and used, when
    unique). A folder *inside* the expected one is refused with the folder to pass instead.

    Args:
        source: what the user passed.
        looks_right: predicate recognising the expected folder.
        expected: human description of the expected folder, used in messages.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ConversionError(f"source folder {source} does not exist; pass {expected}")
    if not source.is_dir():
        raise ConversionError(f"source {source} is not a folder; pass {expected}")
    source = source.resolve()
    try:
        entries = visible_entries(source)
    except OSError as err:
        raise ConversionError(f"cannot list the source folder {source}: {err}") from err
    if not entries:
        raise ConversionError(f"source folder {source} is empty; pass {expected}")
    if looks_right(source):
        return source
    found: list[Path] = []
    level = [source]
    for _ in range(max_depth):
        level = [c for d in level for c in _readable_subfolders(d)]
        found += [d for d in level if looks_right(d)]
    if len(found) == 1:
        print(f"Using the dataset folder {found[0]} found inside {source}")
        return found[0]
    if len(found) > 1:
        listing = "\n  ".join(str(f) for f in found)
        raise ConversionError(f"{source} holds several candidate folders:\n  {listing}\npass the one to convert")
    for parent in list(source.parents)[:max_depth]:
        if looks_right(parent):
            raise ConversionError(f"{source} is a folder inside the dataset; pass its parent {parent} instead")
    raise ConversionError(f"{source} does not look like {expected} (nor does any folder inside it)")


def unique_case_id_problems(cases: Sequence[CaseSource]) -> list[str]:
    """Two source files mapping to one case id (e.g. ``benign (1).png`` and ``benign (01).png``) is a problem."""
    by_id: dict[str, list[CaseSource]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, []).append(case)
    duplicates = {k: v for k, v in by_id.items() if len(v) > 1}
    problems = []
    if duplicates:
        lines = [f"{k}: " + ", ".join(str(c.image) for c in v) for k, v in sorted(duplicates.items())]
        problems.append(
            "duplicate case ids (several images map to the same case):\n    " + "\n    ".join(lines)
            + "\n    remove or rename the duplicate files"
        )
    by_original = Counter(c.original_id for c in cases)
    repeated = sorted(k for k, n in by_original.items() if n > 1)
    if repeated:
        problems.append(f"duplicate original image names {repeated}: remove the duplicate files")
    return problems


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def _unreadable(path: Path, err: Exception) -> ConversionError:
    return ConversionError(
        f"cannot read {path}: {type(err).__name__}: {err}. The file is damaged, truncated or not an image: "
        "re-extract it from the dataset archive"
    )


def _read_with_tifffile(path: Path) -> np.ndarray:
    try:
        array = np.asarray(tifffile.imread(path))
    except Exception as err:  # tifffile raises many types for damaged files
        raise _unreadable(path, err) from err
    if array.ndim < 2 or array.size == 0:  # tifffile returns an empty array for some corrupt headers
        raise _unreadable(path, ValueError("no image data in the file"))
    return array


def _pillow_array(path: Path, keep_palette_indices: bool) -> np.ndarray | None:
    """Decode with Pillow; None where Pillow cannot identify a TIFF (tifffile takes over)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" and not keep_palette_indices:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.asarray(im)
    except UnidentifiedImageError as err:
        if path.suffix.lower() in (".tif", ".tiff"):
            # CVC-ClinicDB's Original/*.tif are 3-sample "min-is-black" TIFFs Pillow refuses.
            return None
        raise _unreadable(path, err) from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from err


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB (grey replicated, alpha dropped)."""
    array = _pillow_array(path, keep_palette_indices=False)
    if array is None:
        array = _read_with_tifffile(path)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = np.moveaxis(array, 0, -1)  # planar TIFF [C, H, W]
    if array.dtype != np.uint8:
        raise ConversionError(f"{path} has pixel type {array.dtype}; expected an 8-bit image")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
        array = np.repeat(array[..., :1], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3]
    else:
        raise ConversionError(f"{path} has array shape {array.shape}; expected a 2D grey or RGB image")
    return np.ascontiguousarray(array)


def read_mask_array(path: Path) -> np.ndarray:
    """Read a mask as a 2D integer array ``[H, W]``.

    3-channel masks (BUSI's occasional RGB mask, CVC's PNG redistribution) must have identical
    channels; palette images give their indices (GlaS-like label maps); alpha is ignored.
    """
    array = _pillow_array(path, keep_palette_indices=True)
    if array is None:
        array = _read_with_tifffile(path)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ConversionError(f"mask {path} has pixel type {array.dtype}; expected an integer mask")
    if array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if colour.shape[-1] == 3 and not (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            raise ConversionError(
                f"mask {path} is a colour image (its R, G and B channels differ), not a mask: "
                "is it the image instead of its mask? Replace it with the mask from the dataset archive"
            )
        array = colour[..., 0]
    if array.ndim != 2:
        raise ConversionError(f"mask {path} has array shape {array.shape}; expected a 2D mask")
    return np.ascontiguousarray(array)


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
    return BinarisedMask(foreground, "instance", instances=int(np.unique(label_map[foreground]).size))


# ----------------------------------------------------------------------------------------------------
# Converting one case (runs in worker processes)
# ----------------------------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextmanager
def _captured_read_warnings(sink: list[str]):
    """Pillow's warnings and tifffile's log messages while reading one file go into ``sink``: the command
    prints them as one line per file instead of letting the raw warnings interleave with its output."""
    logger = logging.getLogger("tifffile")
    handler, propagate = _ListHandler(sink), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                sink.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def convert_case(case: CaseSource, target_hw: tuple[int, int] | None, output_folder: Path,
                 source_root: Path, strict_masks: bool = False) -> dict:
    """Read, binarise, unite, resize and write one case; return its record for ``conversion_record.json``.

    Writes ``imagesTr/<case>_0000.png`` (RGB uint8) and ``labelsTr/<case>.png`` (uint8 0/1).
    Images are resized bilinearly (Pillow's antialiased filter), masks with nearest neighbour after
    binarisation, so labels stay exactly 0/1. ``strict_masks`` refuses binary masks that are not exactly
    two-valued instead of thresholding them. Every problem of the case (image and each mask) is checked
    and raised together as :class:`ConversionProblems`; nothing is written for such a case.
    """
    problems: list[str] = []
    read_warnings: dict[str, list[str]] = {}

    def read(path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray | None:
        messages: list[str] = []
        try:
            with _captured_read_warnings(messages):
                return reader(path)
        except ConversionError as err:
            problems.append(str(err))
            return None
        finally:
            if messages:
                read_warnings[_relative(path, source_root)] = sorted(set(m.strip() for m in messages))

    image = read(case.image, read_image_rgb)
    mask_readings: list[tuple[Path, BinarisedMask]] = []
    for mask_path in case.masks:
        raw_mask = read(mask_path, read_mask_array)
        if raw_mask is None:
            continue
        if image is not None and raw_mask.shape != image.shape[:2]:
            problems.append(
                f"mask {mask_path} is {raw_mask.shape[1]}x{raw_mask.shape[0]} (WxH) but its image {case.image} is "
                f"{image.shape[1]}x{image.shape[0]}: they do not belong together; replace the mismatched file "
                "from the archive"
            )
            continue
        try:
            if case.mask_kind == "instance":
                mask_readings.append((mask_path, binarize_instance_map(raw_mask, mask_path)))
            else:
                mask_readings.append((mask_path, binarize_binary_mask(raw_mask, mask_path, strict=strict_masks)))
        except ConversionError as err:
            problems.append(str(err))
    raise_problems(problems)

    height, width = image.shape[:2]
    foreground = np.zeros((height, width), dtype=bool)
    steps: list[str] = []
    mask_kinds: list[dict] = []
    for mask_path, reading in mask_readings:
        foreground |= reading.foreground
        mask_kinds.append({"file": _relative(mask_path, source_root), "kind": reading.kind, "values": reading.values,
                           "edge_pixels": reading.edge_pixels, "faint_pixels": reading.faint_pixels,
                           "changed_pixels": reading.changed_pixels})
        if reading.kind == "instance":
            steps.append(f"binarised instance map ({reading.instances} objects) at > 0")
        elif reading.kind == "soft":
            steps.append(f"thresholded mask {mask_path.name} ({reading.values} values) at >= {SOFT_MASK_THRESHOLD} "
                         f"({reading.edge_pixels} intermediate pixels, {reading.faint_pixels} faint pixels; "
                         f"{reading.changed_pixels} pixels changed class)")
    if len(case.masks) > 1:
        steps.append(f"united {len(case.masks)} masks")
    label = foreground.astype(np.uint8)
    image_pil = Image.fromarray(image)
    label_pil = Image.fromarray(label)
    resized = target_hw is not None and (height, width) != tuple(target_hw)
    if resized:
        out_h, out_w = target_hw
        image_pil = image_pil.resize((out_w, out_h), Image.Resampling.BILINEAR)
        label_pil = label_pil.resize((out_w, out_h), Image.Resampling.NEAREST)
        steps.append(f"resized {height}x{width} -> {out_h}x{out_w} (HxW; image bilinear, mask nearest)")
    image_pil.save(output_folder / "imagesTr" / f"{case.case_id}_0000.png")
    label_pil.save(output_folder / "labelsTr" / f"{case.case_id}.png")
    record = {
        "original_id": case.original_id,
        "image": _relative(case.image, source_root),
        "masks": [_relative(m, source_root) for m in case.masks],
        "mask_kinds": mask_kinds,
        "original_shape_hw": [height, width],
        "output_shape_hw": [label_pil.height, label_pil.width],
        "merged_masks": len(case.masks) > 1,
        "thresholded": any(reading.kind == "soft" for _, reading in mask_readings),
        "resized": resized,
        "foreground_pixels": int(np.count_nonzero(np.asarray(label_pil))),
        "steps": steps,
    }
    if case.mask_kind == "instance":
        record["instances"] = sum(reading.instances for _, reading in mask_readings)
    if read_warnings:
        record["read_warnings"] = read_warnings
    return record


def _convert_case_job(job: tuple[CaseSource, tuple[int, int] | None, Path, Path, bool]) -> tuple[str, object]:
    """("ok", record) or ("problems", [messages]): a bad case does not stop the others from being checked.
    File-system errors (a full or read-only disk) are raised: no later case could be written either."""
    try:
        return "ok", convert_case(*job)
    except ConversionProblems as err:
        return "problems", err.problems
    except ConversionError as err:
        return "problems", [str(err)]


def _die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: exit when the converter is gone (e.g. SIGKILLed), instead of lingering as an
    orphan that keeps multiprocessing's resource tracker alive. Polls: portable and independent of which thread
    started the worker (PR_SET_PDEATHSIG is tied to the starting thread)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


# ----------------------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------------------


def dataset_folder_name(dataset_id: int, name: str) -> str:
    # nnU-Net has no helper for this direction (its own converters format the name inline like this)
    return f"Dataset{dataset_id:03d}_{name}"


def _check_target(raw_folder: Path, dataset_id: int, folder_name: str, overwrite: bool) -> None:
    """Refuse an existing dataset (without ``overwrite``) and an id taken by a dataset of another name.

    nnU-Net resolves ``-d ID`` over nnUNet_raw, nnUNet_preprocessed and nnUNet_results and fails when the id
    maps to two names: its find_candidate_datasets lists what it finds there; ``raw_folder`` (which may be
    passed instead of $nnUNet_raw) is listed with the same prefix.
    """
    names = {str(name) for name in find_candidate_datasets(dataset_id)}
    names.update(subdirs(str(raw_folder), prefix="Dataset%03.0d" % dataset_id, join=False))
    taken = sorted(names - {folder_name})
    if taken:
        roots = [raw_folder] + [Path(root) for root in (nnunet_paths.nnUNet_raw.get(),
                                                        nnunet_paths.nnUNet_preprocessed.get(),
                                                        nnunet_paths.nnUNet_results.get()) if root]
        where = next((root / taken[0] for root in roots if (root / taken[0]).is_dir()), taken[0])
        raise ConversionError(
            f"dataset id {dataset_id} is already used by {where}; pass a free id with -d, or remove that dataset"
        )
    target = raw_folder / folder_name
    if target.exists() and not overwrite:
        raise ConversionError(f"{target} already exists; pass --overwrite to replace it")


def make_fresh_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder created like a plain ``mkdir``: its mode follows the user's umask
    (``tempfile.mkdtemp`` makes 0700, which would stay on the dataset after the rename into place)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(parent / prefix))


def _try_lock(folder: Path) -> int | None:
    """An exclusive advisory lock on ``folder``, held by the returned descriptor (released when it is closed
    or the process dies); None where locks are unavailable. Raises BlockingIOError if another process holds it."""
    if fcntl is None:
        return None
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def _clear_interrupted_runs(raw_folder: Path, dataset_id: int, target: Path) -> None:
    """Remove what a killed conversion of this dataset id left in ``raw_folder``.

    A running conversion holds a lock on its ``.tmp_DatasetID_*`` folder, so a folder nobody locks is
    stale. A ``.old_<name>_*`` folder is the previous dataset moved aside by ``--overwrite``: removed when
    the new dataset is in place, otherwise renamed back.
    """
    temporary_prefix = f".tmp_Dataset{dataset_id:03d}_"
    for entry in sorted(raw_folder.iterdir()):
        if not (entry.name.startswith(temporary_prefix) and entry.is_dir()):
            continue
        try:
            descriptor = _try_lock(entry)
        except BlockingIOError:
            raise ConversionError(
                f"{entry} is being written by another conversion of dataset id {dataset_id} that is still running; "
                "wait for it to finish (or stop it), then re-run"
            ) from None
        if descriptor is None:
            print(f"Note: {entry} was left by an interrupted conversion, or another one is running; "
                  "delete it once no conversion runs")
            continue
        try:
            shutil.rmtree(entry)
        finally:
            os.close(descriptor)
        print(f"Removed {entry}, left behind by an interrupted conversion")
    for entry in sorted(raw_folder.iterdir()):
        if not (entry.name.startswith(f".old_{target.name}_") and entry.is_dir()):
            continue
        if target.exists():
            shutil.rmtree(entry)
            print(f"Removed {entry}, the previous dataset left behind by an interrupted --overwrite")
        else:
            os.rename(entry, target)
            print(f"Restored {target} from {entry}, where an interrupted --overwrite had moved it")


def _run_jobs(jobs: list, num_processes: int) -> list[tuple[str, object]]:
    """Convert (or check) all cases, in order; in ``num_processes`` spawned workers when > 1."""
    with tqdm(total=len(jobs), desc="Converting cases", unit="case") as progress:
        if num_processes <= 1 or len(jobs) <= 1:
            outcomes = []
            for job in jobs:
                outcomes.append(_convert_case_job(job))
                progress.update()
            return outcomes
        # spawn, not fork: the caller (e.g. a training script) may hold threads. An executor, not a
        # multiprocessing.Pool: a worker that dies raises BrokenProcessPool instead of hanging.
        executor = ProcessPoolExecutor(max_workers=min(num_processes, len(jobs)),
                                       mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_die_with_parent, initargs=(os.getpid(),))
        try:
            outcomes = []
            for outcome in executor.map(_convert_case_job, jobs):
                outcomes.append(outcome)
                progress.update()
            return outcomes
        finally:
            # on error: drop queued cases and wait for the running ones, so that none writes into the
            # temporary folder while it is being removed
            executor.shutdown(wait=True, cancel_futures=True)


def _summarise(records: dict[str, dict], excluded: Sequence[dict]) -> dict[str, int]:
    kinds = Counter(m["kind"] for r in records.values() for m in r["mask_kinds"])
    return {
        "cases_written": len(records),
        "excluded": len(excluded),
        "masks_merged": sum(r["merged_masks"] for r in records.values()),
        "thresholded": sum(r["thresholded"] for r in records.values()),
        "resized": sum(r["resized"] for r in records.values()),
        "instance_maps_binarised": sum("instances" in r for r in records.values()),
        "empty_labels": sum(r["foreground_pixels"] == 0 for r in records.values()),
        "masks_read": sum(kinds.values()),
        "masks_binary": kinds["binary"],
        "masks_empty": kinds["empty"],
        "masks_soft_edged": kinds["soft"],
        "masks_with_faint_values": sum(m["faint_pixels"] > 0 for r in records.values() for m in r["mask_kinds"]),
        "pixels_changed_class": sum(m["changed_pixels"] for r in records.values() for m in r["mask_kinds"]),
        "files_with_read_warnings": sum(len(r.get("read_warnings", {})) for r in records.values()),
    }


def write_mask_report(records: dict[str, dict], path: Path) -> None:
    """One CSV row per mask that was not exactly two-valued and was thresholded (header only if none)."""
    with open(path, "w", newline="") as report:
        writer = csv.writer(report)
        writer.writerow(["case", "mask", "values", "intermediate_pixels", "faint_pixels", "pixels_changed_class"])
        for case_id, record in records.items():
            for mask in record["mask_kinds"]:
                if mask["kind"] == "soft":
                    writer.writerow([case_id, mask["file"], mask["values"], mask["edge_pixels"],
                                     mask["faint_pixels"], mask["changed_pixels"]])


def write_nnunet_dataset(
    info: DatasetInfo,
    cases: Sequence[CaseSource],
    source_root: Path,
    raw_folder: Path,
    dataset_id: int,
    target_hw: tuple[int, int] | None,
    num_processes: int = 1,
    overwrite: bool = False,
    excluded: Sequence[dict] = (),
    arguments: dict | None = None,
    problems: Sequence[str] = (),
    strict_masks: bool = False,
) -> ConversionResult:
    """Write ``raw_folder/DatasetXXX_NAME`` atomically, or nothing.

    Everything goes to a hidden temporary folder inside ``raw_folder`` (same file system) that is
    renamed into place only once complete; on any error or interruption it is deleted, so no
    ``DatasetXXX_*`` is left half-written. With ``overwrite`` the old dataset is replaced only
    after the new one is complete. Every case is checked even after a bad one: all problems (``problems``
    found earlier, e.g. unpaired files, plus those of the cases) are raised together as
    :class:`ConversionProblems`. File-system errors become a :class:`ConversionError` naming the path.
    ``strict_masks`` refuses binary masks that are not exactly two-valued instead of thresholding them; the
    thresholded ones are listed in ``MASK_REPORT_NAME`` next to dataset.json.
    """
    # imported here, not at module level: scikit-learn takes seconds to import in every spawned worker
    from dataset_conversion.splits import paper_splits

    problems = list(problems) + unique_case_id_problems(cases)
    if not cases:
        raise_problems(problems)
        raise ConversionError(f"no cases found in {source_root}")
    folder_name = dataset_folder_name(dataset_id, info.name)
    raw_folder = Path(raw_folder)
    if raw_folder.exists() and not raw_folder.is_dir():
        raise ConversionError(f"nnUNet_raw folder {raw_folder} is a file, not a folder; point nnUNet_raw to a "
                              "folder (or move the file away)")
    target = raw_folder / folder_name
    try:
        raw_folder.mkdir(parents=True, exist_ok=True)
        _clear_interrupted_runs(raw_folder, dataset_id, target)
        _check_target(raw_folder, dataset_id, folder_name, overwrite)
        temporary = make_fresh_folder(raw_folder, f".tmp_{folder_name}_")
    except OSError as err:
        raise filesystem_error(err, raw_folder) from err
    lock = None
    try:
        lock = _try_lock(temporary)
        (temporary / "imagesTr").mkdir()
        (temporary / "labelsTr").mkdir()
        keep = [case for case in sorted(cases, key=lambda c: c.case_id)]
        jobs = [(case, target_hw, temporary, source_root, strict_masks) for case in keep]
        records: dict[str, dict] = {}
        for case, (status, outcome) in zip(keep, _run_jobs(jobs, num_processes)):
            if status == "ok":
                records[case.case_id] = outcome
            else:
                problems.extend(outcome)
        raise_problems(problems)
        original_ids = {case.case_id: case.original_id for case in keep}
        summary = _summarise(records, excluded)
        # everything is written into the temporary folder, which is renamed into place once complete
        generate_dataset_json(
            str(temporary),
            channel_names={0: "R", 1: "G", 2: "B"},
            labels={"background": 0, info.label_name: 1},
            num_training_cases=len(keep),
            file_ending=".png",
            dataset_name=info.name,
            description=info.description,
            reference=info.reference,
            license=info.licence,
            converted_by="nnUNetv2_convert_allukan_dataset (dataset_conversion package of nnunet-allukan)",
            original_ids=original_ids,
        )
        save_json(
            {
                "arguments": arguments or {},
                "source_folder": str(source_root),
                "cases": records,
                "excluded": list(excluded),
                "summary": summary,
            },
            str(temporary / "conversion_record.json"),
        )
        save_json(paper_splits(original_ids), str(temporary / "paper_splits.json"))
        write_mask_report(records, temporary / MASK_REPORT_NAME)
        _move_into_place(temporary, target)
    except OSError as err:
        shutil.rmtree(temporary, ignore_errors=True)
        raise filesystem_error(err, raw_folder) from err
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return ConversionResult(dataset_folder=target, dataset_id=dataset_id, records=records, summary=summary)


def _move_into_place(temporary: Path, target: Path) -> None:
    if not target.exists():
        os.rename(temporary, target)
        return
    old = target.parent / f".old_{target.name}_{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        os.rename(temporary, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
