"""Find and read validation predictions and ground truth (nnU-Net result folders or plain folders).

nnU-Net layout (2D PNG datasets):
    $nnUNet_results/DatasetXXX_NAME/<Trainer>__<Plans>__<configuration>/fold_N/validation/<case>.png
    $nnUNet_preprocessed/DatasetXXX_NAME/gt_segmentations/<case>.png
    $nnUNet_preprocessed/DatasetXXX_NAME/splits_final.json   (list of {"train": [...], "val": [...]})
    $nnUNet_raw/DatasetXXX_NAME/imagesTr/<case>_0000.png
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2 import paths as nnunet_paths
from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets, maybe_convert_to_dataset_name
from nnunetv2.utilities.file_path_utilities import get_output_folder
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from nnunet_allukan.evaluation.metrics import CaseCounts, NonBinaryMaskError, binarize, case_counts


class EvaluationError(RuntimeError):
    """Bad input for the evaluation (missing folder, fold, case, corrupt file...). The message names the
    file and the fix; console commands print it and exit non-zero."""


NNUNET_FOLDERS = ("nnUNet_results", "nnUNet_preprocessed", "nnUNet_raw")  # the order nnU-Net's messages use


def env_folder(variable: str) -> Path:
    """The folder of an nnU-Net environment variable (nnUNet_raw / nnUNet_preprocessed / nnUNet_results), from
    nnunetv2.paths (which reads the environment on every use), an unset one as an EvaluationError."""
    try:
        value = os.fspath(getattr(nnunet_paths, variable))
    except RuntimeError:  # nnunetv2.paths: "<variable> is not defined. ..."
        value = None
    if not value:
        raise EvaluationError(f"{variable} is not set. Export it (see nnU-Net's documentation/setting_up_paths.md).")
    return Path(value)


def _set_folders() -> list[tuple[str, str]]:
    """(variable, folder) of the nnUNet_* variables that name an existing folder (nnunetv2.paths)."""
    roots = [(variable, getattr(nnunet_paths, variable).get()) for variable in NNUNET_FOLDERS]
    return [(variable, root) for variable, root in roots if root and os.path.isdir(root)]


def resolve_dataset_name(dataset: str) -> str:
    """'601' or 'Dataset601_BUSI' -> 'Dataset601_BUSI': nnU-Net's maybe_convert_to_dataset_name, with its errors
    as EvaluationErrors naming the dataset and the fix.

    A name must also exist in one of the nnUNet_* folders (nnU-Net passes names through unchecked), so that a
    typo reads as a missing dataset rather than as a missing trainer further on.
    """
    roots = _set_folders()
    searched = "$nnUNet_results / $nnUNet_preprocessed / $nnUNet_raw"
    if dataset.startswith("Dataset"):
        # nnU-Net has no check for a name: it only checks ids (find_candidate_datasets)
        if not any(os.path.isdir(os.path.join(root, dataset)) for _, root in roots):
            raise EvaluationError(
                f"-d {dataset}: no folder of that name in {searched} "
                f"({', '.join(f'{v}={r}' for v, r in roots) or 'none of them is set to an existing folder'}). "
                "Check the dataset name (or pass its id, e.g. -d 601) and the environment variables.")
        return dataset
    try:
        return str(maybe_convert_to_dataset_name(dataset))
    except ValueError:  # not an integer
        raise EvaluationError(
            f"-d {dataset!r}: give a dataset id (e.g. 601) or a name (e.g. Dataset601_BUSI).") from None
    except RuntimeError:  # "Could not find a dataset with the ID ..." / "More than one dataset name found ..."
        dataset_id = int(dataset)
        if dataset_id < 0:  # nnU-Net looked for "Dataset-05*"
            raise EvaluationError(f"-d {dataset}: dataset ids are non-negative integers (e.g. 601).") from None
        names = [str(name) for name in find_candidate_datasets(dataset_id)]
        found = "none" if not names else ", ".join(sorted(names))
        raise EvaluationError(
            f"-d {dataset}: expected exactly one folder named Dataset{dataset_id:03d}_* in {searched}, found "
            f"{found}. Check the environment variables and the dataset id."
        ) from None


@contextmanager
def reported_read_warnings(path: Path):
    """Pillow's warnings while reading ``path`` (e.g. 'Corrupt EXIF data') as one line naming the file,
    instead of a raw warning with a source line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            messages = sorted({" ".join(str(w.message).split()) for w in caught})
            if messages:
                tqdm.write(f"Warning: {path}: {'; '.join(messages)[:200]} (pixels read)", file=sys.stderr)


