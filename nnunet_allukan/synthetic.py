"""Small fake datasets in the three distributed layouts, for tests and demos.

Each generator writes the folder tree exactly as the real dataset is distributed (names, file
formats, mask conventions) with an easy-to-segment object, so a network can learn it in a few
iterations:

- :func:`make_synthetic_busi`: speckled grey "ultrasound" with dark elliptical lesions; some images
  have several lesions, one mask file each (``_mask.png``, ``_mask_1.png``, ...); one mask stored as
  3-channel RGB; non-square sizes; normal images with empty masks.
- :func:`make_synthetic_glas`: pink "H&E" with purple glands; ``.bmp`` images, ``_anno.bmp``
  instance maps (0 background, 1..N glands); ``Grade.csv``.
- :func:`make_synthetic_cvc`: reddish "colonoscopy" frames with a bright polyp; TIF layout
  (images as 3-sample min-is-black TIFFs that Pillow cannot read, like the real ones) or PNG layout
  (3-channel masks); every other mask has soft edges.

With ``mask_artifacts=True`` (BUSI, CVC) the masks hold what real copies hold (compression noise, stray
mid-grey pixels, faint strips, patches and halos), made by the helpers that turn any 0/255 mask into one as users
meet it: :func:`resample_mask`, :func:`jpeg_round_trip`, :func:`add_faint_strip`, :func:`add_faint_patch`,
:func:`add_faint_halo`, :func:`add_stray_pixels`.

All are deterministic for a given ``seed``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

BUSI_FOLDER = "Dataset_BUSI_with_GT"
GLAS_FOLDER = "Warwick QU Dataset (Released 2016_07_08)"


def _ellipse(height: int, width: int, center: tuple[float, float], radii: tuple[float, float],
             angle: float = 0.0) -> np.ndarray:
    """Signed normalised radius of an ellipse: ``< 1`` inside. Returns float ``[H, W]``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    return np.sqrt((u / radii[1]) ** 2 + (v / radii[0]) ** 2)


def _random_ellipse(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    radii = (rng.uniform(0.6, 1.0) * scale * height, rng.uniform(0.6, 1.0) * scale * width)
    center = (rng.uniform(radii[0] + 1, height - radii[0] - 1), rng.uniform(radii[1] + 1, width - radii[1] - 1))
    return _ellipse(height, width, center, radii, rng.uniform(0, np.pi))


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def make_synthetic_busi(
    folder: Path | str,
    n_benign: int = 4,
    n_malignant: int = 3,
    n_normal: int = 2,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = ((96, 80), (80, 96), (104, 88), (64, 64)),
    mask_artifacts: bool = False,
) -> Path:
    """Write ``folder/Dataset_BUSI_with_GT/{benign,malignant,normal}/`` and return that folder.

    Args:
        folder: parent folder (created).
        n_benign, n_malignant, n_normal: images per class (numbered ``(1)`` .. ``(n)``).
        seed: random seed.
        sizes: (width, height) cycled over the images.
        mask_artifacts: masks as in re-encoded copies of BUSI: every mask a 3-channel JPEG round trip
            (compression noise), and images numbered 3, 7, 11, ... with two stray mid-grey pixels (210, 78)
            3 and 5 pixels from the lesion in their first mask.

    Case ``benign (2)`` (if present) has two lesions in ``_mask.png`` and ``_mask_1.png``; ``benign (3)``
    three (up to ``_mask_2.png``, stored as RGB); ``malignant (2)`` two.
    """
    rng = np.random.default_rng(seed)
    root = Path(folder) / BUSI_FOLDER
    counts = {"benign": n_benign, "malignant": n_malignant, "normal": n_normal}
    lesions_of = {("benign", 2): 2, ("benign", 3): 3, ("malignant", 2): 2}
    index = 0
    for class_name, count in counts.items():
        class_folder = root / class_name
        class_folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, count + 1):
            width, height = sizes[index % len(sizes)]
            index += 1
            image = rng.normal(130.0, 22.0, size=(height, width))  # speckle
            n_lesions = 0 if class_name == "normal" else lesions_of.get((class_name, number), 1)
            masks = []
            for _ in range(n_lesions):
                inside = _random_ellipse(rng, height, width, 0.22 if n_lesions == 1 else 0.14) < 1
                image[inside] = rng.normal(45.0, 10.0, size=int(inside.sum()))  # hypoechoic lesion
                masks.append(inside)
            if not masks:
                masks = [np.zeros((height, width), dtype=bool)]
            stem = f"{class_name} ({number})"
            grey = _to_uint8(image)
            Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(class_folder / f"{stem}.png")
            for k, mask in enumerate(masks):
                suffix = "_mask" if k == 0 else f"_mask_{k}"
                mask_u8 = mask.astype(np.uint8) * 255
                if mask_artifacts:
                    if k == 0 and n_lesions and number % 4 == 3:
                        mask_u8 = add_stray_pixels(mask_u8, (210, 78), 3)
                    mask_u8 = jpeg_round_trip(mask_u8, quality=75, rgb=True)
                elif k == 2:  # the real BUSI holds the occasional 3-channel mask
                    mask_u8 = np.repeat(mask_u8[..., None], 3, axis=-1)
                Image.fromarray(mask_u8).save(class_folder / f"{stem}{suffix}.png")
    return root


