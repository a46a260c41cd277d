"""benchmarks/prepare_isbi2012.py on a generated copy of the ISBI 2012 training set (PNG layout and TIFF stacks):
tiles and labels as nnU-Net reads them, folds of whole consecutive slices, and an existing dataset never touched."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "prepare_isbi2012.py"


def _slice(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like slice: grey texture, and a label that is 255 inside cells and 0 on 4-pixel membranes (a grid
    whose lines shift from slice to slice, as sections through a neuropil do)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (size, size), dtype=np.uint8)
    label = np.full((size, size), 255, np.uint8)
    for start in range(seed % 16, size, 32):
        label[start:start + 4, :] = 0
        label[:, start:start + 4] = 0
    image[label == 0] //= 3  # membranes are dark
    return image, label


def _png_copy(folder: Path, n: int = 30) -> Path:
    for sub in ("image", "label"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        image, label = _slice(i)
        Image.fromarray(image).save(folder / "image" / f"{i}.png")
        Image.fromarray(label).save(folder / "label" / f"{i}.png")
    return folder


def _run(source: Path, raw: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "nnUNet_raw": str(raw)}
    return subprocess.run([sys.executable, str(SCRIPT), str(source), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _check_dataset(target: Path, size: int, tile: int) -> None:
    per_slice = (size // tile) ** 2
    dataset = json.loads((target / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "membrane": 1}
    assert dataset["numTraining"] == 30 * per_slice
    labels = sorted((target / "labelsTr").glob("*.png"))
    assert len(labels) == 30 * per_slice == len(list((target / "imagesTr").glob("*_0000.png")))
    values = np.stack([np.asarray(Image.open(p)) for p in labels])
    assert values.shape[1:] == (tile, tile) and set(np.unique(values)) == {0, 1}
    # 4-pixel membranes every 32 pixels: about 23 % of the slice, more where a line straddles two output pixels
    assert 0.15 < values.mean() < 0.4
    splits = json.loads((target / "slice_splits.json").read_text())
    assert len(splits) == 5
    slices_of = lambda cases: {int(c.split("_")[1]) for c in cases}  # noqa: E731
    for k, fold in enumerate(splits):
        assert slices_of(fold["val"]) == set(range(6 * k, 6 * k + 6))
        assert not slices_of(fold["val"]) & slices_of(fold["train"])
        assert len(fold["train"]) + len(fold["val"]) == 30 * per_slice


def test_png_copy_becomes_tiles_with_folds_of_whole_slices(tmp_path):
    source = _png_copy(tmp_path / "membrane" / "train")
    result = _run(source, tmp_path / "raw", "-d", "620", "--size", "64", "--tile", "32")
    assert result.returncode == 0, result.stderr
    target = tmp_path / "raw" / "Dataset620_ISBI2012EM"
    assert f"Wrote {target}" in result.stdout
    _check_dataset(target, 64, 32)
    assert [p.name for p in (tmp_path / "raw").iterdir()] == [target.name]  # no temporary folder left


def test_tiff_stacks_as_distributed(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    slices = [_slice(i) for i in range(30)]
    tifffile.imwrite(tmp_path / "train-volume.tif", np.stack([s[0] for s in slices]))
    tifffile.imwrite(tmp_path / "train-labels.tif", np.stack([s[1] for s in slices]))
    result = _run(tmp_path, tmp_path / "raw", "--size", "64", "--tile", "64")
    assert result.returncode == 0, result.stderr
    _check_dataset(tmp_path / "raw" / "Dataset620_ISBI2012EM", 64, 64)


def test_existing_dataset_and_missing_slices_are_refused(tmp_path):
    source = _png_copy(tmp_path / "train")
    target = tmp_path / "raw" / "Dataset620_ISBI2012EM"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("user's file")
    result = _run(source, tmp_path / "raw", "--size", "64", "--tile", "32")
    assert result.returncode != 0 and str(target) in result.stderr and "-d" in result.stderr
    assert (target / "mine.txt").read_text() == "user's file"
    (source / "label" / "17.png").unlink()
    result = _run(source, tmp_path / "raw", "-d", "621", "--size", "64", "--tile", "32")
    assert result.returncode != 0 and "label/17.png" in result.stderr
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [target.name]
