"""Shared machinery of the converters: reading images and masks, binarising, resizing, and writing an
nnU-Net raw dataset (``imagesTr``/``labelsTr``/``dataset.json``) into a temporary folder that is moved
into ``$nnUNet_raw/DatasetXXX_NAME`` only once it is complete.

Every problem with the user's input raises :class:`ConversionError` with a message that names the file
and says how to fix it; the command line prints it and exits non-zero.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

# Soft-edged 0/255 masks (CVC-ClinicDB) are thresholded here: the reference code's 127/128 cut.
SOFT_MASK_THRESHOLD = 128
# A mask (binary or instance map) is piecewise constant: few neighbouring pixels differ (< 1 % on the
# real CVC/BUSI masks). A photograph or ultrasound frame passed by mistake has 50-80 % differing
# neighbours (measured on the BUSI and CVC samples). 15 % separates the two with a wide margin.
MAX_MASK_NEIGHBOUR_CHANGE = 0.15
IGNORED_FILE_NAMES = {"Thumbs.db", "desktop.ini"}


class ConversionError(Exception):
    """Bad input or arguments: the message names the offending file/argument and the fix."""


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


def check_unique_case_ids(cases: Sequence[CaseSource]) -> None:
    """Two source files mapping to one case id (e.g. ``benign (1).png`` and ``benign (01).png``) is an error."""
    by_id: dict[str, list[CaseSource]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, []).append(case)
    duplicates = {k: v for k, v in by_id.items() if len(v) > 1}
    if duplicates:
        lines = [f"{k}: " + ", ".join(str(c.image) for c in v) for k, v in sorted(duplicates.items())]
        raise ConversionError(
            "duplicate case ids (several images map to the same case):\n  " + "\n  ".join(lines)
            + "\nremove or rename the duplicate files"
        )
    by_original = Counter(c.original_id for c in cases)
    repeated = sorted(k for k, n in by_original.items() if n > 1)
    if repeated:
        raise ConversionError(f"duplicate original image names {repeated}: remove the duplicate files")


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
    pairs = mask[:, 1:].size + mask[1:].size
    if changes / pairs > MAX_MASK_NEIGHBOUR_CHANGE:
        raise ConversionError(
            f"{path} does not look like a mask: {100 * changes / pairs:.0f} % of neighbouring pixels differ "
            f"(masks are piecewise constant, < {100 * MAX_MASK_NEIGHBOUR_CHANGE:.0f} %). Is it an image stored "
            "under a mask's name? Replace it with the mask from the dataset archive"
        )


def binarize_binary_mask(mask: np.ndarray, path: Path) -> tuple[np.ndarray, bool]:
    """0/255 (or 0/1) mask -> bool foreground; soft-edged masks are thresholded at 128.

    Returns:
        (foreground ``bool [H, W]``, whether thresholding was needed).
    """
    _check_piecewise_constant(mask, path)
    values = np.unique(mask)
    if values.size <= 2:
        # the larger of the two values is the object (0/255 and 0/1 masks alike)
        return (mask == values[-1]) & (values[-1] > 0), False
    if mask.dtype != np.uint8 or values[-1] < SOFT_MASK_THRESHOLD:
        shown = values.tolist() if values.size <= 8 else values[:8].tolist() + ["..."]
        raise ConversionError(
            f"mask {path} has the values {shown}: neither a 0/255 mask nor a soft-edged one (whose object is "
            f">= {SOFT_MASK_THRESHOLD}); a multi-class label map or the wrong file. Replace it with the "
            "binary mask from the dataset archive"
        )
    return mask >= SOFT_MASK_THRESHOLD, True


def binarize_instance_map(label_map: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """Instance map (0 background, 1..N objects) -> bool foreground ``[H, W]`` and N."""
    _check_piecewise_constant(label_map, path)
    foreground = label_map > 0
    return foreground, int(np.unique(label_map[foreground]).size)


# ----------------------------------------------------------------------------------------------------
# Converting one case (runs in worker processes)
# ----------------------------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def convert_case(case: CaseSource, target_hw: tuple[int, int] | None, output_folder: Path,
                 source_root: Path) -> dict:
    """Read, binarise, unite, resize and write one case; return its record for ``conversion_record.json``.

    Writes ``imagesTr/<case>_0000.png`` (RGB uint8) and ``labelsTr/<case>.png`` (uint8 0/1).
    Images are resized bilinearly (Pillow's antialiased filter), masks with nearest neighbour after
    binarisation, so labels stay exactly 0/1.
    """
    image = read_image_rgb(case.image)
    height, width = image.shape[:2]
    foreground = np.zeros((height, width), dtype=bool)
    steps: list[str] = []
    thresholded = False
    instances = 0
    for mask_path in case.masks:
        raw_mask = read_mask_array(mask_path)
        if raw_mask.shape != (height, width):
            raise ConversionError(
                f"mask {mask_path} is {raw_mask.shape[1]}x{raw_mask.shape[0]} (WxH) but its image {case.image} is "
                f"{width}x{height}: they do not belong together; replace the mismatched file from the archive"
            )
        if case.mask_kind == "instance":
            mask, n = binarize_instance_map(raw_mask, mask_path)
            instances += n
            steps.append(f"binarised instance map ({n} objects) at > 0")
        else:
            mask, was_thresholded = binarize_binary_mask(raw_mask, mask_path)
            if was_thresholded:
                thresholded = True
                steps.append(f"thresholded soft-edged mask {mask_path.name} at >= {SOFT_MASK_THRESHOLD}")
        foreground |= mask
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
        "original_shape_hw": [height, width],
        "output_shape_hw": [label_pil.height, label_pil.width],
        "merged_masks": len(case.masks) > 1,
        "thresholded": thresholded,
        "resized": resized,
        "foreground_pixels": int(np.count_nonzero(np.asarray(label_pil))),
        "steps": steps,
    }
    if case.mask_kind == "instance":
        record["instances"] = instances
    return record


def _convert_case_job(job: tuple[CaseSource, tuple[int, int] | None, Path, Path]) -> dict:
    return convert_case(*job)


# ----------------------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------------------


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def _check_target(raw_folder: Path, dataset_id: int, folder_name: str, overwrite: bool,
                  other_roots: Iterable[Path]) -> None:
    """Refuse an existing dataset (without ``overwrite``) and an id taken by a dataset of another name.

    nnU-Net resolves ``-d ID`` over nnUNet_raw, nnUNet_preprocessed and nnUNet_results and fails when
    the id maps to two names, so all three are checked.
    """
    prefix = f"Dataset{dataset_id:03d}_"
    for root in [raw_folder, *other_roots]:
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(prefix) and entry.name != folder_name:
                raise ConversionError(
                    f"dataset id {dataset_id} is already used by {entry}; pass a free id with -d, "
                    f"or remove that dataset"
                )
    target = raw_folder / folder_name
    if target.exists() and not overwrite:
        raise ConversionError(f"{target} already exists; pass --overwrite to replace it")


def _dump_json(data, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _run_jobs(jobs: list, num_processes: int) -> list[dict]:
    """Convert all cases, in order; in ``num_processes`` spawned workers when > 1."""
    with tqdm(total=len(jobs), desc="Converting cases", unit="case") as progress:
        if num_processes <= 1 or len(jobs) <= 1:
            records = []
            for job in jobs:
                records.append(_convert_case_job(job))
                progress.update()
            return records
        # spawn, not fork: the caller (e.g. a training script) may hold threads. An executor, not a
        # multiprocessing.Pool: a worker that dies raises BrokenProcessPool instead of hanging.
        executor = ProcessPoolExecutor(max_workers=min(num_processes, len(jobs)),
                                       mp_context=multiprocessing.get_context("spawn"))
        try:
            records = []
            for record in executor.map(_convert_case_job, jobs):
                records.append(record)
                progress.update()
            return records
        finally:
            # on error: drop queued cases and wait for the running ones, so that none writes into the
            # temporary folder while it is being removed
            executor.shutdown(wait=True, cancel_futures=True)


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
    other_nnunet_roots: Iterable[Path] = (),
) -> ConversionResult:
    """Write ``raw_folder/DatasetXXX_NAME`` atomically.

    Everything goes to a hidden temporary folder inside ``raw_folder`` (same file system) that is
    renamed into place only once complete; on any error or interruption it is deleted, so no
    ``DatasetXXX_*`` is left half-written. With ``overwrite`` the old dataset is replaced only
    after the new one is complete.
    """
    # imported here, not at module level: scikit-learn takes seconds to import in every spawned worker
    from dataset_conversion.splits import paper_splits

    if not cases:
        raise ConversionError(f"no cases found in {source_root}")
    check_unique_case_ids(cases)
    folder_name = dataset_folder_name(dataset_id, info.name)
    raw_folder = Path(raw_folder)
    raw_folder.mkdir(parents=True, exist_ok=True)
    other_roots = [Path(p) for p in other_nnunet_roots]
    _check_target(raw_folder, dataset_id, folder_name, overwrite, other_roots)
    target = raw_folder / folder_name

    cases = sorted(cases, key=lambda c: c.case_id)
    temporary = Path(tempfile.mkdtemp(prefix=f".tmp_{folder_name}_", dir=raw_folder))
    try:
        (temporary / "imagesTr").mkdir()
        (temporary / "labelsTr").mkdir()
        jobs = [(case, target_hw, temporary, source_root) for case in cases]
        record_list = _run_jobs(jobs, num_processes)
        records = {case.case_id: rec for case, rec in zip(cases, record_list)}
        original_ids = {case.case_id: case.original_id for case in cases}
        summary = {
            "cases_written": len(cases),
            "excluded": len(excluded),
            "masks_merged": sum(r["merged_masks"] for r in records.values()),
            "thresholded": sum(r["thresholded"] for r in records.values()),
            "resized": sum(r["resized"] for r in records.values()),
            "instance_maps_binarised": sum("instances" in r for r in records.values()),
            "empty_labels": sum(r["foreground_pixels"] == 0 for r in records.values()),
        }
        dataset_json = {
            "channel_names": {"0": "R", "1": "G", "2": "B"},
            "labels": {"background": 0, info.label_name: 1},
            "numTraining": len(cases),
            "file_ending": ".png",
            "name": info.name,
            "description": info.description,
            "reference": info.reference,
            "licence": info.licence,
            "original_ids": original_ids,
            "converted_by": "nnUNetv2_convert_allukan_dataset (dataset_conversion package of nnunet-allukan)",
        }
        _dump_json(dataset_json, temporary / "dataset.json")
        _dump_json(
            {
                "arguments": arguments or {},
                "source_folder": str(source_root),
                "cases": records,
                "excluded": list(excluded),
                "summary": summary,
            },
            temporary / "conversion_record.json",
        )
        _dump_json(paper_splits(original_ids), temporary / "paper_splits.json")
        _move_into_place(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ConversionResult(dataset_folder=target, dataset_id=dataset_id, records=records, summary=summary)


def _move_into_place(temporary: Path, target: Path) -> None:
    if not target.exists():
        os.rename(temporary, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".old_{target.name}_", dir=target.parent))
    old.rmdir()
    os.rename(target, old)
    try:
        os.rename(temporary, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
