"""Scores per fold and over the seeds, the paper's numbers, and the Markdown / CSV / JSON tables.

All scores in the tables and the JSON are percentages (as in the paper).
"""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Sequence

from nnunet_allukan.evaluation.collect import FoldCounts, FoldPredictions
from nnunet_allukan.evaluation.metrics import mean_std, per_image_scores, reference_batches, reference_scores
from nnunet_allukan.paper import (BATCH_SIZE, METRIC_SMOOTH, METRIC_THRESHOLD, SPLIT_SEEDS, TABLE1,
                                  TABLE2_BUSI_SEED2981)

PROTOCOLS = {
    "reference": "Reference protocol (U-KAN code): IoU pooled over each validation batch of {batch} cases in "
                 "{order} order, F1 = 2 IoU / (1 + IoU), batch-size-weighted mean",
    "per_image": "Per-image protocol: IoU and F1 (Dice) of each case, mean over cases",
}
ORDER_WORDS = {"split": "split-file (train_test_split output, as the reference loader iterates them; sorted where a "
                        "method has no split file)",
               "sorted": "sorted case-id"}


def paper_dataset_key(dataset_name: str) -> str | None:
    """'Dataset601_BUSI' -> 'BUSI', '..._GlaS' -> 'GlaS', '..._CVCClinicDB' -> 'CVC', else None."""
    lowered = dataset_name.lower()
    for key in ("BUSI", "GlaS", "CVC"):
        if key.lower() in lowered:
            return key
    return None


def paper_method_for(method: str) -> str | None:
    """The paper's method a trainer (or folder-mode name) corresponds to, or None.

    nnUNetTrainerAllUKAN* -> ALL U-KAN, nnUNetTrainerUKAN_MLP* -> U-KAN_MLP, nnUNetTrainerUKAN* -> U-KAN,
    nnU-Net's nnUNetTrainer (and its stock length variants) -> U-Net (the paper's U-Net is another
    implementation trained with the reference script, so this is a like-for-like row, not the same network).
    Short variants (e.g. _5epochs) map to the same method: their numbers are not expected to match.
    """
    name = method.replace("nnUNetTrainer", "", 1) if method.startswith("nnUNetTrainer") else method
    normalised = re.sub(r"[\s\-]", "", name).lower()
    if normalised.startswith("allukan"):
        return "ALL U-KAN"
    if normalised.startswith("ukan_mlp") or normalised.startswith("ukanmlp"):
        return "U-KAN_MLP"
    if normalised.startswith("ukan"):
        return "U-KAN"
    if method == "nnUNetTrainer" or re.fullmatch(r"nnUNetTrainer_\d+epochs", method) or normalised in ("unet",):
        return "U-Net"
    return None


def score_fold(fold: FoldCounts, order: str, batch_size: int = BATCH_SIZE) -> dict:
    """Both protocols of one fold, in percent, with per-case values and the reference batches."""
    if order == "split" and fold.split_order is not None:
        ordered, order_used = list(fold.split_order), "split"
    else:
        ordered, order_used = sorted(fold.counts), "sorted"
    per_image = per_image_scores([fold.counts[c] for c in ordered])
    batches = reference_batches(ordered, fold.counts, batch_size)
    reference = reference_scores(batches)
    return {
        "prediction_folder": str(fold.prediction_folder),
        "n_cases": len(ordered),
        "batch_order": order_used,
        "per_image": {"iou": 100 * per_image.iou, "f1": 100 * per_image.f1},
        "reference": {"iou": 100 * reference.iou, "f1": 100 * reference.f1,
                      "batches": [{"cases": list(b.cases), "iou": 100 * b.iou, "f1": 100 * b.f1} for b in batches]},
        "per_case": {c: {"iou": 100 * fold.counts[c].iou, "f1": 100 * fold.counts[c].f1,
                         "intersection": fold.counts[c].intersection, "union": fold.counts[c].union,
                         "predicted_pixels": fold.counts[c].predicted, "target_pixels": fold.counts[c].target}
                     for c in ordered},
    }


