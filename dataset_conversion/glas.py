"""GlaS (MICCAI 2015 Gland Segmentation challenge, Warwick QU) as distributed.

Layout: ``Warwick QU Dataset (Released 2016_07_08)/`` with ``train_1.bmp`` .. ``train_85.bmp``,
``testA_1.bmp`` .. ``testA_60.bmp``, ``testB_1.bmp`` .. ``testB_20.bmp``, each with ``<name>_anno.bmp``
(an instance label map: 0 background, 1..N glands, binarised > 0), and ``Grade.csv``. All 165 images
are pooled (the paper splits them 80/20 itself).

Case ids: the image name (``train_1``, ``testA_12``), sanitised if it holds other characters.
"""

from __future__ import annotations

from pathlib import Path

from dataset_conversion.errors import raise_problems
from dataset_conversion.sources import (CaseSource, DatasetInfo, locate_source_folder, pair_images_with_masks,
                                        sanitize_id, visible_entries)
from nnunet_allukan.paper import INPUT_SIZES

# The dataset as the writer and the command describe it (the three converters fill the same fields).
INFO = DatasetInfo(
    key="glas",
    name="GlaS",
    default_id=602,
    label_name="gland",
    default_size=INPUT_SIZES["glas"],
    source_description="the folder 'Warwick QU Dataset (Released 2016_07_08)/' (holding train_1.bmp, "
                       "train_1_anno.bmp, ...)",
    description="Colon histology (H&E), gland segmentation; train, testA and testB pooled; "
                "instance annotations binarised",
    reference="Sirinukunwattana K et al. Gland segmentation in colon histology images: The GlaS challenge "
              "contest. Medical Image Analysis 35 (2017) 489-502",
    licence="see the GlaS challenge's terms of use (research use)",
)

ANNOTATION_SUFFIX = "_anno"
IMAGE_EXTENSION = ".bmp"
# Files of the distribution that are not images
KNOWN_OTHER_FILES = {".csv", ".txt", ".pdf", ".md", ".xlsx", ".xls"}


def looks_like_glas_folder(folder: Path) -> bool:
    return any(folder.glob(f"*{ANNOTATION_SUFFIX}{IMAGE_EXTENSION}"))


def find_source(source: Path | str) -> Path:
    """The Warwick QU folder given it or a parent of it."""
    return locate_source_folder(source, looks_like_glas_folder, INFO.source_description)


def collect_cases(folder: Path, include_normal: bool = False,
                  problems: list[str] | None = None) -> tuple[list[CaseSource], list[dict]]:
    """Pair ``<name>.bmp`` with ``<name>_anno.bmp``. Returns (cases, excluded=[]).

    Unpaired or unexpected files are appended to ``problems`` (raised together at the end without it).
    """
    found: list[str] = [] if problems is None else problems
    images: dict[str, Path] = {}
    annotations: dict[str, Path] = {}
    for path in visible_entries(folder):
        if path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix in KNOWN_OTHER_FILES:
            continue
        if suffix != IMAGE_EXTENSION:
            found.append(
                f"unexpected file {path}: GlaS images and annotations are .bmp files; move it out of the folder"
            )
            continue
        is_annotation = path.stem.endswith(ANNOTATION_SUFFIX)
        group = annotations if is_annotation else images
        stem = path.stem[: -len(ANNOTATION_SUFFIX)] if is_annotation else path.stem
        if stem in group:
            found.append(f"duplicate files {group[stem]} and {path}; remove one of them")
            continue
        group[stem] = path
    pairs = pair_images_with_masks(
        images, {stem: (annotation,) for stem, annotation in annotations.items()}, found,
        expected_image=lambda stem, _: folder / (stem + IMAGE_EXTENSION),
        expected_mask=lambda stem, _: folder / (stem + ANNOTATION_SUFFIX + IMAGE_EXTENSION), mask_word="annotation")
    cases = [CaseSource(case_id=sanitize_id(stem), original_id=stem, image=image, masks=tuple(annotation),
                        mask_kind="instance") for stem, image, annotation in pairs]
    if problems is None:
        raise_problems(found)
    return cases, []
