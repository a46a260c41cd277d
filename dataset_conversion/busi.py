"""BUSI (Breast UltraSound Images, Al-Dhabyani et al. 2020) as distributed.

Layout: ``Dataset_BUSI_with_GT/{benign,malignant,normal}/`` with ``benign (1).png`` and its mask(s)
``benign (1)_mask.png``, ``benign (1)_mask_1.png``, ``benign (1)_mask_2.png`` (one file per lesion:
they are united). The paper uses benign + malignant (437 + 210 = 647 cases); the 133 normal images
(empty masks) are excluded unless ``include_normal``.

Case ids: ``benign_0001`` for ``benign (1).png`` (other file names: ``<class>_<sanitised stem>``).
"""

from __future__ import annotations

import re
from pathlib import Path

from dataset_conversion.errors import ConversionError, raise_problems
from dataset_conversion.sources import (CaseSource, DatasetInfo, locate_source_folder, pair_images_with_masks,
                                        sanitize_id, visible_entries)
from nnunet_allukan.paper import INPUT_SIZES

# The dataset as the writer and the command describe it (the three converters fill the same fields).
INFO = DatasetInfo(
    key="busi",
    name="BUSI",
    default_id=601,
    label_name="tumor",
    default_size=INPUT_SIZES["busi"],
    source_description="the folder Dataset_BUSI_with_GT/ (holding benign/, malignant/, normal/) or its parent",
    description="Breast ultrasound images, benign and malignant tumours (normal images optional); "
                "masks of one image united",
    reference="Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
              "Data in Brief 28 (2020) 104863",
    licence="CC BY 4.0 (see the dataset's distribution)",
)

CLASSES = ("benign", "malignant")
NORMAL_CLASS = "normal"
_MASK_STEM = re.compile(r"^(?P<image>.+)_mask(?:_(?P<index>\d+))?$")
_NUMBERED_STEM = re.compile(r"^(?P<cls>[A-Za-z]+) \((?P<number>\d+)\)$")


def looks_like_busi_folder(folder: Path) -> bool:
    return all((folder / c).is_dir() for c in CLASSES)


def find_source(source: Path | str) -> Path:
    """The ``Dataset_BUSI_with_GT`` folder given it or a parent of it."""
    return locate_source_folder(source, looks_like_busi_folder, INFO.source_description)


def case_id_for(class_name: str, stem: str) -> str:
    """``benign (12)`` -> ``benign_0012``; other names -> ``<class>_<sanitised stem>``."""
    match = _NUMBERED_STEM.match(stem)
    if match and match.group("cls").lower() == class_name:
        return f"{class_name}_{int(match.group('number')):04d}"
    return f"{class_name}_{sanitize_id(stem)}"


def _mask_index(path: Path) -> int:
    """0 for ``_mask.png``, N for ``_mask_N.png``."""
    index = _MASK_STEM.match(path.stem).group("index")
    return 0 if index is None else int(index)


def _mask_set_problems(class_folder: Path, stem: str, masks: list[Path]) -> list[str]:
    """A lesion's mask file missing from the numbered set (``_mask_1.png`` without ``_mask.png``, or a gap)
    would silently drop that lesion from the label."""
    indices = sorted(_mask_index(m) for m in masks)
    missing = sorted(set(range(indices[-1] + 1)) - set(indices))
    if not missing:
        return []
    names = [f"{stem}_mask.png" if i == 0 else f"{stem}_mask_{i}.png" for i in missing]
    return [
        f"{class_folder / stem}.png has the masks {[m.name for m in masks]} but not {', '.join(names)}: a lesion's "
        "mask is missing and would be lost. Restore it from the dataset archive (or, if the present files are "
        "all the lesions, rename them to _mask.png, _mask_1.png, ...)"
    ]


def collect_class(class_folder: Path, problems: list[str]) -> list[CaseSource]:
    """Pair every image of one class folder with all of its masks; problems are appended, not raised."""
    class_name = class_folder.name
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    for path in visible_entries(class_folder):
        if path.is_dir():
            continue
        if path.suffix.lower() != ".png":
            problems.append(
                f"unexpected file {path}: BUSI images and masks are .png files; move it out of the dataset folder"
            )
            continue
        match = _MASK_STEM.match(path.stem)
        if match:
            masks.setdefault(match.group("image"), []).append(path)
        elif path.stem in images:
            problems.append(
                f"duplicate images {images[path.stem]} and {path} (same name, different extension case); "
                "remove one of them"
            )
        else:
            images[path.stem] = path
    cases = []
    for stem, image, image_masks in pair_images_with_masks(
            images, masks, problems, expected_image=lambda stem, _: class_folder / (stem + ".png"),
            expected_mask=lambda stem, _: class_folder / (stem + "_mask.png")):
        set_problems = _mask_set_problems(class_folder, stem, image_masks)
        if set_problems:
            problems.extend(set_problems)
            continue
        cases.append(CaseSource(
            case_id=case_id_for(class_name, stem),
            original_id=stem,
            image=image,
            masks=tuple(sorted(image_masks, key=lambda m: (_mask_index(m), m.name))),
            mask_kind="binary",
        ))
    return cases


def collect_cases(folder: Path, include_normal: bool = False,
                  problems: list[str] | None = None) -> tuple[list[CaseSource], list[dict]]:
    """All cases of a ``Dataset_BUSI_with_GT`` folder.

    Args:
        problems: unpaired or unexpected files are appended here (and the other cases returned); without
            it they are raised together at the end.

    Returns:
        (cases, excluded) where excluded lists the normal images left out (``{"image": name, "reason": ...}``).
    """
    found: list[str] = [] if problems is None else problems
    cases: list[CaseSource] = []
    for class_name in CLASSES:
        cases += collect_class(folder / class_name, found)
    excluded: list[dict] = []
    normal_folder = folder / NORMAL_CLASS
    if include_normal:
        if not normal_folder.is_dir():
            raise ConversionError(f"--include-normal was given but {normal_folder} does not exist")
        cases += collect_class(normal_folder, found)
    elif normal_folder.is_dir():
        for path in visible_entries(normal_folder):
            if path.is_file() and not _MASK_STEM.match(path.stem):
                excluded.append({
                    "image": f"{NORMAL_CLASS}/{path.name}",
                    "reason": "normal image (no lesion), excluded as in the paper; --include-normal keeps it",
                })
    if problems is None:
        raise_problems(found)
    return cases, excluded
