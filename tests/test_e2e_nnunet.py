"""End to end through nnU-Net's own console commands, on CPU, with temporary nnUNet_* folders.

A tiny synthetic RGB PNG dataset (bright discs on a dark, noisy background: trivially easy; planned once for the
session, tests/e2e_datasets.py) goes through ``nnUNetv2_train -tr <short ALL U-KAN variant>``, an
interrupted-and-continued run (``--c``), ``--val``, ``nnUNetv2_predict -tr`` and
``nnUNetv2_find_best_configuration``; ``nnUNetTrainerKAUNet_smoke`` trains and predicts on it too (independent
runs go side by side). In-process trainings check determinism, the multi-label path and the NaN guard.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_allukan.paper import SPLITS_FILE_NAME
from nnunet_allukan.training.protocol import cosine_annealing_lr, paper_splits_for_cases

from e2e_datasets import (BUSI_NAME, DISC_ID, DISC_NAME, DISC_SIZE, DISC_TEST_CASES, DISC_TRAIN_CASES,
                          SPHERES_NAME)
from nnunet_commands import BIN, BackgroundCommand, run_command, run_commands

pytestmark = pytest.mark.slow

DATASET_ID, DATASET_NAME = DISC_ID, DISC_NAME
TRAINER = "nnUNetTrainerAllUKAN_50epochs"
NUM_EPOCHS = 50
NUM_TRAIN_CASES, NUM_TEST_CASES, IMAGE_SIZE = DISC_TRAIN_CASES, DISC_TEST_CASES, DISC_SIZE
KILL_AT_EPOCH = 15  # the first run is killed when this epoch starts (about a third of the run), then continued
KAUNET_TRAINER = "nnUNetTrainerKAUNet_smoke"
TRAIN_COMMAND = ["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", TRAINER, "-device", "cpu"]
# ALL U-KAN at the paper's lr 1e-4 starts slowly: 20 epochs of this task (80 steps) still over-segment (validation
# Dice below 0.5, all-foreground 0.20); the 50-epoch schedule (200 steps, killed and continued) reaches a test
# Dice well above this bound.
MIN_TEST_DICE = 0.7


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    intersection = np.logical_and(prediction, reference).sum()
    return 2.0 * intersection / (prediction.sum() + reference.sum())


@pytest.fixture(scope="module")
def preprocessed(nnunet_datasets) -> Path:
    return Path(nnunet_datasets["nnUNet_preprocessed"]) / DATASET_NAME


def run_until_epoch_then_kill(args: list[str], env: dict, epoch: int, timeout: int) -> str:
    """Starts a training and kills it (SIGKILL, like a crash) as soon as it logs the start of ``epoch``."""
    start = time.time()
    process = subprocess.Popen([str(BIN / args[0])] + args[1:], env=env | {"PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if line.rstrip().endswith(f"Epoch {epoch}"):
                break
            assert time.time() - start < timeout, "training too slow"
    finally:
        process.kill()
        process.wait()
    assert any(line.rstrip().endswith(f"Epoch {epoch}") for line in output), "".join(output)[-4000:]
    print(f"[{time.time() - start:6.1f} s] {' '.join(args)} (killed at epoch {epoch})")
    return "".join(output)


@pytest.fixture(scope="module")
def interrupted(nnunet_datasets, preprocessed) -> dict:
    """Train, and kill the run at the start of epoch KILL_AT_EPOCH (a crash); meanwhile nnUNetTrainerKAUNet_smoke
    trains on the same data (an independent run, started alongside to share the time)."""
    kaunet = BackgroundCommand(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", KAUNET_TRAINER,
                                "-device", "cpu"], nnunet_datasets)
    model = Path(nnunet_datasets["nnUNet_results"]) / DATASET_NAME / f"{TRAINER}__nnUNetPlans__2d"
    fold = model / "fold_0"
    try:
        first_output = run_until_epoch_then_kill(TRAIN_COMMAND, nnunet_datasets, KILL_AT_EPOCH, timeout=3600)
    finally:
        kaunet.finish(timeout=1800)
    # nnU-Net's --c takes checkpoint_final, else checkpoint_latest (every 50 epochs), else checkpoint_best.
    return {"model": model, "fold": fold, "first_output": first_output,
            "final_after_kill": (fold / "checkpoint_final.pth").exists(),
            "interrupted": torch.load(fold / "checkpoint_best.pth", map_location="cpu", weights_only=False)}


@pytest.fixture(scope="module")
def trained(nnunet_datasets, interrupted) -> dict:
    """The interrupted run continued with --c to its end."""
    resumed_run = run_command(TRAIN_COMMAND + ["--c"], nnunet_datasets, timeout=3600)
    resumed = torch.load(interrupted["fold"] / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return interrupted | {"resumed_output": resumed_run.stdout, "resumed": resumed}


def test_the_session_datasets_are_planned_for_their_configurations(nnunet_datasets):
    preprocessed_root = Path(nnunet_datasets["nnUNet_preprocessed"])
    for name, configuration in ((DISC_NAME, "2d"), (BUSI_NAME, "2d"), (SPHERES_NAME, "3d_fullres")):
        plans = json.loads((preprocessed_root / name / "nnUNetPlans.json").read_text())
        assert configuration in plans["configurations"], name
        assert any((preprocessed_root / name / f"nnUNetPlans_{configuration}").iterdir()), name


def test_training_log_states_network_and_protocol(interrupted):
    assert not interrupted["final_after_kill"]
    log = "\n".join(p.read_text() for p in sorted(interrupted["fold"].glob("training_log_*.txt")))
    assert "Network: Table 2 row 13 (ALL U-KAN" in log and "nnunet_allukan.networks.ukan.UKAN" in log
    assert "KAConv 31" in log and "KALinear 12" in log
    assert "Paper split fold 0 (seed 2981" in log and "32 training, 8 validation cases" in log
    assert f"Adam lr 0.0001, weight decay 0.0001; cosine annealing to 1e-05 over {NUM_EPOCHS} epochs" in log
    assert "batch size 8; 4 training / 1 validation iterations per epoch" in log
    assert "loss 0.5 * BCE + (1 - Dice), one sigmoid output" in log


def test_model_folder_lets_the_predictor_rebuild_the_binary_sigmoid_model(trained, preprocessed):
    plans = json.loads((trained["model"] / "plans.json").read_text())
    config = plans["configurations"]["2d"]
    assert config["architecture"]["network_class_name"] == "nnunet_allukan.networks.ukan.UKAN"
    assert config["architecture"]["arch_kwargs"]["conv_op"] == "nnunet_allukan.layers.ka.KAConv2d"
    assert config["batch_size"] == 8 and all(s % 32 == 0 for s in config["patch_size"])
    dataset_json = json.loads((trained["model"] / "dataset.json").read_text())
    assert dataset_json["labels"]["disc"] == [1, 1] and dataset_json["regions_class_order"] == [1]
    assert trained["resumed"]["trainer_name"] == TRAINER
    out_weight = [v for k, v in trained["resumed"]["network_weights"].items() if v.ndim == 4][-1]
    assert out_weight.shape[0] == 1  # one output channel
    # The splits the user can read are the paper's, on the nnU-Net case ids (no original_ids here).
    splits = json.loads((preprocessed / SPLITS_FILE_NAME).read_text())
    expected = paper_splits_for_cases([f"disc_{i:03d}" for i in range(NUM_TRAIN_CASES)])
    assert splits == expected
    assert json.loads((trained["model"] / SPLITS_FILE_NAME).read_text()) == expected
    validation = sorted(p.stem for p in (trained["fold"] / "validation").glob("*.png"))
    assert validation == sorted(expected[0]["val"])


def test_continue_training_resumes_the_exact_cosine_schedule(trained):
    resumed_from = trained["interrupted"]["current_epoch"]
    assert 1 <= resumed_from <= KILL_AT_EPOCH
    assert trained["resumed"]["current_epoch"] == NUM_EPOCHS
    expected = [cosine_annealing_lr(e, NUM_EPOCHS) for e in range(NUM_EPOCHS)]
    assert trained["resumed"]["logging"]["lrs"] == pytest.approx(expected, rel=1e-12)
    assert trained["interrupted"]["logging"]["lrs"] == pytest.approx(expected[:resumed_from], rel=1e-12)
    # the continued run started where the checkpoint ended, not at epoch 0, and says so
    assert f"Epoch {resumed_from}" in trained["resumed_output"] and "Epoch 0\n" not in trained["resumed_output"]
    lr = f"{cosine_annealing_lr(resumed_from, NUM_EPOCHS):g}"
    assert (f"Continuing training from {trained['fold'] / 'checkpoint_best.pth'}: epoch {resumed_from} of "
            f"{NUM_EPOCHS}, learning rate {lr}") in trained["resumed_output"]


@pytest.fixture(scope="module")
def after_training(trained, nnunet_datasets, tmp_path_factory) -> dict:
    """What runs on the finished models, side by side: ``nnUNetv2_train --val`` (after deleting the validation
    summary) and ``nnUNetv2_predict`` of the test images with the ALL U-KAN and the KAUNet model."""
    summary = trained["fold"] / "validation" / "summary.json"
    summary.unlink()
    raw = Path(nnunet_datasets["nnUNet_raw"]) / DATASET_NAME
    out = {trainer: tmp_path_factory.mktemp("predictions_2d") for trainer in (TRAINER, KAUNET_TRAINER)}
    outputs = run_commands([TRAIN_COMMAND + ["--val"]] + [
        ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(folder), "-d", str(DATASET_ID), "-c", "2d",
         "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"] for trainer, folder in out.items()],
        nnunet_datasets, timeout=1800)
    return {"summary": summary, "predictions": out, "predict_output": outputs[1]}


def test_validation_only_rerun(after_training):
    assert after_training["summary"].is_file()


def test_predict_writes_binary_masks_that_match_the_easy_task(after_training, nnunet_datasets):
    raw = Path(nnunet_datasets["nnUNet_raw"]) / DATASET_NAME
    out = after_training["predictions"][TRAINER]
    references = sorted((raw / "labelsTs").glob("*.png"))
    assert len(references) == NUM_TEST_CASES
    scores = []
    for reference in references:
        predicted_file = out / reference.name
        assert predicted_file.is_file(), after_training["predict_output"][-2000:]
        predicted = np.asarray(Image.open(predicted_file))
        assert predicted.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert set(np.unique(predicted).tolist()) <= {0, 1}
        scores.append(dice(predicted > 0, np.asarray(Image.open(reference)) > 0))
    all_foreground = [dice(np.ones_like(r), r) for r in (np.asarray(Image.open(f)) > 0 for f in references)]
    print("test Dice per image:", np.round(scores, 3), "all-foreground:", np.round(all_foreground, 3))
    assert np.mean(scores) > MIN_TEST_DICE, scores
    assert np.mean(scores) > np.mean(all_foreground) + 0.1, (scores, all_foreground)


def test_find_best_configuration_accepts_the_trainer(after_training, nnunet_datasets):
    result = run_command(["nnUNetv2_find_best_configuration", str(DATASET_ID), "-c", "2d", "-tr", TRAINER,
                          "-f", "0", "--disable_ensembling", "-np", "2"], nnunet_datasets, timeout=1800)
    assert TRAINER in result.stdout
    assert (Path(nnunet_datasets["nnUNet_results"]) / DATASET_NAME / "inference_instructions.txt").is_file()


def _train_in_process(preprocessed: Path, monkeypatch, results: Path, dataset_json: dict | None = None,
                      trainer_name: str = "nnUNetTrainerAllUKAN_1epoch", before_run=None):
    """The trainer nnU-Net's lookup finds, built like nnUNetv2_train builds it; run_training without validation."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed.parent))
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.delenv("nnUNet_compile", raising=False)
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    if dataset_json is None:
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    trainer = trainer_class(plans=plans, configuration="2d", fold=0, dataset_json=dataset_json,
                            device=torch.device("cpu"))
    if before_run is not None:
        before_run(trainer)
    trainer.run_training()
    return trainer


