"""The first mistakes of a new user end in one line that says what to do: -device cuda (nnU-Net's default) on a
machine without CUDA, before anything is written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_allukan.training import trainers
from nnunet_allukan.training.base import NoCudaDevice
from plans_helpers import minimal_plans

REPOSITORY = Path(__file__).resolve().parents[1]
DATASET_JSON = {"labels": {"background": 0, "lesion": 1}, "channel_names": {"0": "R", "1": "G", "2": "B"},
                "numTraining": 2, "file_ending": ".png"}

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


@needs_no_cuda
@pytest.mark.parametrize("name", ["nnUNetTrainerAllUKAN", "nnUNetTrainerUKAN_MLP_5epochs", "nnUNetTrainerTable2Row9",
                                  "nnUNetTrainerKAUNet", "nnUNetTrainerKAUNet_smoke"])
def test_cuda_without_a_cuda_device_is_one_line_and_writes_nothing(name, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    with pytest.raises(NoCudaDevice) as stopped:
        getattr(trainers, name)(minimal_plans("2d", [64, 64]), "2d", 0, DATASET_JSON, torch.device("cuda"))
    assert isinstance(stopped.value, SystemExit)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(f"{name}: no CUDA device: add -device cpu")
    assert not (tmp_path / "results").exists()


def test_cpu_device_passes_the_check(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    trainer = trainers.nnUNetTrainerAllUKAN(minimal_plans("2d", [64, 64]), "2d", 0, DATASET_JSON, torch.device("cpu"))
    assert trainer.device.type == "cpu" and (tmp_path / "results").is_dir()


@needs_no_cuda
def test_nnunetv2_train_without_device_option_says_add_device_cpu(tmp_path):
    """nnU-Net's own nnUNetv2_train, -device left at its default (cuda): one line on stderr, no results folder."""
    preprocessed = tmp_path / "preprocessed" / "Dataset999_X"
    preprocessed.mkdir(parents=True)
    (preprocessed / "nnUNetPlans.json").write_text(json.dumps(minimal_plans("2d", [64, 64])))
    (preprocessed / "dataset.json").write_text(json.dumps(DATASET_JSON))
    executable = Path(sys.executable).with_name("nnUNetv2_train")
    if not executable.exists():
        pytest.skip("nnUNetv2_train is not installed next to this Python")
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "nnUNet_raw": str(tmp_path / "raw"),
           "nnUNet_preprocessed": str(tmp_path / "preprocessed"), "nnUNet_results": str(tmp_path / "results")}
    result = subprocess.run([str(executable), "999", "2d", "0", "-tr", "nnUNetTrainerAllUKAN_5epochs"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnUNetTrainerAllUKAN_5epochs: no CUDA device: add -device cpu "
                                                   "(nnUNetv2_train ... -tr nnUNetTrainerAllUKAN_5epochs -device cpu)")
    assert not (tmp_path / "results").exists()