def summarise_dataset(dataset_name: str, fold_predictions: Sequence[FoldPredictions],
                      fold_counts: Sequence[FoldCounts], order: str, batch_size: int, ddof: int) -> dict:
    """Per-method, per-fold scores and mean +- std over folds for one dataset, with the paper's numbers."""
    paper_key = paper_dataset_key(dataset_name)
    sources = {(fp.method, fp.fold): fp for fp in fold_predictions}
    methods: dict[str, dict] = {}
    for fc in fold_counts:
        entry = methods.setdefault(fc.method, {"paper_method": paper_method_for(fc.method), "folds": {}})
        scores = score_fold(fc, order, batch_size)
        source = sources[(fc.method, fc.fold)]
        scores["splits_file"] = str(source.splits_file) if source.splits_file else None
        scores["training_curves"] = str(source.progress_png) if source.progress_png else None
        entry["folds"][str(fc.fold)] = scores
    for method, entry in methods.items():
        folds = entry["folds"]
        entry["summary"] = {
            protocol: {metric: dict(zip(("mean", "std"), mean_std([f[protocol][metric] for f in folds.values()], ddof)),
                                    folds=[f[protocol][metric] for f in folds.values()])
                       for metric in ("iou", "f1")}
            for protocol in ("reference", "per_image")}
        paper_method = entry["paper_method"]
        entry["paper"] = {}
        if paper_key and paper_method in TABLE1:
            entry["paper"]["table1"] = {m: list(TABLE1[paper_method][paper_key][m]) for m in ("iou", "f1")}
        if paper_key == "BUSI" and paper_method in TABLE2_BUSI_SEED2981:
            entry["paper"]["table2_seed2981_fold0"] = dict(TABLE2_BUSI_SEED2981[paper_method])
    return {"paper_dataset": paper_key, "methods": methods}


def _fmt(mean: float, std: float | None = None) -> str:
    if std is None:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}" if std == std else f"{mean:.2f}"  # std is NaN for ddof >= n


def fold_label(fold: str) -> str:
    index = int(fold)
    return f"{fold} (seed {SPLIT_SEEDS[index]})" if index < len(SPLIT_SEEDS) else fold


def method_label(method: str, paper_method: str | None) -> str:
    return f"{paper_method} ({method})" if paper_method and paper_method != method else method


