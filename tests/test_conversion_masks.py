"""Masks as users meet them: resampled, compressed, with faint strips, patches, halos and stray pixels: a mask
holding a value >= 128 is thresholded there, a level below 128 covering more than 1 % of the image said; label
maps without such a value and images stored as masks refused; --strict-masks; the report of what was
thresholded. The real examples are in ../shared/samples/mask-artifacts (skipped where it is absent)."""

import csv
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import dataset_conversion.writer as writer
from dataset_conversion.cli import convert_dataset, main
from dataset_conversion.errors import ConversionError
from dataset_conversion.masks import binarize_binary_mask
from dataset_conversion.reading import read_image_rgb, read_mask_array
from nnunet_allukan.synthetic import add_faint_halo, add_faint_patch, add_faint_strip, add_stray_pixels, \
    jpeg_round_trip, make_synthetic_busi, make_synthetic_cvc, resample_mask
from dataset_conversion.writer import MASK_REPORT_NAME


pytestmark = pytest.mark.usefixtures("raw")  # every test: an empty nnUNet_raw (tests/conftest.py)


def lesion(height: int = 180, width: int = 220) -> np.ndarray:
    """A 0/255 mask: a tilted ellipse and a small second object."""
    yy, xx = np.mgrid[:height, :width]
    dx, dy = xx - 0.45 * width, yy - 0.5 * height
    u, v = dx * 0.92 + dy * 0.39, -dx * 0.39 + dy * 0.92
    big = (u / (0.32 * width)) ** 2 + (v / (0.28 * height)) ** 2 < 1
    small = ((xx - 0.82 * width) / 20) ** 2 + ((yy - 0.22 * height) / 15) ** 2 < 1
    return (big | small).astype(np.uint8) * 255


def accepted(mask: np.ndarray, name: str = "mask.png"):
    reading = binarize_binary_mask(mask, Path(name))
    np.testing.assert_array_equal(reading.foreground, mask >= 128)
    return reading


# --- what resampling and compression make of a 0/255 mask ------------------------------------------------


@pytest.mark.parametrize("method", ["bilinear", "bicubic", "area"])
@pytest.mark.parametrize("factor", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4])
def test_resampled_masks_are_thresholded(method, factor):
    mask = resample_mask(lesion(), factor, method)
    reading = accepted(mask)
    assert reading.kind in ("soft", "binary")


@pytest.mark.parametrize("quality", [50, 75, 90, 95])
@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("factor, method", [(1, None), (1 / 4, "bilinear"), (1 / 2, "area"), (4, "bicubic")])
def test_jpeg_compressed_masks_are_thresholded(tmp_path, quality, rgb, factor, method):
    mask = lesion() if method is None else resample_mask(lesion(), factor, method)
    compressed = jpeg_round_trip(mask, quality, rgb=rgb)
    path = tmp_path / "mask.png"  # a PNG copy of the JPEG, as redistributions hold them
    Image.fromarray(compressed).save(path)
    read = read_mask_array(path)
    reading = accepted(read)
    assert reading.kind == "soft" and reading.values > 2


@pytest.mark.parametrize("level, rows, length, gap", [(11, 4, 40, 4), (6, 1, 1, 1), (23, 2, 400, 10), (21, 4, 200, 1)])
def test_cvc_like_faint_strips_are_thresholded(level, rows, length, gap):
    mask = add_faint_strip(lesion(288, 384), level, rows, length, gap)
    reading = accepted(mask)
    assert reading.values == 3 and reading.changed_pixels == np.count_nonzero(mask == level) > 0


@pytest.mark.parametrize("width, levels", [(6, (2, 20)), (40, (5, 16)), (4, (11, 11))])
def test_faint_halos_are_thresholded(width, levels):
    mask = add_faint_halo(lesion(), width, levels)
    reading = accepted(mask)
    assert reading.changed_pixels == np.count_nonzero((mask > 0) & (mask < 128))


@pytest.mark.parametrize("distance", [3, 5, 9])
def test_stray_mid_grey_pixels_are_thresholded(distance):
    mask = jpeg_round_trip(add_stray_pixels(lesion(224, 224), (210, 78), distance), 75, rgb=True)[..., 0]
    accepted(mask)