def read_label_image(path: Path) -> np.ndarray:
    """A 2D label map from an image file (PNG/BMP/TIF), as an integer array [H, W]."""
    try:
        with reported_read_warnings(path), Image.open(path) as image:
            array = np.asarray(image)
    except FileNotFoundError:
        raise EvaluationError(f"{path}: file not found.")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise EvaluationError(f"{path}: cannot be read as an image ({error}). Replace the corrupt file.")
    if array.ndim == 3 and array.shape[-1] in (3, 4) and np.all(array[..., :3] == array[..., :1]):
        array = array[..., 0]  # grey stored as RGB(A): all colour channels equal
    if array.ndim != 2:
        raise EvaluationError(f"{path}: expected a single-channel 2D label map, got an array of shape {array.shape}.")
    return array


def read_binary_mask(path: Path) -> np.ndarray:
    """Boolean foreground [H, W] of a binary label file; clear error if it is not binary."""
    try:
        return binarize(read_label_image(path), what=str(path))
    except NonBinaryMaskError as error:
        raise EvaluationError(str(error))


def read_json(path: Path):
    try:
        return load_json(str(path))
    except FileNotFoundError:
        raise EvaluationError(f"{path}: file not found.")
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path}: not valid JSON ({error}).")


def list_cases(folder: Path, file_ending: str) -> list[str]:
    """Sorted case ids of the files ``<case><file_ending>`` in ``folder``."""
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: folder not found.")
    return sorted(p.name[: -len(file_ending)] for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(file_ending))


def load_split_val_lists(splits_file: Path) -> list[list[str]]:
    """Validation case lists of splits_final.json, in file order (the trainers store train_test_split's
    output order there, which is the reference loader's order). The structure is checked: a list of
    {"train": [case ids], "val": [case ids]}."""
    splits = read_json(splits_file)
    fix = ("An nnU-Net split file is a list with one {\"train\": [case ids], \"val\": [case ids]} per fold; "
           "regenerate it (e.g. copy paper_splits.json of the converted dataset) or correct it.")
    if not isinstance(splits, list) or not splits:
        raise EvaluationError(f"{splits_file}: holds {_json_kind(splits)}, not a list of splits. {fix}")
    val_lists = []
    for index, split in enumerate(splits):
        if not isinstance(split, dict):
            raise EvaluationError(f"{splits_file}: split {index} is {_json_kind(split)}, not an object. {fix}")
        if "val" not in split:
            raise EvaluationError(f"{splits_file}: split {index} has no \"val\" entry (keys: {sorted(split)}). {fix}")
        for key in ("train", "val"):
            if key not in split:
                continue
            value = split[key]
            if not isinstance(value, list):
                raise EvaluationError(f"{splits_file}: split {index}: \"{key}\" is {_json_kind(value)}, not a list of "
                                      f"case ids. {fix}")
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                raise EvaluationError(f"{splits_file}: split {index}: \"{key}\" holds {_json_kind(bad[0])} among its "
                                      f"case ids; case ids are strings (e.g. \"benign_0001\"). {fix}")
        if not split["val"]:
            raise EvaluationError(f"{splits_file}: split {index}: \"val\" is an empty list. {fix}")
        repeated = sorted({c for c in split["val"] if split["val"].count(c) > 1})
        if repeated:
            raise EvaluationError(f"{splits_file}: split {index}: \"val\" lists {repeated[:5]} more than once. {fix}")
        val_lists.append(list(split["val"]))
    return val_lists


def _json_kind(value) -> str:
    """'the number 5', 'the string "cvc_0001"', ...: what a JSON value is, for messages."""
    if isinstance(value, bool) or value is None:
        return f"the value {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)[:60]}"
    if isinstance(value, list):
        return "an empty list" if not value else f"a list of {len(value)}"
    return "an object"


