"""GlaS conversion on a synthetic Warwick QU folder (.bmp images, _anno.bmp instance maps)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_conversion.cli import convert_dataset, main
from nnunet_allukan.synthetic import GLAS_FOLDER, make_synthetic_glas


pytestmark = pytest.mark.usefixtures("raw")  # every test: an empty nnUNet_raw (tests/conftest.py)


@pytest.fixture
def glas_source(tmp_path) -> Path:
    return make_synthetic_glas(tmp_path / "download", n_train=4, n_test_a=3, n_test_b=2, seed=2)


def test_synthetic_layout_is_the_distributed_one(glas_source):
    assert glas_source.name == GLAS_FOLDER == "Warwick QU Dataset (Released 2016_07_08)"
    assert (glas_source / "Grade.csv").is_file()
    anno = np.asarray(Image.open(glas_source / "train_1_anno.bmp"))
    assert anno.ndim == 2 and anno.max() >= 2  # an instance map, not a binary mask


def test_default_conversion_512_binarised(glas_source, tmp_path, capsys):
    assert main(["glas", str(glas_source), "-np", "1"]) == 0
    assert "9 cases written" in capsys.readouterr().out
    folder = tmp_path / "raw" / "Dataset602_GlaS"
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 9
    assert dataset_json["labels"] == {"background": 0, "gland": 1}
    expected_ids = [f"train_{i}" for i in range(1, 5)] + [f"testA_{i}" for i in range(1, 4)] + \
                   [f"testB_{i}" for i in range(1, 3)]
    assert dataset_json["original_ids"] == {i: i for i in expected_ids}
    for case in expected_ids:
        image = Image.open(folder / "imagesTr" / f"{case}_0000.png")
        label = Image.open(folder / "labelsTr" / f"{case}.png")
        assert image.mode == "RGB" and image.size == (512, 512) and label.size == (512, 512)
        assert set(np.unique(np.asarray(label)).tolist()) == {0, 1}
    record = json.loads((folder / "conversion_record.json").read_text())
    assert record["cases"]["train_1"]["masks"] == ["train_1_anno.bmp"]
    assert record["summary"]["instance_maps_binarised"] == 9
    assert all(r["instances"] >= 1 for r in record["cases"].values())


def test_native_label_is_instance_map_above_zero(glas_source, tmp_path):
    result = convert_dataset("glas", glas_source.parent, native=True, raw_folder=tmp_path / "raw")
    for case in ("train_1", "testA_2", "testB_2"):
        anno = np.asarray(Image.open(glas_source / f"{case}_anno.bmp"))
        label = np.asarray(Image.open(result.dataset_folder / "labelsTr" / f"{case}.png"))
        np.testing.assert_array_equal(label, (anno > 0).astype(np.uint8))
        assert result.records[case]["instances"] == len(np.unique(anno[anno > 0]))
        image = np.asarray(Image.open(result.dataset_folder / "imagesTr" / f"{case}_0000.png"))
        np.testing.assert_array_equal(image, np.asarray(Image.open(glas_source / f"{case}.bmp")))


def test_palette_instance_map_uses_indices(glas_source, tmp_path):
    # A palette .bmp holds label ids as palette indices: those (not the colours) are the instances.
    anno = np.asarray(Image.open(glas_source / "train_2_anno.bmp"))
    palette_image = Image.fromarray(anno)
    palette_image.putpalette([200, 10, 10] + [v for i in range(1, 256) for v in (i, 255 - i, 7)])
    palette_image.save(glas_source / "train_2_anno.bmp")
    assert Image.open(glas_source / "train_2_anno.bmp").mode == "P"
    result = convert_dataset("glas", glas_source, native=True, raw_folder=tmp_path / "raw")
    label = np.asarray(Image.open(result.dataset_folder / "labelsTr" / "train_2.png"))
    np.testing.assert_array_equal(label, (anno > 0).astype(np.uint8))