def markdown_report(results: dict) -> str:
    """Paper Table 1 layout (methods as rows, IoU / F1 per dataset) for both protocols, then per fold."""
    settings = results["settings"]
    datasets = results["datasets"]
    methods: list[str] = []
    for data in datasets.values():
        methods += [m for m in data["methods"] if m not in methods]
    lines = ["# Segmentation results (IoU / F1 in %)", ""]
    lines.append(f"Mean ± std over folds (std with ddof={settings['std_ddof']}); folds 0, 1, 2 are the paper's "
                 f"seeds {', '.join(map(str, SPLIT_SEEDS))}. Thresholds as the paper: prediction > "
                 f"{METRIC_THRESHOLD:g}, target > {METRIC_THRESHOLD:g}, IoU smoothing {METRIC_SMOOTH:g}. Paper numbers "
                 "are Table 1 (reference protocol, the paper's own training pipeline; its U-Net is not nnU-Net's).")
    lines.append("")
    for protocol, title in (("reference", "Reference protocol (batch-pooled, as the paper's numbers)"),
                            ("per_image", "Per-image protocol (standard)")):
        lines += [f"## {title}", "",
                  PROTOCOLS[protocol].format(batch=settings["batch_size"], order=ORDER_WORDS[settings["order"]]) + ".",
                  ""]
        header, rule = ["Method"], ["---"]
        for name, data in datasets.items():
            short = data["paper_dataset"] or name
            header += [f"{short} IoU", f"{short} F1"]
            rule += ["---:", "---:"]
            if data["paper_dataset"]:
                where = "paper" if protocol == "reference" else "paper, batch-pooled"
                header += [f"{short} IoU ({where})", f"{short} F1 ({where})"]
                rule += ["---:", "---:"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
        for method in methods:
            row, paper_method = [], None
            for data in datasets.values():
                entry = data["methods"].get(method)
                if entry is None:
                    row += ["–", "–"] + (["–", "–"] if data["paper_dataset"] else [])
                    continue
                paper_method = entry["paper_method"]
                summary = entry["summary"][protocol]
                row += [_fmt(summary["iou"]["mean"], summary["iou"]["std"]),
                        _fmt(summary["f1"]["mean"], summary["f1"]["std"])]
                if data["paper_dataset"]:
                    table1 = entry["paper"].get("table1")
                    row += ([_fmt(*table1["iou"]), _fmt(*table1["f1"])] if table1 else ["–", "–"])
            lines.append("| " + " | ".join([method_label(method, paper_method)] + row) + " |")
        lines.append("")
    lines += ["## Per fold", "",
              "| Dataset | Method | Fold | Cases | Order | IoU ref. | F1 ref. | IoU per-image | F1 per-image "
              "| Paper Table 2 (BUSI, seed 2981) IoU / F1 |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---|"]
    for name, data in datasets.items():
        for method, entry in data["methods"].items():
            for fold, scores in entry["folds"].items():
                table2 = entry["paper"].get("table2_seed2981_fold0") if fold == "0" else None
                paper = f"{table2['iou']:.2f} / {table2['f1']:.2f}" if table2 else ""
                lines.append(
                    f"| {name} | {method} | {fold_label(fold)} | {scores['n_cases']} | {scores['batch_order']} | "
                    f"{_fmt(scores['reference']['iou'])} | {_fmt(scores['reference']['f1'])} | "
                    f"{_fmt(scores['per_image']['iou'])} | {_fmt(scores['per_image']['f1'])} | {paper} |")
    curves = [(name, method, fold, scores["training_curves"]) for name, data in datasets.items()
              for method, entry in data["methods"].items() for fold, scores in entry["folds"].items()
              if scores.get("training_curves")]
    if curves:
        lines += ["", "## Training curves (drawn by nnU-Net)", ""]
        lines += [f"- {name} {method} fold {fold}: `{png}`" for name, method, fold, png in curves]
    return "\n".join(lines) + "\n"


def summary_csv(results: dict) -> str:
    """One row per dataset x method x protocol x metric: fold values, mean, std, paper mean / std."""
    folds = sorted({int(f) for data in results["datasets"].values() for entry in data["methods"].values()
                    for f in entry["folds"]})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "method", "paper_method", "protocol", "metric"] + [f"fold_{f}" for f in folds]
                    + ["mean", "std", "paper_mean", "paper_std"])
    for name, data in results["datasets"].items():
        for method, entry in data["methods"].items():
            for protocol in ("reference", "per_image"):
                for metric in ("iou", "f1"):
                    values = [entry["folds"][str(f)][protocol][metric] if str(f) in entry["folds"] else ""
                              for f in folds]
                    summary = entry["summary"][protocol][metric]
                    table1 = entry["paper"].get("table1")
                    paper = table1[metric] if (table1 and protocol == "reference") else ("", "")
                    writer.writerow([name, method, entry["paper_method"] or "", protocol, metric]
                                    + [f"{v:.4f}" if v != "" else "" for v in values]
                                    + [f"{summary['mean']:.4f}", f"{summary['std']:.4f}", *paper])
    return buffer.getvalue()


def per_case_csv(results: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "method", "fold", "case", "iou", "f1", "intersection", "union",
                     "predicted_pixels", "target_pixels"])
    for name, data in results["datasets"].items():
        for method, entry in data["methods"].items():
            for fold, scores in entry["folds"].items():
                for case, c in scores["per_case"].items():
                    writer.writerow([name, method, fold, case, f"{c['iou']:.4f}", f"{c['f1']:.4f}", c["intersection"],
                                     c["union"], c["predicted_pixels"], c["target_pixels"]])
    return buffer.getvalue()


def results_json(results: dict) -> str:
    # text, not save_json: write_text_files stages all four tables and moves them into place together
    return json.dumps(results, indent=2, sort_keys=False) + "\n"
