"""Writing an nnU-Net raw dataset (``imagesTr``/``labelsTr``/``dataset.json``, the conversion record, the
report of thresholded masks, the paper's splits) into a temporary folder that is moved into
``$nnUNet_raw/DatasetXXX_NAME`` only once it is complete; every case converted (in worker processes) and
checked, its problems collected."""

from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import save_json, subdirs
from nnunetv2 import paths as nnunet_paths
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets
from PIL import Image
from tqdm import tqdm

from dataset_conversion.errors import ConversionError, ConversionProblems, filesystem_error, raise_problems
from dataset_conversion.masks import SOFT_MASK_THRESHOLD, BinarisedMask, binarize_binary_mask, binarize_instance_map
from dataset_conversion.reading import captured_read_warnings, read_image_rgb, read_mask_array
from dataset_conversion.sources import CaseSource, DatasetInfo, unique_case_id_problems
from nnunet_allukan.filesystem import (OverwriteRefused, check_replaceable, make_fresh_folder, mark_output_folder,
                                       move_into_place, try_lock)

COMMAND = "nnUNetv2_convert_allukan_dataset"
# Next to dataset.json: the masks that were thresholded, with what it changed.
MASK_REPORT_NAME = "thresholded_masks.csv"
# Everything a conversion writes into DatasetXXX_NAME: --overwrite replaces a dataset only if it holds nothing else
# (e.g. no imagesTs added by hand).
DATASET_CONTENTS = ("imagesTr", "labelsTr", "dataset.json", "conversion_record.json", "paper_splits.json",
                    MASK_REPORT_NAME)


@dataclass
class ConversionResult:
    """What :func:`write_nnunet_dataset` did."""

    dataset_folder: Path
    dataset_id: int
    records: dict[str, dict]
    summary: dict[str, int] = field(default_factory=dict)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


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
            with captured_read_warnings(messages):
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
                           "changed_pixels": reading.changed_pixels, "dropped_level": reading.dropped_level,
                           "dropped_level_pixels": reading.dropped_level_pixels,
                           "large_dropped_level": reading.large_dropped_level})
        if reading.kind == "instance":
            steps.append(f"binarised instance map ({reading.instances} objects) at > 0")
        elif reading.kind == "soft":
            steps.append(f"thresholded mask {mask_path.name} ({reading.values} values) at >= {SOFT_MASK_THRESHOLD} "
                         f"({reading.edge_pixels} intermediate pixels, {reading.faint_pixels} faint pixels; "
                         f"{reading.changed_pixels} pixels changed class"
                         + (f", the level {reading.dropped_level} on {reading.dropped_level_pixels} of them)"
                            if reading.dropped_level_pixels else ")"))
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


def dataset_folder_name(dataset_id: int, name: str) -> str:
    # nnU-Net has no helper for this direction (its own converters format the name inline like this)
    return f"Dataset{dataset_id:03d}_{name}"


def _check_target(raw_folder: Path, dataset_id: int, folder_name: str, overwrite: bool) -> None:
    """Refuse an existing dataset (without ``overwrite``, or with it one that this command did not write or that
    holds files it did not write) and an id taken by a dataset of another name.

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
    if target.exists():
        try:
            check_replaceable(target, COMMAND, DATASET_CONTENTS, "convert under another id with -d")
        except OverwriteRefused as refused:
            raise ConversionError(str(refused)) from None


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
            descriptor = try_lock(entry)
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


def run_jobs(jobs: list, num_processes: int) -> list[tuple[str, object]]:
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
        "masks_with_large_dropped_level": len(large_dropped_levels(records)),
        "files_with_read_warnings": sum(len(r.get("read_warnings", {})) for r in records.values()),
    }


def large_dropped_levels(records: dict[str, dict]) -> list[tuple[str, int, int, float]]:
    """(mask file, level, pixels, % of the image) of every thresholded mask in which one level below
    SOFT_MASK_THRESHOLD covers more than masks.LARGE_DROPPED_LEVEL_FRACTION of the image, in case order."""
    found = []
    for record in records.values():
        height, width = record["original_shape_hw"]
        for mask in record["mask_kinds"]:
            if mask.get("large_dropped_level"):
                pixels = mask["dropped_level_pixels"]
                found.append((mask["file"], mask["dropped_level"], pixels, 100 * pixels / (height * width)))
    return found


def write_mask_report(records: dict[str, dict], path: Path) -> None:
    """One CSV row per mask that was not exactly two-valued and was thresholded (header only if none)."""
    with open(path, "w", newline="") as report:
        writer = csv.writer(report)
        writer.writerow(["case", "mask", "values", "intermediate_pixels", "faint_pixels", "pixels_changed_class",
                         "largest_dropped_level", "largest_dropped_level_pixels", "large_dropped_level"])
        for case_id, record in records.items():
            for mask in record["mask_kinds"]:
                if mask["kind"] == "soft":
                    writer.writerow([case_id, mask["file"], mask["values"], mask["edge_pixels"],
                                     mask["faint_pixels"], mask["changed_pixels"], mask["dropped_level"],
                                     mask["dropped_level_pixels"], int(mask["large_dropped_level"])])


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
    from nnunet_allukan.splits import paper_splits

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
        lock = try_lock(temporary)
        mark_output_folder(temporary, COMMAND)
        (temporary / "imagesTr").mkdir()
        (temporary / "labelsTr").mkdir()
        keep = [case for case in sorted(cases, key=lambda c: c.case_id)]
        jobs = [(case, target_hw, temporary, source_root, strict_masks) for case in keep]
        records: dict[str, dict] = {}
        for case, (status, outcome) in zip(keep, run_jobs(jobs, num_processes)):
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
        move_into_place(temporary, target)
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