def dataset_file_ending(dataset_name: str, default: str = ".png") -> str:
    """file_ending from dataset.json in $nnUNet_preprocessed or $nnUNet_raw (default '.png')."""
    for variable in ("nnUNet_preprocessed", "nnUNet_raw"):
        root = getattr(nnunet_paths, variable).get()
        if root:
            candidate = Path(root) / dataset_name / "dataset.json"
            if candidate.is_file():
                return read_json(candidate).get("file_ending", default)
    return default


def nnunet_model_folder(dataset_name: str, trainer: str, plans: str, configuration: str,
                        fold: int | None = None) -> Path:
    """$nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[/fold_N]: nnU-Net's get_output_folder, an
    unset nnUNet_results as an EvaluationError."""
    env_folder("nnUNet_results")  # the clear message; get_output_folder would raise a RuntimeError
    return Path(get_output_folder(dataset_name, trainer, plans, configuration, fold))


@dataclass
class FoldPredictions:
    """Where the predictions of one fold of one method lie and what is expected there."""

    method: str
    fold: int
    prediction_folder: Path
    expected_cases: list[str] | None = None  # val list of the split (loader order); None: no split known
    splits_file: Path | None = None
    progress_png: Path | None = None  # nnU-Net's own training curves, referenced, not redrawn


@dataclass
class FoldCounts:
    method: str
    fold: int
    prediction_folder: Path
    split_order: list[str] | None
    counts: dict[str, CaseCounts] = field(default_factory=dict)

    @property
    def cases(self) -> list[str]:
        return sorted(self.counts)


def check_fold_cases(fold: FoldPredictions, found: Sequence[str]) -> None:
    """Cases from another split, or missing cases, are errors: they would compare different validation sets.
    Extra cases are reported first: they show that the fold was trained on another split."""
    if fold.expected_cases is None:
        return
    expected, present = set(fold.expected_cases), set(found)
    missing = sorted(expected - present)
    extra = sorted(present - expected)
    if extra:
        raise EvaluationError(
            f"{fold.prediction_folder}: holds {len(extra)} predictions of cases that are not in the validation set of "
            f"fold {fold.fold} in {fold.splits_file} (e.g. {', '.join(extra[:5])}): this fold was trained on another "
            "split (e.g. nnU-Net's default 5-fold split), or stale predictions were left there. Retrain it on "
            "the paper's splits, or remove the stray files."
        )
    if missing:
        raise EvaluationError(
            f"{fold.prediction_folder}: {len(missing)} of the {len(expected)} validation cases of fold {fold.fold} "
            f"(from {fold.splits_file}) have no prediction (e.g. {', '.join(missing[:5])}). The validation did not "
            f"finish: rerun `nnUNetv2_train ... {fold.fold} --val` for {fold.method}."
        )

def count_fold(fold: FoldPredictions, labels_folder: Path, file_ending: str) -> FoldCounts:
    """Pixel counts of every case of one fold (reads predictions and ground truth)."""
    if not fold.prediction_folder.is_dir():
        raise EvaluationError(
            f"{fold.prediction_folder}: folder not found: fold {fold.fold} of {fold.method} has no validation "
            "predictions. Train that fold (nnUNetv2_train ... -tr TRAINER) or run its validation (--val)."
        )
    cases = list_cases(fold.prediction_folder, file_ending)
    if not cases:
        raise EvaluationError(f"{fold.prediction_folder}: no *{file_ending} predictions found.")
    check_fold_cases(fold, cases)
    result = FoldCounts(fold.method, fold.fold, fold.prediction_folder, fold.expected_cases)
    for case in tqdm(cases, desc=f"{fold.method} fold {fold.fold}", unit="case", leave=False):
        label_file = labels_folder / f"{case}{file_ending}"
        if not label_file.is_file():
            raise EvaluationError(
                f"{label_file}: ground truth of case {case} not found (predicted in {fold.prediction_folder}). "
                "Check that predictions and labels belong to the same dataset."
            )
        prediction = read_binary_mask(fold.prediction_folder / f"{case}{file_ending}")
        target = read_binary_mask(label_file)
        if prediction.shape != target.shape:
            raise EvaluationError(
                f"{fold.prediction_folder / (case + file_ending)}: shape {prediction.shape} differs from the ground "
                f"truth {label_file} {target.shape}. Predictions must be at the label resolution."
            )
        result.counts[case] = case_counts(prediction, target, what=case)
    return result


