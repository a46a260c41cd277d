"""Qualitative comparison like paper Fig. 5: image | ground truth | prediction of each method, one row per case."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from nnunet_allukan.evaluation.collect import EvaluationError, list_cases, read_binary_mask
from nnunet_allukan.evaluation.metrics import case_counts
from nnunet_allukan.evaluation.output import save_atomically
from nnunet_allukan.evaluation.tables import paper_method_for

GROUND_TRUTH_COLOUR = (0.0, 0.85, 0.2)
PREDICTION_COLOUR = (1.0, 0.15, 0.15)
# The figure's legend: label -> colour.
LEGEND = {"ground truth (also the contour on each prediction)": GROUND_TRUTH_COLOUR, "prediction": PREDICTION_COLOUR}


@dataclass
class OverlaySource:
    """predictions: method -> folder of <case><file_ending>; labels: folder of the same names; images: folder of
    <case>_0000<file_ending> (nnU-Net imagesTr, RGB in one file) or <case><file_ending>."""

    predictions: Mapping[str, Path]
    labels: Path
    images: Path
    file_ending: str = ".png"


def read_image(images: Path, case: str, file_ending: str) -> np.ndarray:
    """RGB (or grey) image [H, W, 3] / [H, W] as float in [0, 1], for display."""
    candidates = [images / f"{case}_0000{file_ending}", images / f"{case}{file_ending}"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise EvaluationError(f"{candidates[0]}: image of case {case} not found (nor {candidates[1].name}); "
                              "pass the image folder with -i.")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB") if image.mode not in ("L", "I", "I;16", "F") else image)
    except (UnidentifiedImageError, OSError) as error:
        raise EvaluationError(f"{path}: cannot be read as an image ({error}).")
    array = array.astype(np.float64)
    low, high = array.min(), array.max()
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 0.45) -> np.ndarray:
    """Image [H, W(, 3)] in [0, 1] with the mask [H, W] blended in ``colour``; returns [H, W, 3]."""
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    out = rgb.copy()
    out[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return out


def method_title(method: str) -> str:
    """'ALL U-KAN\nnnUNetTrainerAllUKAN' for a trainer of a paper method, else the name itself."""
    paper = paper_method_for(method)
    return f"{paper}\n{method}" if paper and paper != method else method


def choose_cases(ious: Mapping[str, Mapping[str, float]], num_cases: int, select: str) -> list[str]:
    """ious: case -> method -> IoU. 'spread': evenly spaced sorted cases; 'disagreement': largest IoU range."""
    cases = sorted(ious)
    num_cases = min(num_cases, len(cases))
    if select == "disagreement":
        ranked = sorted(cases, key=lambda c: (-(max(ious[c].values()) - min(ious[c].values())), c))
        return sorted(ranked[:num_cases])
    if select != "spread":
        raise EvaluationError(f"--select must be 'spread' or 'disagreement', got {select!r}")
    return [cases[i] for i in np.unique(np.linspace(0, len(cases) - 1, num_cases).round().astype(int))]


def plot_overlays(source: OverlaySource, output_png: Path, cases: Sequence[str] | None = None, num_cases: int = 4,
                  select: str = "spread", style: str = "fill") -> list[str]:
    """Write the figure; returns the cases shown. Every method must have predicted every shown case."""
    import matplotlib.pyplot as plt

    figure, shown = overlay_figure(source, cases, num_cases, select, style)
    try:
        save_atomically(Path(output_png), lambda p: figure.savefig(p, dpi=120))
    finally:
        plt.close(figure)
    return shown


def overlay_figure(source: OverlaySource, cases: Sequence[str] | None = None, num_cases: int = 4,
                   select: str = "spread", style: str = "fill"):
    """The figure of :func:`plot_overlays` (the caller closes it) and the cases it shows."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not source.predictions:
        raise EvaluationError("no methods given.")
    if num_cases < 1:
        raise EvaluationError(f"--num-cases must be >= 1, got {num_cases}")
    available = {method: set(list_cases(Path(folder), source.file_ending))
                 for method, folder in source.predictions.items()}
    common = set.intersection(*available.values())
    if not common:
        raise EvaluationError("the methods have no predicted case in common: " +
                              "; ".join(f"{m}: {source.predictions[m]}" for m in available))
    if cases:
        missing = {m: sorted(set(cases) - found) for m, found in available.items() if set(cases) - found}
        if missing:
            method, names = next(iter(missing.items()))
            raise EvaluationError(f"{source.predictions[method]}: no prediction of case(s) {', '.join(names)}.")
    masks: dict[str, dict[str, np.ndarray]] = {}
    ground_truth: dict[str, np.ndarray] = {}
    ious: dict[str, dict[str, float]] = {}
    candidates = list(cases) if cases else sorted(common)
    for case in candidates:
        ground_truth[case] = read_binary_mask(source.labels / f"{case}{source.file_ending}")
        masks[case], ious[case] = {}, {}
        for method, folder in source.predictions.items():
            prediction = read_binary_mask(Path(folder) / f"{case}{source.file_ending}")
            if prediction.shape != ground_truth[case].shape:
                raise EvaluationError(f"{Path(folder) / (case + source.file_ending)}: shape {prediction.shape} differs "
                                      f"from the ground truth {ground_truth[case].shape}.")
            masks[case][method] = prediction
            ious[case][method] = case_counts(prediction, ground_truth[case]).iou
    shown = list(cases) if cases else choose_cases(ious, num_cases, select)
    methods = list(source.predictions)
    columns = 2 + len(methods)
    figure, axes = plt.subplots(len(shown), columns, figsize=(2.4 * columns, 2.8 * len(shown) + 0.4), squeeze=False,
                                layout="constrained")
    for row, case in enumerate(shown):
        image = read_image(source.images, case, source.file_ending)
        if image.shape[:2] != ground_truth[case].shape:
            raise EvaluationError(f"image of case {case} is {image.shape[:2]}, its label {ground_truth[case].shape}.")
        panels = [("image", image, None, None), ("ground truth", image, ground_truth[case], GROUND_TRUTH_COLOUR)]
        panels += [(f"{method_title(m)}\nIoU {100 * ious[case][m]:.1f}%", image, masks[case][m], PREDICTION_COLOUR)
                   for m in methods]
        for column, (label, picture, mask, colour) in enumerate(panels):
            axis = axes[row, column]
            if mask is None:
                axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            elif style == "fill":
                axis.imshow(overlay(picture, mask, colour))
            else:
                axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
                if mask.any() and not mask.all():
                    axis.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
            if column >= 2 and ground_truth[case].any() and not ground_truth[case].all():
                axis.contour(ground_truth[case].astype(float), levels=[0.5], colors=[GROUND_TRUTH_COLOUR],
                             linewidths=0.9)
            axis.set_title(label if row == 0 or column >= 2 else "", fontsize=7)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(case, fontsize=8)
    figure.legend(handles=[Patch(facecolor=colour, label=label) for label, colour in LEGEND.items()],
                  loc="outside upper center", ncols=len(LEGEND), fontsize=8, frameon=False)
    return figure, shown
