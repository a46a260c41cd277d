"""Checks of the figures the commands write: the PNG is the saved figure, at its size, and not blank."""
from pathlib import Path

import numpy as np
from PIL import Image


def assert_png_of(png: Path, figure, dpi: int) -> np.ndarray:
    """The PNG is the figure at its size and shows something: returns its RGB pixels."""
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    width, height = figure.get_size_inches() * dpi
    assert abs(pixels.shape[1] - width) <= 1 and abs(pixels.shape[0] - height) <= 1, (pixels.shape, width, height)
    drawn = (pixels < 235).any(-1)
    assert 0.02 < drawn.mean() < 0.98, drawn.mean()  # neither blank nor a solid block
    return pixels
