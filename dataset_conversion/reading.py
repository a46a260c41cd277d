"""Reading images and masks: Pillow, or tifffile for the TIFFs Pillow cannot read (CVC-ClinicDB's
``Original/*.tif``); damaged files as a :class:`ConversionError` naming the file; read warnings collected
per file instead of printed as they come."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from dataset_conversion.errors import ConversionError


def _unreadable(path: Path, err: Exception) -> ConversionError:
    return ConversionError(
        f"cannot read {path}: {type(err).__name__}: {err}. The file is damaged, truncated or not an image: "
        "re-extract it from the dataset archive"
    )


def _read_with_tifffile(path: Path) -> np.ndarray:
    try:
        array = np.asarray(tifffile.imread(path))
    except Exception as err:  # tifffile raises many types for damaged files
        raise _unreadable(path, err) from err
    if array.ndim < 2 or array.size == 0:  # tifffile returns an empty array for some corrupt headers
        raise _unreadable(path, ValueError("no image data in the file"))
    return array


def _pillow_array(path: Path, keep_palette_indices: bool) -> np.ndarray | None:
    """Decode with Pillow; None where Pillow cannot identify a TIFF (tifffile takes over)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P" and not keep_palette_indices:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            return np.asarray(im)
    except UnidentifiedImageError as err:
        if path.suffix.lower() in (".tif", ".tiff"):
            # CVC-ClinicDB's Original/*.tif are 3-sample "min-is-black" TIFFs Pillow refuses.
            return None
        raise _unreadable(path, err) from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from err


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB (grey replicated, alpha dropped)."""
    array = _pillow_array(path, keep_palette_indices=False)
    if array is None:
        array = _read_with_tifffile(path)
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = np.moveaxis(array, 0, -1)  # planar TIFF [C, H, W]
    if array.dtype != np.uint8:
        raise ConversionError(f"{path} has pixel type {array.dtype}; expected an 8-bit image")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 2:  # grey + alpha
        array = np.repeat(array[..., :1], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3]
    else:
        raise ConversionError(f"{path} has array shape {array.shape}; expected a 2D grey or RGB image")
    return np.ascontiguousarray(array)


def read_mask_array(path: Path) -> np.ndarray:
    """Read a mask as a 2D integer array ``[H, W]``.

    3-channel masks (BUSI's occasional RGB mask, CVC's PNG redistribution) must have identical
    channels; palette images give their indices (GlaS-like label maps); alpha is ignored.
    """
    array = _pillow_array(path, keep_palette_indices=True)
    if array is None:
        array = _read_with_tifffile(path)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ConversionError(f"mask {path} has pixel type {array.dtype}; expected an integer mask")
    if array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if colour.shape[-1] == 3 and not (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            raise ConversionError(
                f"mask {path} is a colour image (its R, G and B channels differ), not a mask: "
                "is it the image instead of its mask? Replace it with the mask from the dataset archive"
            )
        array = colour[..., 0]
    if array.ndim != 2:
        raise ConversionError(f"mask {path} has array shape {array.shape}; expected a 2D mask")
    return np.ascontiguousarray(array)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextmanager
def captured_read_warnings(sink: list[str]):
    """Pillow's warnings and tifffile's log messages while reading one file go into ``sink``: the command
    prints them as one line per file instead of letting the raw warnings interleave with its output."""
    logger = logging.getLogger("tifffile")
    handler, propagate = _ListHandler(sink), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                sink.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
