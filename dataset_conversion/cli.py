"""``nnUNetv2_convert_allukan_dataset {busi,glas,cvc} SOURCE_FOLDER [-d ID] [--size N | --native]
[--include-normal] [--strict-masks] [-np N] [--overwrite]``: a distributed dataset -> ``$nnUNet_raw/DatasetID_NAME``.

:func:`convert_dataset` is the same thing as a Python function.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import ModuleType

from nnunetv2 import paths as nnunet_paths

from dataset_conversion import busi, cvc, glas
from dataset_conversion.errors import ConversionError, filesystem_error
from dataset_conversion.masks import LARGE_DROPPED_LEVEL_FRACTION, SOFT_MASK_THRESHOLD
from dataset_conversion.writer import MASK_REPORT_NAME, ConversionResult, large_dropped_levels, write_nnunet_dataset
from nnunet_allukan.paper import INPUT_SIZES

DATASETS: dict[str, ModuleType] = {"busi": busi, "glas": glas, "cvc": cvc}
MAX_SIZE = 4096


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a batch job's share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_num_processes() -> int:
    """nnU-Net's convention: ``nnUNet_def_n_proc`` (default 8), at most the number of CPUs."""
    # not nnunetv2.configuration.default_num_processes: read once at import, a non-integer crashes the import
    try:
        wanted = int(os.environ.get("nnUNet_def_n_proc", 8))
    except ValueError:
        wanted = 8
    return max(1, min(wanted, available_cpus()))


def _nnunet_folder(variable: str) -> Path | None:
    """$nnUNet_raw / $nnUNet_preprocessed / $nnUNet_results from nnunetv2.paths; None where not set."""
    value = getattr(nnunet_paths, variable).get()
    return Path(value) if value else None


