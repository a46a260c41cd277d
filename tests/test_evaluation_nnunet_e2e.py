"""The evaluation on real nnU-Net output: the session's synthetic BUSI dataset (converted by
nnUNetv2_convert_allukan_dataset, planned and preprocessed once; tests/e2e_datasets.py) -> train ALL U-KAN
(1 epoch) folds 0 and 1 side by side (two seeds keep CI short) -> nnUNetv2_allukan_evaluate, overlays and
activation plot. Checks the contract with the trainers (split file in the model folder, validation folders,
checkpoint layout) rather than accuracy."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e2e_datasets import BUSI_ID, BUSI_NAME
from nnunet_commands import run_commands

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerAllUKAN_1epoch"


@pytest.fixture(scope="module")
def trained(nnunet_datasets):
    env = nnunet_datasets
    run_commands([["nnUNetv2_train", str(BUSI_ID), "2d", fold, "-tr", TRAINER, "-device", "cpu"]
                  for fold in ("0", "1")], env, timeout=1800)
    return Path(env["nnUNet_results"]), env


def test_evaluate_real_nnunet_results(trained, monkeypatch, capsys):
    from nnunet_allukan.commands.evaluation import evaluate_main, plot_activations_main, plot_overlays_main

    results_folder, env = trained
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    evaluate_main(["-d", str(BUSI_ID), "-tr", TRAINER, "-f", "0", "1"])
    out = results_folder / BUSI_NAME / "allukan_evaluation"
    results = json.loads((out / "results.json").read_text())
    method = results["datasets"][BUSI_NAME]["methods"][TRAINER]
    model = results_folder / BUSI_NAME / f"{TRAINER}__nnUNetPlans__2d"
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

    plot_overlays_main(["-d", str(BUSI_ID), "-tr", TRAINER, "-n", "2"])
    with Image.open(results_folder / BUSI_NAME / "allukan_figures" / "overlays_fold0.png") as image:
        assert np.asarray(image).std() > 0
    plot_activations_main(["-d", str(BUSI_ID), "-tr", TRAINER, "-f", "1", "-n", "4"])
    assert (model / "fold_1" / "activations_checkpoint_final.png").is_file()
    assert "block1.layer.fc1" in capsys.readouterr().out