def test_two_runs_with_single_process_augmentation_give_identical_losses(preprocessed, monkeypatch, tmp_path):
    losses = []
    for run in ("a", "b"):
        trainer = _train_in_process(preprocessed, monkeypatch, tmp_path / run)
        checkpoint = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu",
                                weights_only=False)
        losses.append((checkpoint["logging"]["train_losses"], checkpoint["logging"]["val_losses"]))
    assert np.isfinite(losses[0][0]).all()
    assert losses[0] == losses[1]


def test_several_foreground_labels_train_with_softmax_and_k_plus_1_outputs(preprocessed, monkeypatch, tmp_path):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    dataset_json["labels"] = {"background": 0, "disc": 1, "ring": 2}
    trainer = _train_in_process(preprocessed, monkeypatch, tmp_path, dataset_json)
    assert not trainer.label_manager.has_regions and trainer.label_manager.num_segmentation_heads == 3
    assert isinstance(trainer.loss.loss, DC_and_CE_loss)  # inside the project's non-finite-loss guard
    with torch.no_grad():
        output = trainer.network(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert output.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert np.isfinite(trainer.logger.get_value("train_losses", step=-1))


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(preprocessed, monkeypatch, tmp_path):
    """A corrupt case (NaN in the batch) in epoch 1 of 2: a clear stop; epoch 0's checkpoint untouched."""
    state = {}

    def corrupt_epoch_1(trainer):
        original = trainer.train_step

        def train_step(batch):
            if trainer.current_epoch == 1:
                batch["data"][0, 0, 0, 0] = float("nan")
                best = Path(trainer.output_folder) / "checkpoint_best.pth"
                state.setdefault("best", (best.stat().st_mtime_ns, best.read_bytes()))
            return original(batch)

        trainer.train_step = train_step

    with pytest.raises(SystemExit) as exit_info:
        _train_in_process(preprocessed, monkeypatch, tmp_path, trainer_name="nnUNetTrainerAllUKAN_2epochs",
                          before_run=corrupt_epoch_1)
    message = str(exit_info.value)
    assert message.startswith("ERROR: Training stopped: the loss became NaN in epoch 1, before the optimizer step")
    assert "a preprocessed case is corrupt" in message and "--verify_dataset_integrity" in message
    assert "checkpoint_best.pth" in message and "continue from them with --c" in message
    fold = next(tmp_path.glob("*/nnUNetTrainerAllUKAN_2epochs__nnUNetPlans__2d/fold_0"))
    best = fold / "checkpoint_best.pth"
    assert (best.stat().st_mtime_ns, best.read_bytes()) == state["best"]
    assert not (fold / "checkpoint_final.pth").exists()
    weights = torch.load(best, map_location="cpu", weights_only=False)["network_weights"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    log = "\n".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "Training stopped: the loss became NaN in epoch 1" in log


def test_kaunet_trains_and_predicts_on_the_2d_data(after_training, nnunet_datasets):
    """nnUNetTrainerKAUNet (nnU-Net's planned 2D U-Net, fully KA, nnU-Net's own protocol) with the console commands
    (trained in the ``interrupted`` fixture, predicting in ``after_training``)."""
    model = Path(nnunet_datasets["nnUNet_results"]) / DATASET_NAME / f"{KAUNET_TRAINER}__nnUNetPlans__2d"
    assert (model / "fold_0" / "checkpoint_final.pth").is_file()
    architecture = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["architecture"]
    assert architecture["network_class_name"] == "nnunet_allukan.networks.ka_unet.KAPlainConvUNet"
    assert architecture["arch_kwargs"]["conv_op"] == "nnunet_allukan.layers.ka.KAConv2d"
    raw = Path(nnunet_datasets["nnUNet_raw"]) / DATASET_NAME
    out = after_training["predictions"][KAUNET_TRAINER]
    for reference in sorted((raw / "labelsTs").glob("*.png")):
        predicted = np.asarray(Image.open(out / reference.name))
        assert predicted.shape == (IMAGE_SIZE, IMAGE_SIZE) and set(np.unique(predicted).tolist()) <= {0, 1}


def test_a_basis_family_trainer_trains_and_the_predictor_rebuilds_its_layers(preprocessed, monkeypatch, tmp_path):
    """nnUNetTrainerKAUNet_chebyshev found by nnU-Net's lookup, a few iterations of training, then nnU-Net's
    predictor rebuilds the Chebyshev layers from the model folder's plans.json and predicts a case."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_allukan.layers import KAConv2d, KAConvTranspose2d

    def shorten(trainer):
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 3, 1

    trainer = _train_in_process(preprocessed, monkeypatch, tmp_path, trainer_name="nnUNetTrainerKAUNet_chebyshev",
                                before_run=shorten)
    model = Path(trainer.output_folder).parent
    recorded = json.loads((model / "plans.json").read_text())["configurations"]["2d"]["architecture"]
    assert recorded["arch_kwargs"]["ka_kwargs"]["basis"] == "chebyshev"
    predictor = nnUNetPredictor(tile_step_size=1.0, use_gaussian=False, use_mirroring=False, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    layers = [m for m in predictor.network.modules() if isinstance(m, (KAConv2d, KAConvTranspose2d))]
    assert layers and {m.basis for m in layers} == {"chebyshev"}
    assert str(predictor.network) == str(trainer.network)
    image = np.random.default_rng(0).random((3, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    segmentation = predictor.predict_single_npy_array(image, {"spacing": (999.0, 1.0, 1.0)})
    assert segmentation.shape == (1, IMAGE_SIZE, IMAGE_SIZE)
