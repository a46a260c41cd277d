"""CVC-ClinicDB conversion on synthetic folders: TIF layout (Pillow-unreadable images) and PNG layout
(3-channel masks); soft mask edges thresholded."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image, UnidentifiedImageError

from dataset_conversion.cli import convert_dataset, main
from nnunet_allukan.synthetic import make_synthetic_cvc


pytestmark = pytest.mark.usefixtures("raw")  # every test: an empty nnUNet_raw (tests/conftest.py)


def test_synthetic_tif_is_unreadable_by_pillow_and_masks_are_soft(tmp_path):
    source = make_synthetic_cvc(tmp_path / "cvc", n_cases=2, image_format="tif")
    with pytest.raises(UnidentifiedImageError):
        Image.open(source / "Original" / "1.tif")
    assert tifffile.imread(source / "Original" / "1.tif").shape == (72, 96, 3)
    soft = np.asarray(Image.open(source / "Ground Truth" / "1.tif"))
    assert ((soft > 0) & (soft < 255)).any()  # odd cases: soft edges
    crisp = np.asarray(Image.open(source / "Ground Truth" / "2.tif"))
    assert set(np.unique(crisp).tolist()) == {0, 255}


def test_tif_layout_default_256(tmp_path, capsys):
    source = make_synthetic_cvc(tmp_path / "CVC-ClinicDB", n_cases=6, image_format="tif", seed=3)
    assert main(["cvc", str(source), "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 cases written" in out and "3 thresholded" in out and "6 resized" in out
    folder = tmp_path / "raw" / "Dataset603_CVCClinicDB"
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 6 and dataset_json["labels"] == {"background": 0, "polyp": 1}
    assert dataset_json["original_ids"] == {f"cvc_{i:04d}": str(i) for i in range(1, 7)}
    for case in dataset_json["original_ids"]:
        assert Image.open(folder / "imagesTr" / f"{case}_0000.png").size == (256, 256)
        label = np.asarray(Image.open(folder / "labelsTr" / f"{case}.png"))
        assert label.shape == (256, 256) and set(np.unique(label).tolist()) == {0, 1}
    record = json.loads((folder / "conversion_record.json").read_text())
    assert [c for c, r in sorted(record["cases"].items()) if r["thresholded"]] == ["cvc_0001", "cvc_0003", "cvc_0005"]


def test_native_threshold_at_128_and_tif_equals_png(tmp_path):
    tif_source = make_synthetic_cvc(tmp_path / "tif", n_cases=4, image_format="tif", seed=5)
    png_source = make_synthetic_cvc(tmp_path / "png", n_cases=4, image_format="png", seed=5)
    assert np.asarray(Image.open(png_source / "Ground Truth" / "1.png")).ndim == 3  # 3-channel masks
    from_tif = convert_dataset("cvc", tif_source, native=True, raw_folder=tmp_path / "raw_tif")
    from_png = convert_dataset("cvc", png_source, native=True, raw_folder=tmp_path / "raw_png")
    for number in range(1, 5):
        case = f"cvc_{number:04d}"
        soft = np.asarray(Image.open(tif_source / "Ground Truth" / f"{number}.tif"))
        label = np.asarray(Image.open(from_tif.dataset_folder / "labelsTr" / f"{case}.png"))
        np.testing.assert_array_equal(label, (soft >= 128).astype(np.uint8))
        image = np.asarray(Image.open(from_tif.dataset_folder / "imagesTr" / f"{case}_0000.png"))
        np.testing.assert_array_equal(image, tifffile.imread(tif_source / "Original" / f"{number}.tif"))
        for sub in (f"imagesTr/{case}_0000.png", f"labelsTr/{case}.png"):
            assert (from_tif.dataset_folder / sub).read_bytes() == (from_png.dataset_folder / sub).read_bytes()
    assert from_tif.records["cvc_0001"]["image"] == "Original/1.tif"
    assert from_png.records["cvc_0001"]["masks"] == ["Ground Truth/1.png"]
