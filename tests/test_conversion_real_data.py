"""Every mask of the real datasets in ../shared/data converts (CVC-ClinicDB: 612 cases, BUSI: 647 with the normal
images excluded, the paper's counts), each label being the mask (or the union of the case's masks) >= 128, and
the masks in which a level below 128 covers more than 1 % of the frame are the ones said. Skipped where
../shared/data is absent."""

import csv

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.cli import convert_dataset
from dataset_conversion.masks import LARGE_DROPPED_LEVEL_FRACTION, SOFT_MASK_THRESHOLD
from dataset_conversion.reading import read_mask_array
from dataset_conversion.writer import MASK_REPORT_NAME


@pytest.fixture(autouse=True)
def _nnunet_env(monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)


def data_folder(shared_dir, name):
    folder = shared_dir / "data" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return folder


def has_large_level_below_threshold(mask: np.ndarray) -> bool:
    values, counts = np.unique(mask, return_counts=True)
    dropped = (values > values[0]) & (values < SOFT_MASK_THRESHOLD)
    return bool((counts[dropped] > LARGE_DROPPED_LEVEL_FRACTION * mask.size).any())


def check_every_case(result, source_root) -> set[str]:
    """Each label equals its masks' union >= 128; returns the masks in which a large level was dropped."""
    large = set()
    for case, record in result.records.items():
        masks = [read_mask_array(source_root / m) for m in record["masks"]]
        large.update(m for m, mask in zip(record["masks"], masks) if has_large_level_below_threshold(mask))
        label = np.asarray(Image.open(result.dataset_folder / "labelsTr" / f"{case}.png"))
        np.testing.assert_array_equal(label, np.logical_or.reduce([m >= SOFT_MASK_THRESHOLD for m in masks]), case)
    with open(result.dataset_folder / MASK_REPORT_NAME, newline="") as report:
        said = {row["mask"] for row in csv.DictReader(report) if row["large_dropped_level"] == "1"}
    assert said == large
    assert result.summary["masks_with_large_dropped_level"] == len(large)
    return large


def test_every_cvc_clinicdb_mask_converts(shared_dir, tmp_path):
    source = data_folder(shared_dir, "CVC-ClinicDB")
    result = convert_dataset("cvc", source, native=True, raw_folder=tmp_path / "raw", num_processes=2)
    assert result.summary["cases_written"] == len(list((source / "Original").glob("*.png"))) == 612
    large = check_every_case(result, source)
    # 489 (a patch of the level 17), which the earlier rule refused as a label map, is among those said
    assert "Ground Truth/489.png" in large


def test_every_busi_mask_converts(shared_dir, tmp_path):
    source = data_folder(shared_dir, "BUSI")
    result = convert_dataset("busi", source, native=True, raw_folder=tmp_path / "raw", num_processes=2)
    assert result.summary["cases_written"] == 647  # 437 benign + 210 malignant
    assert result.summary["excluded"] == 133  # normal, as in the paper
    check_every_case(result, source / "Dataset_BUSI_with_GT")