# Same-shaped signature as make_synthetic_busi (deliberate: one generator per dataset layout, its own counts).
def make_synthetic_glas(
    folder: Path | str,
    n_train: int = 5,
    n_test_a: int = 3,
    n_test_b: int = 2,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = ((100, 68), (84, 64)),
    glands_per_image: int = 3,
) -> Path:
    """Write ``folder/Warwick QU Dataset (Released 2016_07_08)/`` and return that folder.

    Images ``train_<i>.bmp``/``testA_<i>.bmp``/``testB_<i>.bmp`` (RGB), annotations ``<name>_anno.bmp``
    (8-bit instance maps: 0 background, 1..N glands), ``Grade.csv``. ``sizes`` are (width, height).
    """
    rng = np.random.default_rng(seed)
    root = Path(folder) / GLAS_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    grade_lines = ["name,Patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)"]
    index = 0
    for split, count in (("train", n_train), ("testA", n_test_a), ("testB", n_test_b)):
        for number in range(1, count + 1):
            width, height = sizes[index % len(sizes)]
            index += 1
            image = np.empty((height, width, 3))
            image[...] = (232.0, 182.0, 205.0)  # eosin-pink stroma
            image += rng.normal(0.0, 8.0, size=image.shape)
            instances = np.zeros((height, width), dtype=np.uint8)
            for gland in range(1, glands_per_image + 1):
                inside = (_random_ellipse(rng, height, width, 0.16) < 1) & (instances == 0)
                instances[inside] = gland
                image[inside] = (118.0, 58.0, 142.0) + rng.normal(0.0, 8.0, size=(int(inside.sum()), 3))  # haematoxylin
            name = f"{split}_{number}"
            Image.fromarray(_to_uint8(image)).save(root / f"{name}.bmp")
            Image.fromarray(instances).save(root / f"{name}_anno.bmp")
            grade_lines.append(f"{name},{index},{'benign' if number % 2 else 'malignant'},adenomatous")
    (root / "Grade.csv").write_text("\n".join(grade_lines) + "\n")
    return root


def make_synthetic_cvc(
    folder: Path | str,
    n_cases: int = 6,
    image_format: str = "tif",
    seed: int = 0,
    size: tuple[int, int] = (96, 72),
    mask_artifacts: bool = False,
) -> Path:
    """Write ``folder/{Original,Ground Truth}/{1..n}.<tif|png>`` and return ``folder``.

    ``image_format="tif"``: images as 3-sample min-is-black TIFFs (Pillow cannot read them; tifffile
    can), masks as 8-bit grey TIFFs. ``"png"``: RGB images and 3-channel masks (the PNG
    redistribution). Odd-numbered cases have soft mask edges (a ramp of values across the border; the
    object is the pixels >= 128). ``size`` is (width, height). ``mask_artifacts`` adds what CVC-ClinicDB's
    official masks hold: cases numbered 4, 24, 44, ... (about 30 of 612) a strip of one faint level (6-23,
    1-4 rows high, up to 200 pixels long, 1-10 pixels from the polyp), cases 10, 30, ... a patch of the faint level
    11 next to the polyp (a quarter of the frame's height square: about 5 % of the frame), cases 14, 34, ... a
    continuous-tone faint halo (values 2-20, 6 pixels wide) around the polyp.
    """
    if image_format not in ("tif", "png"):
        raise ValueError(f"image_format must be 'tif' or 'png', got {image_format!r}")
    rng = np.random.default_rng(seed)
    root = Path(folder)
    (root / "Original").mkdir(parents=True, exist_ok=True)
    (root / "Ground Truth").mkdir(parents=True, exist_ok=True)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    vignette = 1.0 - 0.5 * (((yy - height / 2) / height) ** 2 + ((xx - width / 2) / width) ** 2)
    for number in range(1, n_cases + 1):
        radius = _random_ellipse(rng, height, width, 0.25)
        image = np.empty((height, width, 3))
        image[...] = (150.0, 70.0, 60.0)  # mucosa
        image *= vignette[..., None]
        image[radius < 1] = (235.0, 175.0, 150.0)  # bright polyp
        image += rng.normal(0.0, 6.0, size=image.shape)
        if number % 2:
            # soft edge as anti-aliasing makes it: 255 inside, ramping down to 0 over ~2 pixels across
            # the border (distance in pixels = normalised radius over its gradient)
            gradient = np.hypot(*np.gradient(radius))
            mask = _to_uint8(np.clip(0.5 - (radius - 1.0) / gradient / 2.0, 0.0, 1.0) * 255.0)
        else:
            mask = (radius < 1).astype(np.uint8) * 255
            if mask_artifacts and number % 20 == 4:
                mask = add_faint_strip(mask, level=6 + number % 18, rows=1 + number % 4, length=10 + number % 191,
                                       gap=1 + number % 10)
            elif mask_artifacts and number % 20 == 10:
                mask = add_faint_patch(mask, level=11, side=height // 4)
            elif mask_artifacts and number % 20 == 14:
                mask = add_faint_halo(mask, width=6, levels=(2, 20), seed=number)
        rgb = _to_uint8(image)
        if image_format == "tif":
            tifffile.imwrite(root / "Original" / f"{number}.tif", rgb, photometric="minisblack",
                             planarconfig="contig", metadata=None)
            tifffile.imwrite(root / "Ground Truth" / f"{number}.tif", mask, photometric="minisblack", metadata=None)
        else:
            Image.fromarray(rgb).save(root / "Original" / f"{number}.png")
            Image.fromarray(np.repeat(mask[..., None], 3, axis=-1)).save(root / "Ground Truth" / f"{number}.png")
    return root


# ----------------------------------------------------------------------------------------------------
# Masks as users meet them: what resampling, compression and the datasets' own tools do to 0/255 masks
# ----------------------------------------------------------------------------------------------------

RESAMPLING_METHODS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                      "area": Image.Resampling.BOX}


