"""Finding a dataset as distributed: the folder the user meant, its files without OS clutter, case ids, and
the static description of each supported dataset (:class:`DatasetInfo`) and of each case (:class:`CaseSource`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dataset_conversion.errors import ConversionError

IGNORED_FILE_NAMES = {"Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a supported dataset."""

    key: str  # command-line name, e.g. "busi"
    name: str  # nnU-Net dataset name, e.g. "BUSI" -> Dataset601_BUSI
    default_id: int
    label_name: str  # name of label 1 in dataset.json
    default_size: int  # paper's square input size; --native keeps native resolution
    source_description: str  # what SOURCE_FOLDER should be, for error messages
    description: str
    reference: str
    licence: str


@dataclass(frozen=True)
class CaseSource:
    """One case as found in the distributed folder.

    ``mask_kind`` is "binary" (0/255 masks, possibly soft-edged) or "instance" (0 background,
    1..N objects). Several masks are united (BUSI's ``_mask_1.png`` ... hold further lesions).
    """

    case_id: str
    original_id: str
    image: Path
    masks: tuple[Path, ...]
    mask_kind: str = "binary"


def sanitize_id(text: str) -> str:
    """Readable, file-system- and nnU-Net-safe id: runs of other characters become one underscore."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    if not cleaned:
        raise ConversionError(f"cannot derive a case id from the file name {text!r}; rename the file")
    return cleaned


def pair_images_with_masks(
    images: Mapping[str, Path], masks: Mapping[str, Sequence[Path]], problems: list[str], *,
    expected_image: Callable[[str, Path], Path], expected_mask: Callable[[str, Path], Path], mask_word: str = "mask",
) -> list[tuple[str, Path, Sequence[Path]]]:
    """``(stem, image, masks)`` of every image that has masks, sorted by stem, from the images and masks of a
    folder keyed by the image stem they belong to.

    Masks without an image and images without masks are appended to ``problems``, each naming the file that was
    expected (``expected_image(stem, first mask)``, ``expected_mask(stem, image)``) and what to restore or remove;
    ``mask_word`` is the dataset's word for a mask file (GlaS: "annotation").
    """
    for stem in sorted(set(masks) - set(images)):
        mask = masks[stem][0]
        problems.append(f"{mask_word} {mask} has no image (expected {expected_image(stem, mask)}). Restore the "
                        f"image or remove the {mask_word}")
    pairs = []
    for stem, image in sorted(images.items()):
        if stem in masks:
            pairs.append((stem, image, masks[stem]))
        else:
            problems.append(f"image {image} has no {mask_word} (expected {expected_mask(stem, image)}); restore the "
                            f"{mask_word} from the dataset archive or remove the image")
    return pairs


def visible_entries(folder: Path) -> list[Path]:
    """Sorted entries of ``folder`` without hidden files and OS clutter (``.DS_Store``, ``Thumbs.db``)."""
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_FILE_NAMES
    )


def _readable_subfolders(folder: Path) -> list[Path]:
    try:
        return [c for c in visible_entries(folder) if c.is_dir()]
    except OSError:  # unreadable folder: not where the dataset is
        return []


def locate_source_folder(source: Path | str, looks_right: Callable[[Path], bool], expected: str,
                         max_depth: int = 2) -> Path:
    """Find the dataset folder the user meant.

    Accepts the folder itself, or a parent up to ``max_depth`` levels above it (found and used, when
    unique). A folder *inside* the expected one is refused with the folder to pass instead.

    Args:
        source: what the user passed.
        looks_right: predicate recognising the expected folder.
        expected: human description of the expected folder, used in messages.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ConversionError(f"source folder {source} does not exist; pass {expected}")
    if not source.is_dir():
        raise ConversionError(f"source {source} is not a folder; pass {expected}")
    source = source.resolve()
    try:
        entries = visible_entries(source)
    except OSError as err:
        raise ConversionError(f"cannot list the source folder {source}: {err}") from err
    if not entries:
        raise ConversionError(f"source folder {source} is empty; pass {expected}")
    if looks_right(source):
        return source
    found: list[Path] = []
    level = [source]
    for _ in range(max_depth):
        level = [c for d in level for c in _readable_subfolders(d)]
        found += [d for d in level if looks_right(d)]
    if len(found) == 1:
        print(f"Using the dataset folder {found[0]} found inside {source}")
        return found[0]
    if len(found) > 1:
        listing = "\n  ".join(str(f) for f in found)
        raise ConversionError(f"{source} holds several candidate folders:\n  {listing}\npass the one to convert")
    for parent in list(source.parents)[:max_depth]:
        if looks_right(parent):
            raise ConversionError(f"{source} is a folder inside the dataset; pass its parent {parent} instead")
    raise ConversionError(f"{source} does not look like {expected} (nor does any folder inside it)")


def unique_case_id_problems(cases: Sequence[CaseSource]) -> list[str]:
    """Two source files mapping to one case id (e.g. ``benign (1).png`` and ``benign (01).png``) is a problem."""
    by_id: dict[str, list[CaseSource]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, []).append(case)
    duplicates = {k: v for k, v in by_id.items() if len(v) > 1}
    problems = []
    if duplicates:
        lines = [f"{k}: " + ", ".join(str(c.image) for c in v) for k, v in sorted(duplicates.items())]
        problems.append(
            "duplicate case ids (several images map to the same case):\n    " + "\n    ".join(lines)
            + "\n    remove or rename the duplicate files"
        )
    by_original = Counter(c.original_id for c in cases)
    repeated = sorted(k for k, n in by_original.items() if n > 1)
    if repeated:
        problems.append(f"duplicate original image names {repeated}: remove the duplicate files")
    return problems
