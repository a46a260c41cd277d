"""benchmarks/benchmark_learning.py on the session's preprocessed 2D disc dataset: two trainers at one tiny budget
through nnU-Net's own nnUNetv2_train; the budget reaches the trainers, the table, JSON and plot are written, and
the user's nnUNet_results is left alone."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_datasets import DISC_ID, DISC_NAME

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_learning.py"
TRAINERS = ["nnUNetTrainer", "nnUNetTrainerKAUNet"]


def test_two_trainers_at_an_equal_budget(nnunet_datasets, tmp_path):
    env = nnunet_datasets
    results_before = sorted(p.name for p in Path(env["nnUNet_results"]).glob("*/*"))
    output = tmp_path / "learning"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "-d", str(DISC_ID), "-c", "2d", "-f", "0", "-tr", *TRAINERS,
         "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--batch", "3", "-o", str(output),
         "-device", "cpu"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((output / "learning_summary.json").read_text())
    assert summary["failed"] == [] and sorted(summary["results"]) == sorted(TRAINERS)
    for trainer in TRAINERS:
        run = summary["results"][trainer]
        assert 0.0 <= run["validation_dice"] <= 1.0
        assert len(run["pseudo_dice"]) == len(run["train_loss"]) == 1  # --epochs 1
        log = (output / "logs" / f"{trainer}.log").read_text()
        assert "'batch_size': 3" in log  # --batch reached the trainer's configuration
        assert (output / "results" / DISC_NAME / f"{trainer}__budget__nnUNetPlans__2d" / "fold_0" /
                "checkpoint_final.pth").is_file()
        assert trainer in result.stdout
    assert (output / "learning_curves.png").stat().st_size > 0
    assert sorted(p.name for p in Path(env["nnUNet_results"]).glob("*/*")) == results_before


def test_refuses_a_single_trainer(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "-d", "1", "-tr", "nnUNetTrainer", "--epochs", "1",
                             "--iterations", "1", "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode != 0 and "two or more different trainers" in result.stderr
    assert not (tmp_path / "out").exists()
