"""Training faults that need no training run: a model folder whose network cannot be imported, the loss guard."""
from __future__ import annotations

import json

import pytest
import torch

from nnunet_allukan.training.base import check_architecture_importable
from nnunet_allukan.training.nan_guard import FiniteLossGuard, NonFiniteLossError
from plans_helpers import build_from_plans, minimal_plans


def test_a_network_class_that_cannot_be_imported_names_the_package():
    architecture = {"network_class_name": "nnunet_allukan.networks.ukan.UKANRenamed", "arch_kwargs": {
        "conv_op": "torch.nn.modules.conv.Conv2d"}, "_kw_requires_import": ["conv_op"]}
    with pytest.raises(RuntimeError, match=r"UKANRenamed cannot be imported\. They come from the package "
                                           r"nnunet-allukan: install it .*pip install nnunet-allukan"):
        check_architecture_importable(architecture)
    architecture["network_class_name"] = "torch.nn.Identity"
    check_architecture_importable(architecture)


def test_predictor_on_a_model_folder_with_an_unimportable_network(tmp_path):
    """nnU-Net's own predictor, on a model folder whose plans name a class this installation lacks."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_allukan.training.architectures import plans_with_ukan_architecture

    plans, _ = plans_with_ukan_architecture(minimal_plans("2d", [32, 32]), "2d", "allukan", embed_dims=(16, 24, 32))
    network = build_from_plans(plans, "2d", 3, 1)
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["conv_op"] = "nnunet_allukan.layers.ka.KAConv9d"
    plans["configurations"]["2d"].update(spacing=[1.0, 1.0], normalization_schemes=["ZScoreNormalization"] * 3,
                                         use_mask_for_norm=[False] * 3)
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "R", "1": "G", "2": "B"},
                                                    "labels": {"background": 0, "lesion": [1, 1]},
                                                    "regions_class_order": [1], "file_ending": ".png"}))
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainerAllUKAN",
                "init_args": {"configuration": "2d"}, "inference_allowed_mirroring_axes": (0, 1)},
               model / "fold_0" / "checkpoint_final.pth")
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    with pytest.raises(RuntimeError, match=r"KAConv9d cannot be imported.*pip install nnunet-allukan"):
        predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")


def test_loss_guard_raises_only_in_training_steps():
    guard = FiniteLossGuard(torch.nn.MSELoss())
    x = torch.tensor([float("nan")], requires_grad=True)
    with pytest.raises(NonFiniteLossError):
        guard(x, torch.zeros(1))
    with torch.no_grad():
        assert torch.isnan(guard(x, torch.zeros(1)))  # validation: reported by nnU-Net, not stopped here
    assert guard(torch.ones(1, requires_grad=True), torch.zeros(1)).item() == 1.0


def test_memory_message_warns_before_an_out_of_memory_with_a_batch_that_fits():
    from nnunet_allukan.training.memory import GIB, MemoryEstimate, memory_message

    fits, line = memory_message(MemoryEstimate(int(0.1 * GIB), int(0.5 * GIB), 8, 24 * GIB, 24 * GIB),
                                "Table 2 row 13 (allukan)", [256, 256])
    assert fits and line.startswith("GPU memory estimate for Table 2 row 13 (allukan), patch [256, 256], batch 8: "
                                    "about 4.1 GiB")
    fits, line = memory_message(MemoryEstimate(int(0.3 * GIB), int(4 * GIB), 8, 23 * GIB, 24 * GIB),
                                "Table 2 row 9 (kaonv)", [256, 256])
    assert not fits and line.startswith("WARNING: GPU memory estimate for Table 2 row 9 (kaonv)")
    assert "about 32.3 GiB" in line and "about 5 would fit" in line


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("0", False), (None, False)])
def test_explicit_nnunet_compile_is_honoured_on_cpu(value, expected, tmp_path, monkeypatch):
    """nnU-Net never compiles on CPU; the project's trainers do when asked (whole-network compile verified by
    hand: a 1-epoch nnUNetTrainerAllUKAN_1epoch run with nnUNet_compile=1 on CPU, see docs/training.md)."""
    from test_trainer_variants import make_trainer

    if value is None:
        monkeypatch.delenv("nnUNet_compile", raising=False)
    else:
        monkeypatch.setenv("nnUNet_compile", value)
    trainer = make_trainer("nnUNetTrainerAllUKAN_1epoch", tmp_path, monkeypatch)
    assert trainer._do_i_compile() is expected
    trainer._do_i_compile()
    log = "".join(p.read_text() for p in tmp_path.rglob("training_log_*.txt"))
    assert log.count("torch.compile of the whole network on CPU") == (1 if expected else 0)


@pytest.mark.parametrize("environ, platform, hint", [
    ({}, "linux", True), ({"GOMP_SPINCOUNT": "1000"}, "linux", False), ({"OMP_WAIT_POLICY": "PASSIVE"}, "linux", False),
    ({}, "darwin", False),
])
def test_cpu_contention_hint_only_where_the_wait_policy_is_left_at_its_default(environ, platform, hint):
    from nnunet_allukan.openmp import CPU_SPIN_COUNT, cpu_contention_hint

    line = cpu_contention_hint(environ, platform)
    assert (line is not None) == hint
    if hint:
        assert f"GOMP_SPINCOUNT={CPU_SPIN_COUNT}" in line and "\n" not in line
