"""benchmarks/benchmark_learning.py on the session's preprocessed 2D disc dataset: two trainers at one tiny budget,
twice, through nnU-Net's own nnUNetv2_train; the budget reaches the trainers, the table, JSON and plot are written, and
the user's nnUNet_results is left alone."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_datasets import DISC_ID, DISC_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchmark_learning  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark_learning.py"
TRAINERS = ["nnUNetTrainer", "nnUNetTrainerKAUNet"]


def test_two_trainers_at_an_equal_budget_twice(nnunet_datasets, tmp_path):
    env = nnunet_datasets
    results_before = sorted(p.name for p in Path(env["nnUNet_results"]).glob("*/*"))
    output = tmp_path / "learning"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "-d", str(DISC_ID), "-c", "2d", "-f", "0", "-tr", *TRAINERS,
         "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--batch", "3", "--repeats", "2",
         "-o", str(output), "-device", "cpu"], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((output / "learning_summary.json").read_text())
    assert summary["failed"] == [] and sorted(summary["results"]) == sorted(TRAINERS) and summary["repeats"] == 2
    for trainer in TRAINERS:
        combined = summary["results"][trainer]
        assert len(combined["runs"]) == 2
        dice = [run["validation_dice"] for run in combined["runs"]]
        assert all(0.0 <= d <= 1.0 for d in dice) and combined["validation_dice"] == pytest.approx(sum(dice) / 2)
        assert len(combined["pseudo_dice"]) == len(combined["train_loss"]) == 1  # --epochs 1
        for repeat in (1, 2):
            log = (output / "logs" / f"{trainer}_run{repeat}.log").read_text()
            assert "'batch_size': 3" in log  # --batch reached the trainer's configuration
            assert "Benchmark budget: 1 epochs of 2 training / 1 validation iterations, batch size 3" in log
            assert (output / "results" / f"run{repeat}" / DISC_NAME / f"{trainer}__budget__nnUNetPlans__2d" /
                    "fold_0" / "checkpoint_final.pth").is_file()
        assert re.search(rf"{trainer} +[\d.]+ +[+-][\d.]+ +[\d.]+ +[\d.]+ +{dice[0]:.4f} {dice[1]:.4f}",
                         result.stdout), result.stdout[-2000:]
    assert (output / "learning_curves.png").stat().st_size > 0
    assert sorted(p.name for p in Path(env["nnUNet_results"]).glob("*/*")) == results_before


def test_combine_runs_averages_the_runs_epoch_by_epoch():
    runs = [{"validation_dice": 0.5, "mean_epoch_seconds": 10.0, "pseudo_dice": [0.1, 0.3], "train_loss": [1.0, 0.5]},
            {"validation_dice": 0.7, "mean_epoch_seconds": 20.0, "pseudo_dice": [0.3, 0.5], "train_loss": [0.8, 0.3]}]
    combined = benchmark_learning.combine_runs(runs)
    assert combined["validation_dice"] == pytest.approx(0.6) and combined["mean_epoch_seconds"] == 15.0
    assert combined["pseudo_dice"] == pytest.approx([0.2, 0.4]) and combined["train_loss"] == pytest.approx([0.9, 0.4])
    assert combined["runs"] == runs


def test_refuses_a_single_trainer(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "-d", "1", "-tr", "nnUNetTrainer", "--epochs", "1",
                             "--iterations", "1", "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode != 0 and "two or more different trainers" in result.stderr
    assert not (tmp_path / "out").exists()


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("spec, expected", [
    ("nnUNetTrainerKAUNet", ("nnUNetTrainerKAUNet", {}, "nnUNetTrainerKAUNet")),
    ("nnUNetTrainerKAUNet:spline_gradient_scaling=False",
     ("nnUNetTrainerKAUNet", {"spline_gradient_scaling": False}, "nnUNetTrainerKAUNet__spline_gradient_scaling-False")),
    ("T:a=1,b=0.5", ("T", {"a": 1, "b": 0.5}, "T__a-1__b-0.5")),
])
def test_trainer_specs_name_the_class_its_attributes_and_the_run(spec, expected):
    assert _script_module().parse_trainer(spec) == expected


@pytest.mark.parametrize("spec, message", [("T:spline_gradient_scaling", "expected NAME:attribute=value"),
                                           ("T:a=off", "not a Python literal"),
                                           ("T:a='x/y'", "simple values")])
def test_refuses_a_malformed_trainer_spec(tmp_path, spec, message):
    result = subprocess.run([sys.executable, str(SCRIPT), "-d", "1", "-tr", "nnUNetTrainer", spec, "--epochs", "1",
                             "--iterations", "1", "-o", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_one_trainer_with_an_empty_attribute_list_is_not_a_second_run(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "-d", "1", "-tr", "nnUNetTrainer", "nnUNetTrainer:",
                             "--epochs", "1", "--iterations", "1", "-o", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "two or more different trainers" in result.stderr


def test_an_attribute_the_trainer_lacks_stops_the_run_before_training(tmp_path):
    module = _script_module()
    budget = {"epochs": 1, "iterations": 1, "val_iterations": 1, "batch": None, "attributes": {"no_such_option": 1}}
    result = subprocess.run([sys.executable, "-c", module._RUNNER, json.dumps(budget), "nnUNetTrainerKAUNet",
                             "nnUNetTrainerKAUNet__no_such_option-1", "1", "2d", "0"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode != 0 and "nnUNetTrainerKAUNet has no attribute 'no_such_option'" in result.stderr
