"""Evaluate validation predictions of several methods over the seeds (folds): both protocols, the paper's
numbers alongside. Used by the console command ``nnUNetv2_allukan_evaluate``."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nnunet_allukan.evaluation.collect import (
    EvaluationError, FoldPredictions, check_same_cases_across_methods, count_fold, dataset_file_ending,
    env_folder, folder_folds, nnunet_folds, resolve_dataset_name)
from nnunet_allukan.evaluation.tables import (
    markdown_report, per_case_csv, results_json, summarise_dataset, summary_csv)
from nnunet_allukan.evaluation.output import write_text_files
from nnunet_allukan.paper import BATCH_SIZE, METRIC_SMOOTH, METRIC_THRESHOLD, SPLIT_SEEDS

BATCH_ORDERS = ("split", "sorted")


def _settings(order: str, batch_size: int, ddof: int) -> dict:
    if order not in BATCH_ORDERS:
        raise EvaluationError(f"batch order must be one of {BATCH_ORDERS}, got {order!r}")
    if batch_size < 1:
        raise EvaluationError(f"batch size must be >= 1, got {batch_size}")
    if ddof not in (0, 1):
        raise EvaluationError(f"std ddof must be 0 or 1, got {ddof}")
    return {"unit": "percent", "order": order, "batch_size": batch_size, "std_ddof": ddof,
            "iou_smoothing": METRIC_SMOOTH,
            "thresholds": f"prediction > {METRIC_THRESHOLD:g}, target > {METRIC_THRESHOLD:g} (labels 0/1; 0/255 masks "
                          "are scaled to 0/1)",
            "seeds_of_folds": {str(fold): seed for fold, seed in enumerate(SPLIT_SEEDS)}}


def _evaluate_dataset(name: str, fold_predictions: Sequence[FoldPredictions], labels_folder: Path,
                      file_ending: str, settings: dict) -> dict:
    if not labels_folder.is_dir():
        raise EvaluationError(f"{labels_folder}: ground-truth folder not found. For nnU-Net datasets it is created "
                              "by nnUNetv2_plan_and_preprocess; otherwise pass -l LABELS_FOLDER.")
    fold_counts = [count_fold(fp, labels_folder, file_ending) for fp in fold_predictions]
    check_same_cases_across_methods(fold_counts)
    summary = summarise_dataset(name, fold_predictions, fold_counts, settings["order"], settings["batch_size"],
                                settings["std_ddof"])
    summary["labels_folder"] = str(labels_folder)
    return summary


def evaluate_nnunet(datasets: Sequence[str], trainers: Sequence[str], plans: str = "nnUNetPlans",
                    configuration: str = "2d", folds: Sequence[int] = tuple(range(len(SPLIT_SEEDS))),
                    order: str = "split", batch_size: int = BATCH_SIZE, ddof: int = 0,
                    labels_folder: Path | None = None) -> dict:
    """Results of every trainer x fold of every dataset in $nnUNet_results (see tables.summarise_dataset)."""
    settings = _settings(order, batch_size, ddof)
    settings.update(plans=plans, configuration=configuration, folds=list(folds))
    if len(set(folds)) != len(folds):
        raise EvaluationError(f"folds must be distinct, got {list(folds)}")
    results = {"settings": settings, "datasets": {}}
    for dataset in datasets:
        name = resolve_dataset_name(str(dataset))
        fold_predictions = nnunet_folds(name, trainers, plans, configuration, folds)
        labels = labels_folder or env_folder("nnUNet_preprocessed") / name / "gt_segmentations"
        entry = _evaluate_dataset(name, fold_predictions, Path(labels), dataset_file_ending(name), settings)
        results["datasets"][name] = entry
    return results


def evaluate_folders(predictions: Sequence[tuple[str, Sequence[str]]], labels_folder: Path,
                     dataset_label: str = "dataset", splits_file: Path | None = None, file_ending: str = ".png",
                     order: str = "split", batch_size: int = BATCH_SIZE, ddof: int = 0) -> dict:
    """Results for plain folders: predictions = [(method, [fold 0 folder, fold 1 folder, ...])]. Without a
    splits file the batch order is the sorted case order and the case sets are only checked across methods."""
    settings = _settings(order, batch_size, ddof)
    fold_predictions = folder_folds(predictions, splits_file)
    entry = _evaluate_dataset(dataset_label, fold_predictions, Path(labels_folder), file_ending, settings)
    return {"settings": settings, "datasets": {dataset_label: entry}}


def write_results(results: dict, output_folder: Path) -> list[Path]:
    """results.md (Table 1 layout, both protocols, per fold), results.csv, per_case.csv, results.json."""
    return write_text_files(output_folder, {
        "results.md": markdown_report(results),
        "results.csv": summary_csv(results),
        "per_case.csv": per_case_csv(results),
        "results.json": results_json(results),
    })
