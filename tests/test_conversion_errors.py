"""Bad input gets a clear error naming the file and the fix, exit code != 0, and nothing half-written."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset_conversion.writer as writer
from dataset_conversion.cli import main
from nnunet_allukan.synthetic import make_synthetic_busi, make_synthetic_cvc, make_synthetic_glas


@pytest.fixture
def glas(tmp_path) -> Path:
    return make_synthetic_glas(tmp_path / "glas", n_train=2, n_test_a=1, n_test_b=1, seed=4)


@pytest.fixture
def cvc_png(tmp_path) -> Path:
    return make_synthetic_cvc(tmp_path / "cvc_png", n_cases=3, image_format="png", seed=4)


@pytest.fixture
def cvc_tif(tmp_path) -> Path:
    return make_synthetic_cvc(tmp_path / "cvc_tif", n_cases=3, image_format="tif", seed=4)


def leftovers(raw_folder: Path) -> list[str]:
    """Anything a failed conversion could have left: dataset folders or temporary folders."""
    if not raw_folder.is_dir():
        return []
    return sorted(p.name for p in raw_folder.iterdir())


def fails(capsys, argv: list[str], *fragments: str) -> str:
    rc = main(argv + ["-np", "1"])
    err = capsys.readouterr().err
    assert rc == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"
    return err


# --- source folder -------------------------------------------------------------------------------------


def test_missing_source(raw, tmp_path, capsys):
    fails(capsys, ["busi", str(tmp_path / "nowhere")], "does not exist", "Dataset_BUSI_with_GT")
    assert leftovers(raw) == []


def test_empty_source(raw, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    fails(capsys, ["glas", str(tmp_path / "empty")], "is empty", "Warwick QU")
    assert leftovers(raw) == []


def test_unrelated_folder(raw, tmp_path, capsys):
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    (tmp_path / "other" / "a.txt").write_text("x")
    fails(capsys, ["cvc", str(tmp_path / "other")], "does not look like", "Ground Truth")


def test_parent_of_glas_folder_is_found(raw, glas, capsys):
    assert main(["glas", str(glas.parent), "-np", "1", "--size", "32"]) == 0
    assert f"Using the dataset folder {glas}" in capsys.readouterr().out
    assert (raw / "Dataset602_GlaS" / "dataset.json").is_file()


def test_subfolder_passed_names_the_folder_to_pass(raw, cvc_tif, busi, capsys):
    fails(capsys, ["cvc", str(cvc_tif / "Original")], "folder inside the dataset", f"pass its parent {cvc_tif}")
    fails(capsys, ["busi", str(busi / "benign")], f"pass its parent {busi}")
    assert leftovers(raw) == []


def test_several_candidates_refused(raw, tmp_path, capsys):
    make_synthetic_cvc(tmp_path / "kaggle" / "PNG", n_cases=2, image_format="png")
    make_synthetic_cvc(tmp_path / "kaggle" / "TIF", n_cases=2, image_format="tif")
    fails(capsys, ["cvc", str(tmp_path / "kaggle")], "several candidate folders", "PNG", "TIF")


# --- pairing -------------------------------------------------------------------------------------------


def test_image_without_mask(raw, busi, glas, cvc_tif, capsys):
    (busi / "benign" / "benign (1)_mask.png").unlink()
    fails(capsys, ["busi", str(busi)], "benign (1).png has no mask", "benign (1)_mask.png")
    (glas / "train_2_anno.bmp").unlink()
    fails(capsys, ["glas", str(glas)], "train_2.bmp has no annotation (expected",
          "train_2_anno.bmp); restore the annotation")
    (cvc_tif / "Ground Truth" / "2.tif").unlink()
    fails(capsys, ["cvc", str(cvc_tif)], "2.tif has no mask (expected",
          f"{Path('Ground Truth') / '2.tif'}); restore the mask")
    assert leftovers(raw) == []


def test_mask_without_image(raw, busi, glas, cvc_png, capsys):
    shutil.copy(busi / "malignant" / "malignant (1)_mask.png", busi / "malignant" / "malignant (9)_mask.png")
    fails(capsys, ["busi", str(busi)], "malignant (9)_mask.png has no image")
    (glas / "testA_1.bmp").unlink()
    fails(capsys, ["glas", str(glas)], "testA_1_anno.bmp has no image (expected",
          "testA_1.bmp). Restore the image or remove the annotation")
    (cvc_png / "Original" / "3.png").unlink()
    fails(capsys, ["cvc", str(cvc_png)], "3.png has no image (expected",
          f"{Path('Original') / '3.png'}). Restore the image or remove the mask")
    assert leftovers(raw) == []


def test_duplicate_case_ids(raw, busi, cvc_tif, capsys):
    shutil.copy(busi / "benign" / "benign (1).png", busi / "benign" / "benign (01).png")
    shutil.copy(busi / "benign" / "benign (1)_mask.png", busi / "benign" / "benign (01)_mask.png")
    fails(capsys, ["busi", str(busi)], "duplicate case ids", "benign_0001", "benign (01).png")
    shutil.copy(cvc_tif / "Original" / "1.tif", cvc_tif / "Original" / "01.tif")
    shutil.copy(cvc_tif / "Ground Truth" / "1.tif", cvc_tif / "Ground Truth" / "01.tif")
    fails(capsys, ["cvc", str(cvc_tif)], "duplicate case ids", "cvc_0001")
    assert leftovers(raw) == []


# --- file contents -------------------------------------------------------------------------------------


def test_truncated_png(raw, busi, capsys):
    image = busi / "malignant" / "malignant (2).png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    fails(capsys, ["busi", str(busi)], "malignant (2).png", "re-extract it")
    assert leftovers(raw) == []


def test_truncated_tif_that_only_tifffile_reads(raw, cvc_tif, capsys):
    image = cvc_tif / "Original" / "2.tif"
    image.write_bytes(image.read_bytes()[:300])
    fails(capsys, ["cvc", str(cvc_tif)], "Original/2.tif", "re-extract it")
    assert leftovers(raw) == []


def test_tif_with_garbage_header(raw, cvc_tif, capsys):
    (cvc_tif / "Ground Truth" / "3.tif").write_bytes(b"II*\x00garbage")  # tifffile reads it as empty
    fails(capsys, ["cvc", str(cvc_tif)], "Ground Truth/3.tif", "no image data")
    assert leftovers(raw) == []


def test_not_an_image_at_all(raw, glas, capsys):
    (glas / "train_1.bmp").write_text("this is not a bitmap")
    fails(capsys, ["glas", str(glas)], "train_1.bmp", "not an image")
    assert leftovers(raw) == []


def test_image_and_mask_of_different_sizes(raw, busi, capsys):
    mask_path = busi / "benign" / "benign (2)_mask_1.png"
    Image.open(mask_path).resize((50, 40), Image.Resampling.NEAREST).save(mask_path)
    fails(capsys, ["busi", str(busi)], "benign (2)_mask_1.png is 50x40", "do not belong together")
    assert leftovers(raw) == []


def test_image_stored_as_mask(raw, busi, capsys):
    # BUSI images are grey stored as RGB: equal channels, so only their texture betrays them
    shutil.copy(busi / "benign" / "benign (3).png", busi / "benign" / "benign (3)_mask_1.png")
    fails(capsys, ["busi", str(busi)], "benign (3)_mask_1.png does not look like a mask")
    assert leftovers(raw) == []


def test_colour_image_stored_as_mask(raw, cvc_png, capsys):
    shutil.copy(cvc_png / "Original" / "2.png", cvc_png / "Ground Truth" / "2.png")
    fails(capsys, ["cvc", str(cvc_png)], "Ground Truth/2.png is a colour image")
    assert leftovers(raw) == []


def test_multi_class_label_map_as_mask(raw, busi, capsys):
    mask_path = busi / "malignant" / "malignant (1)_mask.png"
    mask = np.asarray(Image.open(mask_path)) // 255  # 0/1
    mask = mask.copy()
    mask[: mask.shape[0] // 4, : mask.shape[1] // 4] = 2  # a second class
    Image.fromarray(mask.astype(np.uint8)).save(mask_path)
    fails(capsys, ["busi", str(busi)], "malignant (1)_mask.png has the values [0, 1, 2]", "label map")
    assert leftovers(raw) == []


# --- target folder -------------------------------------------------------------------------------------


def test_existing_dataset_needs_overwrite(raw, busi, capsys):
    assert main(["busi", str(busi), "--size", "32", "-np", "1"]) == 0
    label = raw / "Dataset601_BUSI" / "labelsTr" / "benign_0001.png"
    before = label.read_bytes()
    fails(capsys, ["busi", str(busi), "--size", "48"], "Dataset601_BUSI already exists", "--overwrite")
    assert label.read_bytes() == before
    assert main(["busi", str(busi), "--size", "48", "--overwrite", "-np", "1"]) == 0
    assert Image.open(label).size == (48, 48)
    assert leftovers(raw) == ["Dataset601_BUSI"]


def test_failed_overwrite_keeps_old_dataset(raw, busi, capsys):
    assert main(["busi", str(busi), "--size", "32", "-np", "1"]) == 0
    (busi / "malignant" / "malignant (2)_mask.png").write_bytes(b"\x89PNG broken")
    fails(capsys, ["busi", str(busi), "--size", "48", "--overwrite"], "malignant (2)_mask.png")
    assert leftovers(raw) == ["Dataset601_BUSI"]
    assert Image.open(raw / "Dataset601_BUSI" / "labelsTr" / "benign_0001.png").size == (32, 32)


def test_id_used_by_another_dataset(raw, busi, tmp_path, monkeypatch, capsys):
    (raw / "Dataset601_Prostate").mkdir(parents=True)
    fails(capsys, ["busi", str(busi)], f"dataset id 601 is already used by {raw / 'Dataset601_Prostate'}", "-d")
    fails(capsys, ["busi", str(busi), "--overwrite"], "Dataset601_Prostate")
    preprocessed = tmp_path / "preprocessed"
    (preprocessed / "Dataset605_Liver").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    fails(capsys, ["busi", str(busi), "-d", "605"], f"already used by {preprocessed / 'Dataset605_Liver'}")
    results = tmp_path / "results"
    (results / "Dataset606_Heart").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_results", str(results))
    fails(capsys, ["busi", str(busi), "-d", "606"], f"already used by {results / 'Dataset606_Heart'}")
    assert leftovers(raw) == ["Dataset601_Prostate"]


def test_interrupted_conversion_leaves_nothing(raw, busi, monkeypatch, capsys):
    real_convert_case = writer.convert_case
    calls = []

    def interrupted_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_convert_case(*args, **kwargs)

    monkeypatch.setattr(writer, "convert_case", interrupted_after_two)
    assert main(["busi", str(busi), "-np", "1"]) == 130
    assert "Interrupted" in capsys.readouterr().err
    assert len(calls) == 3
    assert leftovers(raw) == []


# --- arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["busi", "SRC", "--size", "64", "--native"],
    ["kvasir", "SRC"],
    ["busi", "SRC", "-d", "six"],
    ["busi"],
])
def test_bad_arguments_rejected_by_parser(raw, busi, argv, capsys):
    argv = [str(busi) if a == "SRC" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: nnUNetv2_convert_allukan_dataset" in capsys.readouterr().err
    assert leftovers(raw) == []


@pytest.mark.parametrize("dataset, extra, message", [
    ("busi", ["--size", "0"], "--size must be between 1 and"),
    ("busi", ["-d", "1000"], "between 1 and 999"),
    ("busi", ["-d", "0"], "between 1 and 999"),
    ("cvc", ["--include-normal"], "--include-normal applies to BUSI only"),
])
def test_bad_argument_values(raw, busi, cvc_tif, dataset, extra, message, capsys):
    source = busi if dataset == "busi" else cvc_tif
    fails(capsys, [dataset, str(source), *extra], message)
    assert leftovers(raw) == []


def test_negative_process_count(raw, busi, capsys):
    assert main(["busi", str(busi), "-np", "-1"]) == 1
    assert "-np must be >= 0" in capsys.readouterr().err


def test_nnunet_raw_not_set(busi, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    fails(capsys, ["busi", str(busi)], "nnUNet_raw is not set")


def test_console_script_exit_code(raw, tmp_path):
    script = Path(sys.executable).parent / "nnUNetv2_convert_allukan_dataset"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    done = subprocess.run([str(script), "glas", str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "Nothing was written" in done.stderr


def test_sigterm_during_conversion_leaves_nothing(tmp_path):
    script = Path(sys.executable).parent / "nnUNetv2_convert_allukan_dataset"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    # enough cases that the conversion is still running when the signal arrives (tens of ms per case)
    source = make_synthetic_busi(tmp_path / "big", n_benign=40, n_malignant=0, n_normal=0, sizes=((320, 240),))
    raw_folder = tmp_path / "raw"
    env = {**os.environ, "nnUNet_raw": str(raw_folder)}
    env.pop("nnUNet_preprocessed", None)
    env.pop("nnUNet_results", None)
    stderr_file = tmp_path / "stderr.txt"
    with open(stderr_file, "w") as stderr:
        process = subprocess.Popen([str(script), "busi", str(source), "--native", "-np", "1"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        # wait until some cases are written into the temporary folder
        while time.monotonic() < deadline and not list(raw_folder.glob(".tmp_*/labelsTr/*.png")):
            assert process.poll() is None, stderr_file.read_text()
            time.sleep(0.05)
        assert list(raw_folder.glob(".tmp_*/labelsTr/*.png")), "conversion did not start in time"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert leftovers(raw_folder) == []