# --- a mask holding 255 is binary in intent: faint levels and patches of every size are thresholded -------------


def quarters(*levels: int) -> np.ndarray:
    mask = np.zeros((64, 64), np.uint8)
    for (rows, cols), level in zip(((slice(0, 32), slice(32, 64)), (slice(32, 64), slice(0, 32)),
                                    (slice(32, 64), slice(32, 64))), levels):
        mask[rows, cols] = level
    return mask


@pytest.mark.parametrize("side", [1, 2, 4, 7, 8, 9, 12, 16, 24, 32, 33, 34, 48, 64, 96])
@pytest.mark.parametrize("level", [1, 6, 12, 23, 60])
def test_faint_patches_of_every_size_next_to_255_are_thresholded(side, level):
    yy, xx = np.mgrid[:288, :384]
    polyp = (np.hypot(yy - 144, xx - 192) < 60).astype(np.uint8) * 255
    mask = add_faint_patch(polyp, level, side)
    patch = np.count_nonzero(mask == level)
    assert patch == side * side  # the whole patch lies beside the polyp
    reading = accepted(mask)
    assert reading.kind == "soft" and reading.values == 3
    assert reading.changed_pixels == reading.dropped_level_pixels == patch and reading.dropped_level == level
    # 1 % of the 384 x 288 frame is 1105.9 pixels: a patch of side 34 and more is said
    assert reading.large_dropped_level == (side >= 34)


@pytest.mark.parametrize("make_mask, level, large", [
    (lambda: quarters(1, 2, 255), 1, True),  # 1 and 2 each cover a quarter: read as binary, with a warning
    (lambda: quarters(100, 255), 100, True),
    (lambda: add_faint_strip(lesion(), 3, 12, 60, 4), 3, True),  # 720 pixels, 1.8 % of 180 x 220
    (lambda: add_faint_strip(lesion(), 11, 4, 40, 4), 11, False),  # 160 pixels, 0.4 %
    (lambda: add_faint_halo(lesion(), 6, (2, 20)), None, False),  # continuous tone: each level < 1 %
    (lambda: add_faint_halo(lesion(), 40, (5, 16)), None, True),  # 12 levels on 64 % of the frame
])
def test_levels_below_128_next_to_255_are_thresholded_and_large_ones_said(make_mask, level, large):
    mask = make_mask()
    reading = accepted(mask)
    assert reading.large_dropped_level == large
    assert reading.changed_pixels == np.count_nonzero((mask > 0) & (mask < 128))
    if level is not None:
        assert reading.dropped_level == level


# --- what cannot be read as binary: refused -------------------------------------------------------------------


@pytest.mark.parametrize("make_mask, values", [
    (lambda: quarters(1, 2), "[0, 1, 2]"),
    (lambda: quarters(1, 2, 3), "[0, 1, 2, 3]"),
    (lambda: quarters(1, 2, 3).astype(np.uint16) * 40, "[0, 40, 80, 120]"),
    (lambda: quarters(20, 60, 127), "[0, 20, 60, 127]"),
])
def test_label_maps_are_refused(make_mask, values):
    with pytest.raises(ConversionError) as error:
        binarize_binary_mask(make_mask(), Path("labels/case_mask.png"))
    message = str(error.value)
    for fragment in (f"labels/case_mask.png has the values {values}", "none of them >= 128", "multi-class label map",
                     "would drop", "Replace it with the binary mask from the dataset archive",
                     "merge the labels into 0/255"):
        assert fragment in message, message


