"""CVC-ClinicDB (Bernal et al. 2015) as distributed.

Layout: a folder holding ``Original/1.tif .. 612.tif`` (384x288 colonoscopy frames; Pillow cannot
read these TIFFs, tifffile can) and ``Ground Truth/1.tif .. 612.tif`` (masks; 138 have soft edges,
thresholded at 128). The PNG redistribution has the same folder names, with 3-channel masks.

Case ids: ``cvc_0001`` for ``1.tif`` (non-numeric names: ``cvc_<sanitised stem>``).
"""

from __future__ import annotations

from pathlib import Path

from dataset_conversion.errors import raise_problems
from dataset_conversion.sources import (CaseSource, DatasetInfo, locate_source_folder, pair_images_with_masks,
                                        sanitize_id, visible_entries)
from nnunet_allukan.paper import INPUT_SIZES

# The dataset as the writer and the command describe it (the three converters fill the same fields).
INFO = DatasetInfo(
    key="cvc",
    name="CVCClinicDB",
    default_id=603,
    label_name="polyp",
    default_size=INPUT_SIZES["cvc"],
    source_description="the folder holding Original/ and 'Ground Truth/' (TIF or PNG redistribution)",
    description="Colonoscopy frames (31 sequences), polyp segmentation; soft mask edges thresholded",
    reference="Bernal J et al. WM-DOVA maps for accurate polyp highlighting in colonoscopy: Validation vs. "
              "saliency maps from physicians. Computerized Medical Imaging and Graphics 43 (2015) 99-111",
    licence="see CVC-ClinicDB's terms of use (research use, cite the reference)",
)

IMAGE_FOLDER = "Original"
MASK_FOLDER = "Ground Truth"
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")


def looks_like_cvc_folder(folder: Path) -> bool:
    return (folder / IMAGE_FOLDER).is_dir() and (folder / MASK_FOLDER).is_dir()


def find_source(source: Path | str) -> Path:
    """The folder holding ``Original/`` and ``Ground Truth/``, given it or a parent of it."""
    return locate_source_folder(source, looks_like_cvc_folder, INFO.source_description)


def case_id_for(stem: str) -> str:
    """``12`` -> ``cvc_0012``; non-numeric stems -> ``cvc_<sanitised stem>``."""
    return f"cvc_{int(stem):04d}" if stem.isdigit() else f"cvc_{sanitize_id(stem)}"


def _files_by_stem(folder: Path, problems: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in visible_entries(folder):
        if path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(
                f"unexpected file {path}: expected images ({', '.join(IMAGE_EXTENSIONS)}); move it out of {folder}"
            )
        elif path.stem in files:
            problems.append(f"duplicate files {files[path.stem]} and {path}; keep one of them")
        else:
            files[path.stem] = path
    return files


def collect_cases(folder: Path, include_normal: bool = False,
                  problems: list[str] | None = None) -> tuple[list[CaseSource], list[dict]]:
    """Pair ``Original/<n>.*`` with ``Ground Truth/<n>.*``. Returns (cases, excluded=[]).

    Unpaired or unexpected files are appended to ``problems`` (raised together at the end without it).
    """
    found: list[str] = [] if problems is None else problems
    images = _files_by_stem(folder / IMAGE_FOLDER, found)
    masks = _files_by_stem(folder / MASK_FOLDER, found)
    pairs = pair_images_with_masks(
        images, {stem: (mask,) for stem, mask in masks.items()}, found,
        expected_image=lambda stem, mask: folder / IMAGE_FOLDER / (stem + mask.suffix),
        expected_mask=lambda stem, image: folder / MASK_FOLDER / (stem + image.suffix))
    cases = [CaseSource(case_id=case_id_for(stem), original_id=stem, image=image, masks=tuple(mask),
                        mask_kind="binary") for stem, image, mask in pairs]
    if problems is None:
        raise_problems(found)
    return cases, []