def convert_dataset(
    dataset: str,
    source_folder: Path | str,
    dataset_id: int | None = None,
    size: int | None = None,
    native: bool = False,
    include_normal: bool = False,
    num_processes: int = 1,
    overwrite: bool = False,
    raw_folder: Path | str | None = None,
    strict_masks: bool = False,
) -> ConversionResult:
    """Convert one distributed dataset into an nnU-Net raw dataset.

    Args:
        dataset: "busi", "glas" or "cvc".
        source_folder: the folder as distributed (see each module's docstring); a parent is accepted.
        dataset_id: nnU-Net id (default 601 BUSI, 602 GlaS, 603 CVC).
        size: output side length N (N x N); default the paper's (256 BUSI/CVC, 512 GlaS).
        native: keep native resolution instead (exclusive with ``size``).
        include_normal: BUSI only: keep the normal (lesion-free) images.
        num_processes: worker processes (<= 1: in this process).
        overwrite: replace an existing ``DatasetID_NAME``.
        raw_folder: default ``$nnUNet_raw``.
        strict_masks: refuse binary masks that are not exactly two-valued instead of thresholding them at 128.

    Returns:
        where it wrote, the per-case records and the summary counts.
    """
    if dataset not in DATASETS:
        raise ConversionError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    module = DATASETS[dataset]
    info = module.INFO
    if dataset_id is None:
        dataset_id = info.default_id
    if not 1 <= int(dataset_id) <= 999:
        raise ConversionError(f"dataset id must be between 1 and 999 (nnU-Net's 3-digit ids), got {dataset_id}")
    if native and size is not None:
        raise ConversionError("--size and --native exclude each other; pass one of them")
    if size is not None and not 1 <= int(size) <= MAX_SIZE:
        raise ConversionError(f"--size must be between 1 and {MAX_SIZE}, got {size}")
    if include_normal and dataset != "busi":
        raise ConversionError("--include-normal applies to BUSI only")
    if num_processes < 0:
        raise ConversionError(f"-np must be >= 0, got {num_processes}")
    if num_processes > available_cpus():
        # more workers than CPUs only adds start-up time and memory (each worker is a fresh interpreter)
        print(f"Note: -np {num_processes} capped at {available_cpus()}, the number of CPUs available "
              "(the default is capped the same way)")
        num_processes = available_cpus()
    if raw_folder is None:
        raw_folder = _nnunet_folder("nnUNet_raw")
        if raw_folder is None:
            raise ConversionError(
                "the environment variable nnUNet_raw is not set; set it to nnU-Net's raw data folder "
                "(see nnU-Net's documentation: setting_up_paths.md)"
            )
    side = None if native else int(size if size is not None else info.default_size)
    target_hw = None if side is None else (side, side)

    source = module.find_source(source_folder)
    problems: list[str] = []
    cases, excluded = module.collect_cases(source, include_normal=include_normal, problems=problems)
    arguments = {
        "dataset": dataset,
        "dataset_id": int(dataset_id),
        "size": side if side is not None else "native",
        "include_normal": include_normal,
        "strict_masks": strict_masks,
    }
    return write_nnunet_dataset(
        info=info,
        cases=cases,
        source_root=source,
        raw_folder=Path(raw_folder),
        dataset_id=int(dataset_id),
        target_hw=target_hw,
        num_processes=num_processes,
        overwrite=overwrite,
        excluded=excluded,
        arguments=arguments,
        problems=problems,
        strict_masks=strict_masks,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_convert_allukan_dataset",
        description="Convert BUSI, GlaS or CVC-ClinicDB, as distributed, into an nnU-Net raw dataset "
                    "($nnUNet_raw/DatasetID_NAME) with the paper's three seeded 80/20 splits.",
    )
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which dataset SOURCE_FOLDER holds")
    parser.add_argument(
        "source_folder",
        help="busi: Dataset_BUSI_with_GT/ (or its parent); glas: 'Warwick QU Dataset (Released 2016_07_08)/'; "
             "cvc: the folder holding Original/ and 'Ground Truth/'",
    )
    parser.add_argument("-d", dest="dataset_id", type=int, default=None,
                        help="nnU-Net dataset id (default: 601 busi, 602 glas, 603 cvc)")
    sizing = parser.add_mutually_exclusive_group()
    sizing.add_argument("--size", type=int, default=None,
                        help="resize to N x N (default: the paper's, "
                             + ", ".join(f"{size} for {name}" for name, size in INPUT_SIZES.items()) + ")")
    sizing.add_argument("--native", action="store_true",
                        help="keep the native resolution (nnU-Net's usual practice) instead of resizing")
    parser.add_argument("--include-normal", action="store_true",
                        help="busi only: keep the normal (lesion-free) images, which the paper excludes")
    parser.add_argument("--strict-masks", action="store_true",
                        help="busi/cvc: refuse any mask that is not exactly two-valued (soft edges, compression "
                             f"noise, ...) instead of thresholding it at {SOFT_MASK_THRESHOLD}")
    parser.add_argument("-np", dest="num_processes", type=int, default=default_num_processes(),
                        help="number of worker processes (default: nnUNet_def_n_proc or 8, at most the CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of the same id and name")
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the temporary folder is removed on the way out."""


def _raise_on_sigterm(signum, frame):
    raise Terminated


def _print_summary(result: ConversionResult) -> None:
    s = result.summary
    print(
        f"Done: {s['cases_written']} cases written ({s['empty_labels']} with an empty label), "
        f"{s['excluded']} excluded, {s['masks_merged']} with masks merged, {s['thresholded']} thresholded, "
        f"{s['instance_maps_binarised']} instance maps binarised, {s['resized']} resized."
    )
    print(
        f"Masks: {s['masks_read']} read: {s['masks_binary']} binary (two values), {s['masks_empty']} empty, "
        f"{s['masks_soft_edged']} soft-edged or noisy (not exactly binary: thresholded at >= {SOFT_MASK_THRESHOLD}, "
        f"{s['pixels_changed_class']} pixels changed class; {s['masks_with_faint_values']} of them with faint values "
        f"near 0/255), {s['instance_maps_binarised']} instance maps (> 0). Thresholded masks: "
        f"{result.dataset_folder / MASK_REPORT_NAME}; every mask: conversion_record.json, \"mask_kinds\"."
    )
    dropped = large_dropped_levels(result.records)
    if dropped:
        print(f"Warning: {len(dropped)} masks hold a level below {SOFT_MASK_THRESHOLD} on more than "
              f"{100 * LARGE_DROPPED_LEVEL_FRACTION:.0f} % of the image, which thresholding made background (faint "
              "patches of a binary mask are; labels of a label map would be lost: if these are label maps, replace "
              f"them with binary masks and re-run with --overwrite). Listed in {MASK_REPORT_NAME}:", file=sys.stderr)
        for file, level, pixels, percent in dropped[:20]:
            print(f"  {file}: the level {level} on {pixels} pixels ({percent:.2f} %)", file=sys.stderr)
        if len(dropped) > 20:
            print(f"  ... and {len(dropped) - 20} more", file=sys.stderr)
    warned = [(f, m) for r in result.records.values() for f, m in sorted(r.get("read_warnings", {}).items())]
    if warned:
        print(f"Warning: {len(warned)} files were read with warnings (their pixels were read; "
              "listed in conversion_record.json, \"read_warnings\"):", file=sys.stderr)
        for file, messages in warned[:20]:
            print(f"  {file}: {'; '.join(messages)[:200]}", file=sys.stderr)
        if len(warned) > 20:
            print(f"  ... and {len(warned) - 20} more", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        result = convert_dataset(
            dataset=args.dataset,
            source_folder=args.source_folder,
            dataset_id=args.dataset_id,
            size=args.size,
            native=args.native,
            include_normal=args.include_normal,
            num_processes=args.num_processes,
            overwrite=args.overwrite,
            strict_masks=args.strict_masks,
        )
    except ConversionError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 1
    except OSError as err:  # an unforeseen file-system error: still one clear line, not a traceback
        folder = _nnunet_folder("nnUNet_raw") or Path(".")
        print(f"ERROR: {filesystem_error(err, folder)}", file=sys.stderr)
        print("Nothing was written.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted; nothing was written.", file=sys.stderr)
        return 130
    except Terminated:
        print("Terminated (SIGTERM); nothing was written.", file=sys.stderr)
        return 128 + signal.SIGTERM
    _print_summary(result)
    print(f"Wrote {result.dataset_folder}")
    preprocessed = _nnunet_folder("nnUNet_preprocessed")
    if args.overwrite and preprocessed is not None and (preprocessed / result.dataset_folder.name).is_dir():
        print(f"Note: {preprocessed / result.dataset_folder.name} holds data of the replaced dataset; "
              f"re-run nnUNetv2_plan_and_preprocess -d {result.dataset_id}")
    print(f"  imagesTr/, labelsTr/, dataset.json, conversion_record.json (per-case provenance), {MASK_REPORT_NAME}, "
          "paper_splits.json (the paper's 3 seeded 80/20 splits as splits_final.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