def grey_photographs(tmp_path: Path) -> dict[str, np.ndarray]:
    """The synthetic BUSI and CVC images as grey arrays, darkened (no value >= 128) and smoothed versions, and
    gradients: files of many grey levels stored under a mask's name."""
    busi = make_synthetic_busi(tmp_path / "busi", n_benign=1, n_malignant=0, n_normal=0, seed=5)
    cvc = make_synthetic_cvc(tmp_path / "cvc", n_cases=1, image_format="png", size=(384, 288), seed=5)
    photos = {"busi": np.asarray(Image.open(busi / "benign" / "benign (1).png").convert("L")),
              "cvc": np.asarray(Image.open(cvc / "Original" / "1.png").convert("L"))}
    photos["busi_dark"], photos["cvc_dark"] = photos["busi"] // 3, photos["cvc"] // 3
    photos["cvc_smooth"] = np.asarray(Image.fromarray(photos["cvc"]).filter(ImageFilter.GaussianBlur(4)))
    photos["linear_gradient"] = np.repeat(np.arange(256, dtype=np.uint8)[None], 64, axis=0)
    photos["stepped_gradient"] = np.repeat(np.repeat(np.arange(8, dtype=np.uint8) * 36, 8)[None], 64, axis=0)
    return photos


def test_grey_photographs_and_gradients_saved_as_masks_are_refused(tmp_path):
    for name, photo in grey_photographs(tmp_path).items():
        with pytest.raises(ConversionError) as error:
            binarize_binary_mask(photo, Path(f"masks/{name}.png"))
        message = str(error.value)
        for fragment in (f"masks/{name}.png does not look like a mask", "lie between its lowest and highest values",
                         "Replace it with the mask from the dataset archive"):
            assert fragment in message, (name, message)


def test_real_images_saved_as_masks_are_refused(shared_dir):
    images = sorted((shared_dir / "samples").glob("**/Original/*")) + sorted(
        p for p in (shared_dir / "samples").glob("**/Dataset_BUSI_with_GT/*/*.png") if "_mask" not in p.name)
    assert len(images) >= 20
    for path in images:
        grey = np.round(read_image_rgb(path).mean(axis=-1)).astype(np.uint8)
        with pytest.raises(ConversionError, match="does not look like a mask"):
            binarize_binary_mask(grey, path)


def test_two_valued_masks_keep_their_larger_value_as_object():
    for mask in (quarters(0, 0, 1), quarters(0, 0, 255)):
        reading = binarize_binary_mask(mask, Path("m.png"))
        assert reading.kind == "binary" and reading.changed_pixels == 0
        np.testing.assert_array_equal(reading.foreground, mask == mask.max())


# --- the real examples ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, folder, cases", [("cvc", "CVC-ClinicDB", 3), ("cvc", "CVC-ClinicDB-png", 3),
                                                    ("busi", "BUSI", 2)])
def test_real_masks_with_artifacts_convert(shared_dir, tmp_path, dataset, folder, cases):
    source = shared_dir / "samples" / "mask-artifacts" / folder
    if dataset == "busi":  # the examples are malignant cases only: an empty benign/ completes the layout
        source = Path(shutil.copytree(source, tmp_path / "BUSI"))
        (source / "Dataset_BUSI_with_GT" / "benign").mkdir()
    result = convert_dataset(dataset, source, native=True, raw_folder=tmp_path / "raw", num_processes=1)
    assert result.summary["cases_written"] == cases == result.summary["masks_soft_edged"]
    with open(result.dataset_folder / MASK_REPORT_NAME, newline="") as report:
        rows = list(csv.DictReader(report))
    assert len(rows) == cases
    source_root = Path(json.loads((result.dataset_folder / "conversion_record.json").read_text())["source_folder"])
    changed = 0
    for row in rows:
        mask = read_mask_array(source_root / row["mask"])
        label = np.asarray(Image.open(result.dataset_folder / "labelsTr" / f"{row['case']}.png"))
        np.testing.assert_array_equal(label, (mask >= 128).astype(np.uint8))
        assert int(row["values"]) == np.unique(mask).size > 2
        assert int(row["pixels_changed_class"]) == np.count_nonzero((mask > 0) & (mask < 128)) > 0
        changed += int(row["pixels_changed_class"])
    assert result.summary["pixels_changed_class"] == changed


# --- the command: summary line, report file, --strict-masks -------------------------------------------------


