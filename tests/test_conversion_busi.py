"""BUSI conversion on a synthetic Dataset_BUSI_with_GT (multi-mask cases, an RGB mask, non-square sizes)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import train_test_split

from dataset_conversion.cli import convert_dataset, main
from nnunet_allukan.synthetic import make_synthetic_busi


pytestmark = pytest.mark.usefixtures("raw")  # every test: an empty nnUNet_raw (tests/conftest.py)


@pytest.fixture
def busi_source(tmp_path) -> Path:
    return make_synthetic_busi(tmp_path / "download", n_benign=4, n_malignant=3, n_normal=2, seed=1)


def _union_of_masks(folder: Path, stem: str) -> np.ndarray:
    masks = sorted(folder.glob(f"{stem}_mask*.png"))
    arrays = [np.asarray(Image.open(m)) for m in masks]
    arrays = [a[..., 0] if a.ndim == 3 else a for a in arrays]
    return np.logical_or.reduce([a > 0 for a in arrays])


def test_default_conversion_counts_sizes_and_json(busi_source, tmp_path, capsys):
    rc = main(["busi", str(busi_source.parent), "-np", "1"])  # the parent is accepted
    assert rc == 0
    out = capsys.readouterr().out
    folder = tmp_path / "raw" / "Dataset601_BUSI"
    assert str(folder) in out and "7 cases written" in out and "2 excluded" in out and "3 with masks merged" in out
    dataset_json = json.loads((folder / "dataset.json").read_text())
    # written by nnU-Net's generate_dataset_json: its keys plus original_ids
    assert set(dataset_json) == {"channel_names", "labels", "numTraining", "file_ending", "name", "description",
                                 "reference", "licence", "converted_by", "original_ids"}
    assert dataset_json["name"] == "BUSI" and dataset_json["converted_by"].startswith("nnUNetv2_convert_allukan")
    assert dataset_json["numTraining"] == 7
    assert dataset_json["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dataset_json["labels"] == {"background": 0, "tumor": 1}
    assert dataset_json["file_ending"] == ".png"
    assert dataset_json["original_ids"] == {
        **{f"benign_{i:04d}": f"benign ({i})" for i in range(1, 5)},
        **{f"malignant_{i:04d}": f"malignant ({i})" for i in range(1, 4)},
    }
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert images == [f"{c}_0000.png" for c in sorted(dataset_json["original_ids"])]
    assert labels == [f"{c}.png" for c in sorted(dataset_json["original_ids"])]
    for case in dataset_json["original_ids"]:
        image = Image.open(folder / "imagesTr" / f"{case}_0000.png")
        label = Image.open(folder / "labelsTr" / f"{case}.png")
        assert image.mode == "RGB" and image.size == (256, 256)
        assert label.mode == "L" and label.size == (256, 256)
        values = set(np.unique(np.asarray(label)).tolist())
        assert values == {0, 1}
    record = json.loads((folder / "conversion_record.json").read_text())
    assert record["arguments"] == {"dataset": "busi", "dataset_id": 601, "size": 256, "include_normal": False,
                                   "strict_masks": False}
    merged = sorted(c for c, r in record["cases"].items() if r["merged_masks"])
    assert merged == ["benign_0002", "benign_0003", "malignant_0002"]
    assert record["cases"]["benign_0003"]["masks"] == [
        "benign/benign (3)_mask.png", "benign/benign (3)_mask_1.png", "benign/benign (3)_mask_2.png"]
    assert all(r["resized"] for r in record["cases"].values())
    assert {e["image"] for e in record["excluded"]} == {"normal/normal (1).png", "normal/normal (2).png"}
    assert record["summary"]["cases_written"] == 7 and record["summary"]["excluded"] == 2


def test_native_labels_are_the_union_of_all_masks(busi_source, tmp_path):
    result = convert_dataset("busi", busi_source, native=True, raw_folder=tmp_path / "raw")
    folder = result.dataset_folder
    for case, stem, n_masks in (("benign_0003", "benign (3)", 3), ("malignant_0002", "malignant (2)", 2),
                                ("benign_0001", "benign (1)", 1)):
        class_folder = busi_source / case.split("_")[0]
        assert len(list(class_folder.glob(f"{stem}_mask*.png"))) == n_masks
        label = np.asarray(Image.open(folder / "labelsTr" / f"{case}.png"))
        expected = _union_of_masks(class_folder, stem)
        np.testing.assert_array_equal(label, expected.astype(np.uint8))
        first_only = np.asarray(Image.open(class_folder / f"{stem}_mask.png")) > 0
        if n_masks > 1:
            assert label.sum() > first_only.sum()  # the extra lesions are really added
        image = np.asarray(Image.open(folder / "imagesTr" / f"{case}_0000.png"))
        np.testing.assert_array_equal(image, np.asarray(Image.open(class_folder / f"{stem}.png").convert("RGB")))
    assert not any(r["resized"] for r in result.records.values())
    shapes = {tuple(r["output_shape_hw"]) for r in result.records.values()}
    assert len(shapes) > 1 and any(h != w for h, w in shapes)  # non-square sizes kept


def test_resized_label_is_nearest_resize_of_union(busi_source, tmp_path):
    result = convert_dataset("busi", busi_source, size=64, raw_folder=tmp_path / "raw")
    label = Image.open(result.dataset_folder / "labelsTr" / "benign_0002.png")
    union = Image.fromarray(_union_of_masks(busi_source / "benign", "benign (2)").astype(np.uint8))
    expected = np.asarray(union.resize((64, 64), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(np.asarray(label), expected)
    assert result.records["benign_0002"]["original_shape_hw"] == [96, 80]  # (width, height) = (80, 96)


def test_include_normal_keeps_empty_labels(busi_source, tmp_path):
    result = convert_dataset("busi", busi_source, include_normal=True, size=32, raw_folder=tmp_path / "raw")
    assert result.summary["cases_written"] == 9 and result.summary["excluded"] == 0
    assert result.summary["empty_labels"] == 2
    for case in ("normal_0001", "normal_0002"):
        assert not np.asarray(Image.open(result.dataset_folder / "labelsTr" / f"{case}.png")).any()


def test_paper_splits_file_matches_sklearn(busi_source, tmp_path):
    result = convert_dataset("busi", busi_source, size=32, raw_folder=tmp_path / "raw")
    original_ids = json.loads((result.dataset_folder / "dataset.json").read_text())["original_ids"]
    splits = json.loads((result.dataset_folder / "paper_splits.json").read_text())
    case_of = {v: k for k, v in original_ids.items()}
    names = sorted(original_ids.values())
    for split, seed in zip(splits, (2981, 6142, 1187)):
        train, val = train_test_split(names, test_size=0.2, random_state=seed)
        assert split == {"train": [case_of[n] for n in train], "val": [case_of[n] for n in val]}


def test_conversion_is_byte_identical_and_parallel_equals_serial(busi_source, tmp_path):
    first = convert_dataset("busi", busi_source, size=48, raw_folder=tmp_path / "raw_a", num_processes=1)
    second = convert_dataset("busi", busi_source, size=48, raw_folder=tmp_path / "raw_b", num_processes=2)
    files_a = sorted(p.relative_to(first.dataset_folder) for p in first.dataset_folder.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second.dataset_folder) for p in second.dataset_folder.rglob("*") if p.is_file())
    # 7 images and 7 labels; dataset.json, conversion_record.json, paper_splits.json, the mask report, the marker
    assert files_a == files_b and len(files_a) == 7 * 2 + 5
    for rel in files_a:
        assert (first.dataset_folder / rel).read_bytes() == (second.dataset_folder / rel).read_bytes(), rel