def resample_mask(mask: np.ndarray, factor: float, method: str) -> np.ndarray:
    """A 0/255 ``uint8`` mask resized by ``factor`` (< 1 shrinks) with Pillow's ``method`` ("bilinear",
    "bicubic" or "area"), as image tools resize masks: soft edges, ringing near the outline."""
    height, width = mask.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(mask).resize(size, RESAMPLING_METHODS[method]))


def jpeg_round_trip(mask: np.ndarray, quality: int, rgb: bool = False) -> np.ndarray:
    """``mask`` saved as a JPEG of ``quality`` and read back (grey, or RGB with chroma subsampling as
    re-encoded copies of BUSI hold): compression noise near the outline."""
    buffer = io.BytesIO()
    image = Image.fromarray(mask).convert("RGB" if rgb else "L")
    image.save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB" if rgb else "L"))


def add_faint_strip(mask: np.ndarray, level: int, rows: int, length: int, gap: int) -> np.ndarray:
    """Copy of ``mask`` with a strip of one faint ``level`` (CVC-ClinicDB's official masks hold 6-23),
    ``rows`` high and ``length`` wide, ``gap`` rows above the object's top (below its bottom where the
    frame leaves no room), starting at the object's top-left column."""
    out = mask.copy()
    object_rows, object_cols = np.nonzero(mask >= 128)
    top, bottom, left = object_rows.min(), object_rows.max(), object_cols.min()
    start = top - gap - rows if top - gap - rows >= 0 else bottom + gap + 1
    region = out[start:start + rows, left:left + length]
    region[region == 0] = level
    return out


def add_faint_patch(mask: np.ndarray, level: int, side: int, gap: int = 1) -> np.ndarray:
    """Copy of ``mask`` with a ``side`` x ``side`` patch of one faint ``level`` on the background (CVC-ClinicDB's
    official masks hold such patches, 6-25, up to 8 % of the frame), ``gap`` columns right of the object (left
    of it where the frame leaves no room), level with its top row; clipped to the frame."""
    out = mask.copy()
    object_rows, object_cols = np.nonzero(mask >= 128)
    top, left, right = object_rows.min(), object_cols.min(), object_cols.max()
    start = right + 1 + gap if right + 1 + gap + side <= mask.shape[1] else max(0, left - gap - side)
    region = out[top:top + side, start:start + side]
    region[region == 0] = level
    return out


def add_faint_halo(mask: np.ndarray, width: int, levels: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Copy of ``mask`` with background pixels within ``width`` pixels (8-neighbourhood) of the object set
    to random faint values in ``levels`` (inclusive), a continuous-tone halo like CVC-ClinicDB's."""
    out = mask.copy()
    obj = mask >= 128
    grown = obj.copy()
    for _ in range(width):  # one 8-neighbourhood step each
        rows = grown.copy()
        rows[1:] |= grown[:-1]
        rows[:-1] |= grown[1:]
        grown = rows.copy()
        grown[:, 1:] |= rows[:, :-1]
        grown[:, :-1] |= rows[:, 1:]
    halo = grown & ~obj
    out[halo] = np.random.default_rng(seed).integers(levels[0], levels[1] + 1, size=int(halo.sum()))
    return out


def add_stray_pixels(mask: np.ndarray, values: Sequence[int], distance: int) -> np.ndarray:
    """Copy of ``mask`` with single pixels of ``values`` (mid-grey, as in re-encoded BUSI masks) in the
    background, ``distance``, ``distance + 2``, ... pixels left of the object's leftmost pixel."""
    out = mask.copy()
    object_rows, object_cols = np.nonzero(mask >= 128)
    first = int(np.argmin(object_cols))
    for k, value in enumerate(values):
        out[object_rows[first], object_cols[first] - distance - 2 * k] = value
    return out