def test_summary_line_and_report_of_thresholded_masks(tmp_path, capsys):
    source = make_synthetic_cvc(tmp_path / "cvc", n_cases=24, image_format="png", seed=2, size=(128, 96),
                                mask_artifacts=True)
    assert main(["cvc", str(source), "--native", "-np", "1"]) == 0
    out, err = capsys.readouterr()
    dataset = tmp_path / "raw" / "Dataset603_CVCClinicDB"
    with open(dataset / MASK_REPORT_NAME, newline="") as report:
        rows = list(csv.DictReader(report))
    # 12 soft-edged (odd cases), the strips of cases 4 and 24, the patch of case 10, the halo of case 14
    assert sorted(int(r["case"][4:]) for r in rows) == sorted([*range(1, 24, 2), 4, 10, 14, 24])
    # the patch (24 x 24 of the level 11: 4.7 % of the frame) is the one level below 128 on more than 1 %
    assert [r["case"] for r in rows if r["large_dropped_level"] == "1"] == ["cvc_0010"]
    patch = next(r for r in rows if r["case"] == "cvc_0010")
    assert (patch["largest_dropped_level"], patch["largest_dropped_level_pixels"]) == ("11", str(24 * 24))
    assert "Warning: 1 masks hold a level below 128 on more than 1 % of the image" in err
    assert "  Ground Truth/10.png: the level 11 on 576 pixels (4.69 %)" in err
    changed = sum(int(r["pixels_changed_class"]) for r in rows)
    assert changed == sum(np.count_nonzero((m > 0) & (m < 128)) for m in (
        np.asarray(Image.open(p))[..., 0] for p in (source / "Ground Truth").glob("*.png")))
    assert f"16 soft-edged or noisy (not exactly binary: thresholded at >= 128, {changed} pixels changed class" in out
    assert f"Thresholded masks: {dataset / MASK_REPORT_NAME}" in out
    record = json.loads((dataset / "conversion_record.json").read_text())
    assert record["summary"]["pixels_changed_class"] == changed
    assert record["summary"]["masks_with_large_dropped_level"] == 1
    assert record["cases"]["cvc_0010"]["mask_kinds"][0]["dropped_level"] == 11


def test_strict_masks_refuses_masks_that_are_not_exactly_binary(tmp_path, capsys):
    source = make_synthetic_cvc(tmp_path / "cvc", n_cases=4, image_format="tif", seed=1, mask_artifacts=True)
    assert main(["cvc", str(source), "--strict-masks", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert "3 problems in the source data" in err  # soft edges of cases 1 and 3, the strip of case 4
    for number in (1, 3, 4):
        assert f"Ground Truth/{number}.tif is not exactly binary" in err
    assert "--strict-masks refuses such masks" in err and "Nothing was written." in err
    assert not (tmp_path / "raw").exists() or not list((tmp_path / "raw").iterdir())
    assert main(["cvc", str(source), "-np", "1"]) == 0


def test_busi_reencoded_masks_convert(tmp_path):
    source = make_synthetic_busi(tmp_path / "busi", n_benign=4, n_malignant=3, n_normal=1, seed=3, mask_artifacts=True)
    assert np.asarray(Image.open(source / "benign" / "benign (3)_mask.png")).ndim == 3
    result = convert_dataset("busi", source, native=True, raw_folder=tmp_path / "raw", num_processes=1)
    assert result.summary["cases_written"] == 7
    for case, record in result.records.items():
        masks = [read_mask_array(source / m) >= 128 for m in record["masks"]]
        label = np.asarray(Image.open(result.dataset_folder / "labelsTr" / f"{case}.png"))
        np.testing.assert_array_equal(label, np.logical_or.reduce(masks).astype(np.uint8))


def test_full_disk_while_writing_the_report(tmp_path, monkeypatch, capsys):
    source = make_synthetic_cvc(tmp_path / "cvc", n_cases=3, image_format="png", seed=1)

    def full(records, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(writer, "write_mask_report", full)
    assert main(["cvc", str(source), "--size", "32", "-np", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{MASK_REPORT_NAME}: No space left on device" in err and "Nothing was written." in err
    assert list((tmp_path / "raw").iterdir()) == []
