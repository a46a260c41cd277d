"""3D end to end through nnU-Net's own console commands, on CPU, with temporary nnUNet_* folders.

A tiny synthetic dataset that this test writes itself -- NIfTI volumes of 16 x 32 x 32 voxels at an anisotropic
spacing of 2 x 1 x 1 mm, two input channels, two foreground labels (a sphere and a box) -- goes through
``nnUNetv2_plan_and_preprocess -c 3d_fullres``, ``nnUNetv2_train ... 3d_fullres 0`` with
``nnUNetTrainerKAUNet_smoke`` (nnU-Net's planned PlainConvUNet, fully KA; 10 iterations, as nnU-Net's 250 per epoch
take many minutes on 2 cores) and ``nnUNetTrainerAllUKAN_1epoch`` (ALL U-KAN in 3D, paper protocol), and
``nnUNetv2_predict`` for both. Checked: the model folders record the KA networks in the ``architecture``
entry, no plain convolution is left, predictions have the labels' shape, geometry and values.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_commands import nnunet_environment, run_command

pytestmark = pytest.mark.slow

DATASET_ID = 988
DATASET_NAME = f"Dataset{DATASET_ID}_KASpheres3D"
NUM_TRAIN_CASES = 8
NUM_TEST_CASES = 2
SHAPE = (16, 32, 32)  # z, y, x voxels
SPACING = (2.0, 1.0, 1.0)  # z, y, x in mm: anisotropic, so the planner pools z later than x and y


def write_volume(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(SPACING)))  # SimpleITK spacing is x, y, z
    sitk.WriteImage(image, str(path))


def write_sphere_dataset(raw_folder: Path, seed: int = 0) -> Path:
    """Two channels (0: sphere bright, 1: box bright), labels 0 background, 1 sphere, 2 box."""
    rng = np.random.default_rng(seed)
    folder = raw_folder / DATASET_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    zz, yy, xx = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    for i in range(NUM_TRAIN_CASES + NUM_TEST_CASES):
        centre = rng.uniform(10, 22, 3)
        radius = rng.uniform(5, 8)
        sphere = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
        corner = rng.integers(2, 8, 3)
        box = np.zeros(SHAPE, bool)
        box[corner[0]: corner[0] + 3, corner[1]: corner[1] + 6, corner[2]: corner[2] + 6] = True
        box &= ~sphere
        label = np.where(sphere, 1, np.where(box, 2, 0)).astype(np.uint8)
        images, labels = ("imagesTr", "labelsTr") if i < NUM_TRAIN_CASES else ("imagesTs", "labelsTs")
        for channel, structure in enumerate((sphere, box)):
            volume = rng.normal(0.0, 0.3, SHAPE) + 2.0 * structure
            write_volume(volume.astype(np.float32), folder / images / f"sph_{i:03d}_{channel:04d}.nii.gz")
        write_volume(label, folder / labels / f"sph_{i:03d}.nii.gz")
    dataset_json = {"channel_names": {"0": "MR_A", "1": "MR_B"},
                    "labels": {"background": 0, "sphere": 1, "box": 2},
                    "numTraining": NUM_TRAIN_CASES, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return folder


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory) -> dict:
    return nnunet_environment(tmp_path_factory.mktemp("nnunet_e2e_3d"))


@pytest.fixture(scope="module")
def preprocessed(nnunet_env) -> Path:
    write_sphere_dataset(Path(nnunet_env["nnUNet_raw"]))
    run_command(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres",
                 "--verify_dataset_integrity", "-np", "2", "-npfp", "2"], nnunet_env | {"nnUNet_n_proc_DA": "2"},
                timeout=1800)
    return Path(nnunet_env["nnUNet_preprocessed"]) / DATASET_NAME


def _train_and_predict(trainer: str, nnunet_env: dict, tmp_path: Path) -> tuple[Path, Path]:
    run_command(["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"],
                nnunet_env, timeout=2400)
    model = Path(nnunet_env["nnUNet_results"]) / DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    raw = Path(nnunet_env["nnUNet_raw"]) / DATASET_NAME
    out = tmp_path / "predictions"
    run_command(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID),
                 "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"],
                nnunet_env, timeout=1800)
    return model, out


def _check_predictions(out: Path, nnunet_env: dict) -> None:
    raw = Path(nnunet_env["nnUNet_raw"]) / DATASET_NAME
    references = sorted((raw / "labelsTs").glob("*.nii.gz"))
    assert len(references) == NUM_TEST_CASES
    for reference_file in references:
        predicted_file = out / reference_file.name
        assert predicted_file.is_file()
        predicted, reference = sitk.ReadImage(str(predicted_file)), sitk.ReadImage(str(reference_file))
        assert predicted.GetSize() == reference.GetSize()
        assert np.allclose(predicted.GetSpacing(), reference.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(predicted)).tolist()) <= {0, 1, 2}


def _plans_architecture(model: Path) -> dict:
    return json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]


def test_kaunet_trains_and_predicts_3d_fullres(nnunet_env, preprocessed, tmp_path):
    model, out = _train_and_predict("nnUNetTrainerKAUNet_smoke", nnunet_env, tmp_path)
    architecture = _plans_architecture(model)
    assert architecture["network_class_name"] == "nnunet_allukan.networks.ka_unet.KAPlainConvUNet"
    assert architecture["arch_kwargs"]["conv_op"] == "nnunet_allukan.layers.ka.KAConv3d"
    assert architecture["arch_kwargs"]["transpconv_op"] == "nnunet_allukan.layers.ka_transpose.KAConvTranspose3d"
    # the preprocessed plans (nnU-Net's own trainers) are untouched
    planned = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert planned["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith(".PlainConvUNet")
    log = "\n".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert "fully KA" in log and "Conv 0" not in log and "KAConvTranspose" in log
    _check_predictions(out, nnunet_env)


def test_allukan_trains_and_predicts_3d_fullres(nnunet_env, preprocessed, tmp_path):
    model, out = _train_and_predict("nnUNetTrainerAllUKAN_1epoch", nnunet_env, tmp_path)
    architecture = _plans_architecture(model)
    assert architecture["network_class_name"] == "nnunet_allukan.networks.ukan.UKAN"
    assert architecture["arch_kwargs"]["conv_op"] == "nnunet_allukan.layers.ka.KAConv3d"
    strides = architecture["arch_kwargs"]["strides"]
    assert len(strides) == 5 and strides[0][0] == 1 and strides[0][1:] == [2, 2]  # z (2 mm) is pooled later
    log = "\n".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert "Table 2 row 13" in log and "KAConv 31, KALinear 12" in log
    _check_predictions(out, nnunet_env)