ALLUKAN_SPLITS_FILE = "splits_allukan_paper.json"  # written by the nnunet_allukan trainers into the model folder


def trainer_splits_file(dataset_name: str, model_folder: Path) -> Path | None:
    """The splits file a trainer used: the nnunet_allukan trainers copy theirs (the paper's seeded splits) into the
    model folder as splits_allukan_paper.json; other trainers (nnU-Net's nnUNetTrainer) read
    $nnUNet_preprocessed/<dataset>/splits_final.json. None if neither exists."""
    own = model_folder / ALLUKAN_SPLITS_FILE
    if own.is_file():
        return own
    default = env_folder("nnUNet_preprocessed") / dataset_name / "splits_final.json"
    return default if default.is_file() else None


def nnunet_folds(dataset_name: str, trainers: Sequence[str], plans: str, configuration: str,
                 folds: Sequence[int]) -> list[FoldPredictions]:
    """FoldPredictions of every trainer and fold in $nnUNet_results, with the expected cases (in loader order)
    from the splits file that trainer used (see trainer_splits_file)."""
    result = []
    for trainer in trainers:
        model_folder = nnunet_model_folder(dataset_name, trainer, plans, configuration)
        if not model_folder.is_dir():
            raise EvaluationError(
                f"{model_folder}: not found: no results of trainer {trainer} with plans {plans} and configuration "
                f"{configuration}. Check -tr / -p / -c, or train it first."
            )
        splits_file = trainer_splits_file(dataset_name, model_folder)
        val_lists = load_split_val_lists(splits_file) if splits_file is not None else None
        for fold in folds:
            if val_lists is not None and fold >= len(val_lists):
                raise EvaluationError(f"{splits_file}: has {len(val_lists)} splits, fold {fold} was requested.")
            fold_folder = model_folder / f"fold_{fold}"
            if not fold_folder.is_dir():
                raise EvaluationError(f"{fold_folder}: fold {fold} of {trainer} is missing. Train it: "
                                      f"nnUNetv2_train {dataset_name} {configuration} {fold} -tr {trainer} -p {plans}")
            progress = fold_folder / "progress.png"
            result.append(FoldPredictions(
                method=trainer, fold=fold, prediction_folder=fold_folder / "validation",
                expected_cases=None if val_lists is None else val_lists[fold], splits_file=splits_file,
                progress_png=progress if progress.is_file() else None))
    return result


def folder_folds(predictions: Sequence[tuple[str, Sequence[str]]],
                 splits_file: Path | None) -> list[FoldPredictions]:
    """FoldPredictions for plain folders: predictions = [(method name, [fold 0 folder, fold 1 folder, ...])]."""
    val_lists = load_split_val_lists(splits_file) if splits_file is not None else None
    result = []
    for method, folders in predictions:
        if val_lists is not None and len(folders) > len(val_lists):
            raise EvaluationError(f"{splits_file}: has {len(val_lists)} splits, {method} has {len(folders)} folders.")
        for fold, folder in enumerate(folders):
            result.append(FoldPredictions(method=method, fold=fold, prediction_folder=Path(folder),
                                          expected_cases=None if val_lists is None else val_lists[fold],
                                          splits_file=splits_file))
    return result


def check_same_cases_across_methods(fold_counts: Sequence[FoldCounts]) -> None:
    """Every method must be evaluated on the same cases in a given fold (a fair comparison)."""
    by_fold: dict[int, FoldCounts] = {}
    for fc in fold_counts:
        first = by_fold.setdefault(fc.fold, fc)
        if set(first.counts) != set(fc.counts):
            only_first = sorted(set(first.counts) - set(fc.counts))
            only_this = sorted(set(fc.counts) - set(first.counts))
            raise EvaluationError(
                f"fold {fc.fold}: {first.method} ({first.prediction_folder}) and {fc.method} ({fc.prediction_folder}) "
                f"were validated on different cases (only in the first: {only_first[:5]}, only in the second: "
                f"{only_this[:5]}). Train every method on the same splits: for nnU-Net's nnUNetTrainer copy the "
                "paper's splits (paper_splits.json of the converted dataset, or splits_allukan_paper.json) to "
                "$nnUNet_preprocessed/<dataset>/splits_final.json before training it."
            )
