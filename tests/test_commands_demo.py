"""nnUNetv2_allukan_demo: argument checks, scoring and the overlay (the full run is minutes: run by hand)."""
import numpy as np
import pytest
from PIL import Image

from nnunet_allukan.commands import demo


def test_bad_size_is_an_error_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "demo"
    assert demo.main(["-o", str(output), "--size", "50"]) == 1
    assert "multiple of 32" in capsys.readouterr().err
    assert not output.exists()


def test_messages_name_the_command(tmp_path, capsys):
    assert demo.main(["-o", str(tmp_path / "demo"), "--size", "50"]) == 1
    assert "\nnnUNetv2_allukan_demo: error: --size must be" in capsys.readouterr().err


def test_existing_output_folder_needs_overwrite(tmp_path, capsys):
    output = tmp_path / "demo"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert demo.main(["-o", str(output)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (output / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("user_env, expected", [
    ({}, "1000"),  # the demo's own setting (nnunet_allukan.openmp.CPU_SPIN_COUNT)
    ({"GOMP_SPINCOUNT": "50"}, "50"),  # the user's own setting is kept
    ({"OMP_WAIT_POLICY": "PASSIVE"}, None),  # a wait policy of the user's: nothing added
])
def test_cpu_steps_run_with_openmp_spinning_bounded(tmp_path, monkeypatch, capsys, user_env, expected):
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in user_env.items():
        monkeypatch.setenv(name, value)
    seen = {}

    def first_step(step, args, env, log_folder):
        seen.update(step=step, env=env)
        raise demo.DemoError("stopped after the first step")

    monkeypatch.setattr(demo, "run_step", first_step)
    assert demo.main(["-o", str(tmp_path / "demo"), "--benign", "6", "--malignant", "6"]) == 1
    assert seen["step"] == "convert" and seen["env"].get("GOMP_SPINCOUNT") == expected
    assert "stopped after the first step" in capsys.readouterr().err


def _write_case(folder, case, image, label, prediction):
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    (folder / "predictions").mkdir(exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{case}_0000.png")
    Image.fromarray(label.astype(np.uint8)).save(folder / "labels" / f"{case}.png")
    Image.fromarray(prediction.astype(np.uint8)).save(folder / "predictions" / f"{case}.png")


def test_scores_and_overlay(tmp_path):
    label = np.zeros((32, 32), dtype=bool)
    label[8:24, 8:24] = True  # 256 pixels
    half = label.copy()
    half[8:16] = False  # 128 pixels, all inside the label
    image = np.full((32, 32, 3), 100, dtype=np.uint8)
    _write_case(tmp_path, "a", image, label, label)
    _write_case(tmp_path, "b", image, label, half)
    scores = demo.score_predictions(["a", "b"], tmp_path / "labels", tmp_path / "predictions")
    assert scores["per_case"]["a"]["IoU"] == pytest.approx(1.0)
    assert scores["per_case"]["b"]["IoU"] == pytest.approx(0.5, abs=1e-6)
    assert scores["per_image"]["IoU"] == pytest.approx(0.75, abs=1e-6)
    # reference protocol: one batch, IoU pooled over both images = (256 + 128) / (256 + 256)
    assert scores["reference_batch_pooled"]["IoU"] == pytest.approx(0.75, abs=1e-6)

    png = tmp_path / "overlay.png"
    demo.write_overlay_png(["a", "b"], tmp_path / "images", tmp_path / "labels", tmp_path / "predictions", png)
    picture = np.asarray(Image.open(png))
    scale = 192 // 32
    assert picture.shape == (demo.LEGEND_HEIGHT + 2 * 32 * scale, 3 * 32 * scale, 3)
    legend, picture = picture[:demo.LEGEND_HEIGHT], picture[demo.LEGEND_HEIGHT:]
    panel = 32 * scale
    for column, (label, rgb) in enumerate(demo.LEGEND):  # each panel named; the tinted ones with their colour
        header = legend[:, column * panel:(column + 1) * panel]
        assert (header.max(axis=-1) < 100).sum() > 20, f"no text over panel {label!r}"
        swatches = np.all(header == np.asarray(demo.GROUND_TRUTH_RGB), axis=-1).sum(), \
            np.all(header == np.asarray(demo.PREDICTION_RGB), axis=-1).sum()
        expected = {None: (0, 0), demo.GROUND_TRUTH_RGB: (demo.SWATCH ** 2, 0),
                    demo.PREDICTION_RGB: (0, demo.SWATCH ** 2)}[rgb]
        assert swatches == expected, label
    row_b = picture[32 * scale:]
    inside, outside = (12 * scale, 12 * scale), (2 * scale, 2 * scale)
    assert tuple(row_b[inside]) == (100, 100, 100)  # raw image panel
    assert row_b[inside[0], 32 * scale + inside[1], 1] > 150  # ground truth tinted green
    assert row_b[inside[0], 64 * scale + inside[1], 0] < 150  # prediction of b is empty in rows 8..15
    assert row_b[20 * scale, 64 * scale + 12 * scale, 0] > 150  # ... and red in rows 16..23
    assert tuple(row_b[outside[0], 64 * scale + outside[1]]) == (100, 100, 100)
