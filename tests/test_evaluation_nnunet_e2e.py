"""The evaluation on real nnU-Net output: convert -> plan/preprocess -> train ALL U-KAN (1 epoch) folds 0 and 1
(two seeds keep CI short) -> nnUNetv2_allukan_evaluate, overlays and activation plot. Checks the contract with the trainers (split file in
the model folder, validation folders, checkpoint layout) rather than accuracy."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TRAINER = "nnUNetTrainerAllUKAN_1epoch"


def nnunet(command: str, *args: str, env: dict) -> None:
    executable = BIN / command
    result = subprocess.run([str(executable) if executable.exists() else command, *args], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    synthetic = pytest.importorskip("dataset_conversion.synthetic")
    root = tmp_path_factory.mktemp("e2e")
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "res"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2",
               NNUNET_ALLUKAN_COMPILE="0")
    env.pop("nnUNet_compile", None)
    for key in ("raw", "pre", "res"):
        (root / key).mkdir()
    source = synthetic.make_synthetic_busi(root / "source", n_benign=8, n_malignant=6, n_normal=0, seed=1)
    nnunet("nnUNetv2_convert_allukan_dataset", "busi", str(source), "-d", "601", "--size", "64", env=env)
    nnunet("nnUNetv2_plan_and_preprocess", "-d", "601", "-c", "2d", "-np", "2", env=env)
    for fold in ("0", "1"):
        nnunet("nnUNetv2_train", "601", "2d", fold, "-tr", TRAINER, "-device", "cpu", env=env)
    return root, env


def test_evaluate_real_nnunet_results(trained, monkeypatch, capsys):
    from nnunet_allukan.commands.evaluation import evaluate_main, plot_activations_main, plot_overlays_main

    root, env = trained
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    evaluate_main(["-d", "601", "-tr", TRAINER, "-f", "0", "1"])
    out = root / "res" / "Dataset601_BUSI" / "allukan_evaluation"
    results = json.loads((out / "results.json").read_text())
    method = results["datasets"]["Dataset601_BUSI"]["methods"][TRAINER]
    model = root / "res" / "Dataset601_BUSI" / f"{TRAINER}__nnUNetPlans__2d"
    splits = json.loads((model / "splits_allukan_paper.json").read_text())
    assert sorted(method["folds"]) == ["0", "1"]
    for fold in range(2):
        scores = method["folds"][str(fold)]
        assert scores["batch_order"] == "split" and scores["splits_file"].endswith("splits_allukan_paper.json")
        assert list(scores["per_case"]) == splits[fold]["val"]  # loader order of the trainer's split
        # per-image F1 equals nnU-Net's own per-case Dice where both are defined
        summary = json.loads((model / f"fold_{fold}" / "validation" / "summary.json").read_text())
        for case in summary["metric_per_case"]:
            name = Path(case["prediction_file"]).name[:-4]
            metrics = next(iter(case["metrics"].values()))
            if metrics["n_ref"] + metrics["n_pred"] > 0:
                assert scores["per_case"][name]["f1"] == pytest.approx(100 * metrics["Dice"], abs=2e-3)
                assert scores["per_case"][name]["iou"] == pytest.approx(100 * metrics["IoU"], abs=2e-3)
    assert method["paper"]["table1"]["iou"] == [66.14, 5.43]
    assert "ALL U-KAN (nnUNetTrainerAllUKAN_1epoch)" in (out / "results.md").read_text()

    plot_overlays_main(["-d", "601", "-tr", TRAINER, "-n", "2"])
    with Image.open(root / "res" / "Dataset601_BUSI" / "allukan_figures" / "overlays_fold0.png") as image:
        assert np.asarray(image).std() > 0
    plot_activations_main(["-d", "601", "-tr", TRAINER, "-f", "1", "-n", "4"])
    assert (model / "fold_1" / "activations_checkpoint_final.png").is_file()
    assert "block1.layer.fc1" in capsys.readouterr().out
