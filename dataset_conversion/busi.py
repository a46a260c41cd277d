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

from dataset_conversion.common import CaseSource, ConversionError, DatasetInfo, locate_source_folder, \
    sanitize_id, visible_entries

INFO = DatasetInfo(
    key="busi",
    name="BUSI",
    default_id=601,
    label_name="tumor",
    default_size=256,
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


def _mask_sort_key(path: Path) -> tuple[int, str]:
    index = _MASK_STEM.match(path.stem).group("index")
    return (-1 if index is None else int(index), path.name)


def collect_class(class_folder: Path) -> list[CaseSource]:
    """Pair every image of one class folder with all of its masks."""
    class_name = class_folder.name
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    for path in visible_entries(class_folder):
        if path.is_dir():
            continue
        if path.suffix.lower() != ".png":
            raise ConversionError(
                f"unexpected file {path}: BUSI images and masks are .png files; move it out of the dataset folder"
            )
        match = _MASK_STEM.match(path.stem)
        if match:
            masks.setdefault(match.group("image"), []).append(path)
        else:
            if path.stem in images:
                raise ConversionError(
                    f"duplicate images {images[path.stem]} and {path} (same name, different extension case); "
                    "remove one of them"
                )
            images[path.stem] = path
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise ConversionError(
            f"mask {masks[orphans[0]][0]} has no image (expected {class_folder / (orphans[0] + '.png')}); "
            f"{len(orphans)} orphan mask group(s) in {class_folder}. Restore the image or remove the mask"
        )
    cases = []
    for stem, image in sorted(images.items()):
        if stem not in masks:
            raise ConversionError(
                f"image {image} has no mask (expected {class_folder / (stem + '_mask.png')}); "
                "restore the mask from the dataset archive or remove the image"
            )
        cases.append(CaseSource(
            case_id=case_id_for(class_name, stem),
            original_id=stem,
            image=image,
            masks=tuple(sorted(masks[stem], key=_mask_sort_key)),
            mask_kind="binary",
        ))
    return cases


def collect_cases(folder: Path, include_normal: bool = False) -> tuple[list[CaseSource], list[dict]]:
    """All cases of a ``Dataset_BUSI_with_GT`` folder.

    Returns:
        (cases, excluded) where excluded lists the normal images left out (``{"image": name, "reason": ...}``).
    """
    cases: list[CaseSource] = []
    for class_name in CLASSES:
        cases += collect_class(folder / class_name)
    excluded: list[dict] = []
    normal_folder = folder / NORMAL_CLASS
    if include_normal:
        if not normal_folder.is_dir():
            raise ConversionError(f"--include-normal was given but {normal_folder} does not exist")
        cases += collect_class(normal_folder)
    elif normal_folder.is_dir():
        for path in visible_entries(normal_folder):
            if path.is_file() and not _MASK_STEM.match(path.stem):
                excluded.append({
                    "image": f"{NORMAL_CLASS}/{path.name}",
                    "reason": "normal image (no lesion), excluded as in the paper; --include-normal keeps it",
                })
    return cases, excluded
