"""Conversion of the real-format samples in ../shared/samples (skipped where that folder is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from dataset_conversion.cli import convert_dataset

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/samples is not available")


@pytest.fixture(autouse=True)
def _nnunet_env(monkeypatch):
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.delenv("nnUNet_results", raising=False)


def test_busi_samples(tmp_path):
    busi = SAMPLES / "BUSI" / "Dataset_BUSI_with_GT"
    result = convert_dataset("busi", SAMPLES / "BUSI", raw_folder=tmp_path / "raw", num_processes=1)
    assert result.summary == {
        "cases_written": 8, "excluded": 2, "masks_merged": 3, "thresholded": 0, "resized": 8,
        "instance_maps_binarised": 0, "empty_labels": 0, "masks_read": 12, "masks_binary": 12, "masks_empty": 0,
        "masks_soft_edged": 0, "masks_with_faint_values": 0, "files_with_read_warnings": 0, "pixels_changed_class": 0,
        "masks_with_large_dropped_level": 0,
    }
    dataset_json = json.loads((result.dataset_folder / "dataset.json").read_text())
    assert dataset_json["original_ids"]["benign_0195"] == "benign (195)"
    assert result.records["benign_0195"]["masks"] == [
        "benign/benign (195)_mask.png", "benign/benign (195)_mask_1.png", "benign/benign (195)_mask_2.png"]
    assert result.records["benign_0002"]["original_shape_hw"] == [462, 597]  # a non-square sample
    # union of the three masks (one of them 3-channel RGB), nearest-resized
    masks = [np.asarray(Image.open(busi / "benign" / f"benign (195){s}.png")) for s in ("_mask", "_mask_1", "_mask_2")]
    union = np.logical_or.reduce([(m[..., 0] if m.ndim == 3 else m) > 127 for m in masks]).astype(np.uint8)
    expected = np.asarray(Image.fromarray(union).resize((256, 256), Image.Resampling.NEAREST))
    label = np.asarray(Image.open(result.dataset_folder / "labelsTr" / "benign_0195.png"))
    np.testing.assert_array_equal(label, expected)
    assert label.sum() > (np.asarray(Image.fromarray((masks[0] > 127).astype(np.uint8)).resize((256, 256), 0))).sum()


def test_cvc_samples_tif_and_png_agree(tmp_path):
    from_tif = convert_dataset("cvc", SAMPLES / "CVC-ClinicDB", native=True, raw_folder=tmp_path / "raw_tif")
    from_png = convert_dataset("cvc", SAMPLES / "CVC-ClinicDB-png", native=True, raw_folder=tmp_path / "raw_png")
    assert from_tif.summary["cases_written"] == from_png.summary["cases_written"] == 6
    # every sample mask has soft edges and a faint halo (values 2-20) around the polyp: accepted as such
    assert from_tif.summary["thresholded"] == from_tif.summary["masks_soft_edged"] == 6
    assert from_tif.summary["masks_with_faint_values"] == 6
    for number in range(1, 7):
        case = f"cvc_{number:04d}"
        mask = np.asarray(Image.open(SAMPLES / "CVC-ClinicDB" / "Ground Truth" / f"{number}.tif"))
        label = np.asarray(Image.open(from_tif.dataset_folder / "labelsTr" / f"{case}.png"))
        np.testing.assert_array_equal(label, (mask > 127).astype(np.uint8))
        assert label.shape == (288, 384) and label.any()
        image = np.asarray(Image.open(from_tif.dataset_folder / "imagesTr" / f"{case}_0000.png"))
        np.testing.assert_array_equal(image, tifffile.imread(SAMPLES / "CVC-ClinicDB" / "Original" / f"{number}.tif"))
        for sub in (f"imagesTr/{case}_0000.png", f"labelsTr/{case}.png"):
            assert (from_tif.dataset_folder / sub).read_bytes() == (from_png.dataset_folder / sub).read_bytes()


def test_cvc_samples_resized_256(tmp_path):
    result = convert_dataset("cvc", SAMPLES / "CVC-ClinicDB", raw_folder=tmp_path / "raw")
    for case in result.records:
        assert Image.open(result.dataset_folder / "imagesTr" / f"{case}_0000.png").size == (256, 256)
        assert set(np.unique(np.asarray(Image.open(result.dataset_folder / "labelsTr" / f"{case}.png")))) == {0, 1}
