"""3D end to end through nnU-Net's own console commands, on CPU, with temporary nnUNet_* folders.

The tiny synthetic 3D dataset of tests/e2e_datasets.py -- NIfTI volumes of 16 x 32 x 32 voxels at an anisotropic
spacing of 2 x 1 x 1 mm, two input channels, two foreground labels (a sphere and a box), planned ``3d_fullres``
once for the session -- goes through ``nnUNetv2_train ... 3d_fullres 0`` with ``nnUNetTrainerKAUNet_smoke``
(nnU-Net's planned PlainConvUNet, fully KA; 10 iterations, as nnU-Net's 250 per epoch take many minutes on 2
cores) and ``nnUNetTrainerAllUKAN_1epoch`` (ALL U-KAN in 3D, paper protocol), and ``nnUNetv2_predict`` for both
(the two trainings, then the two predictions, run side by side). Checked: the model folders record the KA
networks in the ``architecture`` entry, no plain convolution is left, predictions have the labels' shape,
geometry and values.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from e2e_datasets import SPHERES_ID, SPHERES_NAME, SPHERES_TEST_CASES
from nnunet_commands import run_commands

pytestmark = pytest.mark.slow

DATASET_ID, DATASET_NAME = SPHERES_ID, SPHERES_NAME
TRAINERS = ("nnUNetTrainerKAUNet_smoke", "nnUNetTrainerAllUKAN_1epoch")


@pytest.fixture(scope="module")
def preprocessed(nnunet_datasets) -> Path:
    return Path(nnunet_datasets["nnUNet_preprocessed"]) / DATASET_NAME


@pytest.fixture(scope="module")
def trained(nnunet_datasets, tmp_path_factory) -> dict:
    """Both trainers trained on fold 0, then both predict the test volumes: {trainer: (model folder, predictions)}."""
    run_commands([["nnUNetv2_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"]
                  for trainer in TRAINERS], nnunet_datasets, timeout=2400)
    raw = Path(nnunet_datasets["nnUNet_raw"]) / DATASET_NAME
    results = {}
    for trainer in TRAINERS:
        model = Path(nnunet_datasets["nnUNet_results"]) / DATASET_NAME / f"{trainer}__nnUNetPlans__3d_fullres"
        assert (model / "fold_0" / "checkpoint_final.pth").is_file()
        results[trainer] = (model, tmp_path_factory.mktemp("predictions_3d"))
    run_commands([["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(DATASET_ID),
                   "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"]
                  for trainer, (_, out) in results.items()], nnunet_datasets, timeout=1800)
    return results


def _check_predictions(out: Path, nnunet_datasets: dict) -> None:
    raw = Path(nnunet_datasets["nnUNet_raw"]) / DATASET_NAME
    references = sorted((raw / "labelsTs").glob("*.nii.gz"))
    assert len(references) == SPHERES_TEST_CASES
    for reference_file in references:
        predicted_file = out / reference_file.name
        assert predicted_file.is_file()
        predicted, reference = sitk.ReadImage(str(predicted_file)), sitk.ReadImage(str(reference_file))
        assert predicted.GetSize() == reference.GetSize()
        assert np.allclose(predicted.GetSpacing(), reference.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(predicted)).tolist()) <= {0, 1, 2}


def _plans_architecture(model: Path) -> dict:
    return json.loads((model / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]


def test_kaunet_trains_and_predicts_3d_fullres(trained, nnunet_datasets, preprocessed):
    model, out = trained["nnUNetTrainerKAUNet_smoke"]
    architecture = _plans_architecture(model)
    assert architecture["network_class_name"] == "nnunet_allukan.networks.ka_unet.KAPlainConvUNet"
    assert architecture["arch_kwargs"]["conv_op"] == "nnunet_allukan.layers.ka.KAConv3d"
    assert architecture["arch_kwargs"]["transpconv_op"] == "nnunet_allukan.layers.ka_transpose.KAConvTranspose3d"
    # the preprocessed plans (nnU-Net's own trainers) are untouched
    planned = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert planned["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith(".PlainConvUNet")
    log = "\n".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert "fully KA" in log and "Conv 0" not in log and "KAConvTranspose" in log
    _check_predictions(out, nnunet_datasets)


def test_allukan_trains_and_predicts_3d_fullres(trained, nnunet_datasets):
    model, out = trained["nnUNetTrainerAllUKAN_1epoch"]
    architecture = _plans_architecture(model)
    assert architecture["network_class_name"] == "nnunet_allukan.networks.ukan.UKAN"
    assert architecture["arch_kwargs"]["conv_op"] == "nnunet_allukan.layers.ka.KAConv3d"
    strides = architecture["arch_kwargs"]["strides"]
    assert len(strides) == 5 and strides[0][0] == 1 and strides[0][1:] == [2, 2]  # z (2 mm) is pooled later
    log = "\n".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert "Table 2 row 13" in log and "KAConv 31, KALinear 12" in log
    _check_predictions(out, nnunet_datasets)
