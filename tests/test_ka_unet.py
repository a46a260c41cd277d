"""nnU-Net's planned networks made fully KA: the plans record, nnU-Net's own builder, no plain convolution left."""
from __future__ import annotations

import json
import sys
from copy import deepcopy

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from nnunet_allukan.layers import KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d
from nnunet_allukan.networks import (KAPlainConvUNet, network_summary, plain_convolutions, scale_silu_gradients,
                                     scale_spline_gradients, spline_gradient_scale)
from nnunet_allukan.networks.ka_unet import KA_LAYER_TYPES, spline_fan_in
from nnunet_allukan.training.architectures import plans_with_ka_architecture
from nnunet_allukan.training.ka_unet_trainers import nnUNetTrainerKAUNet
from plans_helpers import minimal_plans


def _architecture(dim: int, residual: bool = False) -> dict:
    strides = [[1] * dim, [2] * dim, [2] * dim, [1] + [2] * (dim - 1)]
    kwargs = {"n_stages": 4, "features_per_stage": [8, 16, 24, 32], "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
              "kernel_sizes": [[3] * dim] * 4, "strides": strides, "n_conv_per_stage_decoder": [1, 1, 1],
              "conv_bias": True, "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
              "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
              "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    if residual:
        kwargs["n_blocks_per_stage"] = [1, 2, 2, 2]
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kwargs["n_conv_per_stage"] = [2, 2, 2, 2]
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return {"network_class_name": name, "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def _plans() -> dict:
    """nnU-Net 2.8 plans with every configuration kind; the cascade inherits its architecture from 3d_fullres."""
    def config(dim, **extra):
        return {"data_identifier": "x", "patch_size": [16] + [32] * (dim - 1), "batch_size": 2,
                "architecture": _architecture(dim), **extra}

    return {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans",
            "configurations": {"2d": config(2), "3d_lowres": config(3, next_stage="3d_cascade_fullres"),
                               "3d_fullres": config(3),
                               "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}}


def _build(plans: dict, configuration: str, input_channels: int, outputs: int, deep_supervision: bool):
    """Exactly nnU-Net's build (trainer and predictor): get_network_from_plans on the architecture entry."""
    architecture = PlansManager(plans).get_configuration(configuration).configuration["architecture"]
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], input_channels, outputs, allow_init=True,
                                  deep_supervision=deep_supervision)


@pytest.mark.parametrize("configuration", ["2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres"])
def test_every_configuration_builds_fully_ka_through_nnunets_builder(configuration):
    plans = plans_with_ka_architecture(_plans(), configuration, nnUNetTrainerKAUNet.ka_kwargs)
    assert json.loads(json.dumps(plans)) == plans
    dim = 2 if configuration == "2d" else 3
    # the cascade's second stage sees the image channels plus one-hot previous-stage segmentations
    input_channels = 2 + 3 if configuration == "3d_cascade_fullres" else 2
    network = _build(plans, configuration, input_channels, 4, deep_supervision=True)
    assert isinstance(network, KAPlainConvUNet)
    assert plain_convolutions(network) == []
    conv_type, transposed_type = (KAConv2d, KAConvTranspose2d) if dim == 2 else (KAConv3d, KAConvTranspose3d)
    summary = network_summary(network)
    # encoder 4 x 2 + decoder 3 x 1 convolutions + 3 deep-supervision heads, 3 upsamplings
    assert summary["KAConv"] == 14 and summary["KAConvTranspose"] == 3 and summary["Conv"] == 0
    assert all(m.grad_free and m.implementation == "fast" for m in network.modules() if isinstance(m, conv_type))
    assert any(isinstance(m, transposed_type) for m in network.modules())
    patch = [16] + [32] * (dim - 1)
    outputs = network(torch.randn(2, input_channels, *patch))
    assert [tuple(o.shape) for o in outputs] == [(2, 4, *patch), (2, 4, *(s // 2 for s in patch)),
                                                 (2, 4, *(s // 4 for s in patch))]
    # the predictor's build (no deep supervision) loads the trainer's weights
    predictor_network = _build(plans, configuration, input_channels, 4, deep_supervision=False)
    predictor_network.load_state_dict(network.state_dict())


def test_residual_encoder_presets_become_fully_ka():
    plans = _plans()
    plans["configurations"]["3d_fullres"]["architecture"] = _architecture(3, residual=True)
    new_plans = plans_with_ka_architecture(plans, "3d_fullres", {"grad_free": True})
    assert new_plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == \
        "nnunet_allukan.networks.ka_unet.KAResidualEncoderUNet"
    network = _build(new_plans, "3d_fullres", 1, 2, deep_supervision=False)
    assert plain_convolutions(network) == []
    # the residual shortcuts' 1x1 projections are KAonv layers too
    assert any(isinstance(m, KAConv3d) and m.kernel_size == (1, 1, 1) and "skip" in name
               for name, m in network.named_modules())
    y = network(torch.randn(1, 1, 16, 32, 32))
    assert y.shape == (1, 2, 16, 32, 32)
    y.mean().backward()


def test_shared_submodules_are_replaced_once_everywhere():
    plans = plans_with_ka_architecture(_plans(), "2d", {})
    network = _build(plans, "2d", 1, 2, deep_supervision=False)
    block = network.encoder.stages[0][0].convs[0]
    assert block.conv is block.all_modules[0] and isinstance(block.conv, KAConv2d)


def test_nnunet_he_initialisation_reaches_the_ka_weights():
    torch.manual_seed(0)
    plans = plans_with_ka_architecture(_plans(), "3d_fullres", {})
    network = _build(plans, "3d_fullres", 1, 2, deep_supervision=False)
    conv = network.encoder.stages[1][0].convs[0].conv  # 8 -> 16 channels, 3x3x3: fan-in 216
    expected_std = (2.0 / (1 + 0.01 ** 2) / 216) ** 0.5
    assert abs(conv.u.std().item() / expected_std - 1) < 0.1
    assert torch.count_nonzero(conv.bias) == 0


def test_unknown_planned_network_is_a_clear_error():
    plans = _plans()
    plans["configurations"]["2d"]["architecture"]["network_class_name"] = "some.module.Primus"
    with pytest.raises(ValueError, match="KA versions of PlainConvUNet, ResidualEncoderUNet"):
        plans_with_ka_architecture(plans, "2d", {})


def test_plans_read_back_from_a_model_folder_stay_as_they_are():
    plans = plans_with_ka_architecture(_plans(), "3d_fullres", {"grad_free": True})
    assert plans_with_ka_architecture(deepcopy(plans), "3d_fullres", {"grad_free": True}) == plans


def test_ka_unet_class_needs_a_ka_conv_type():
    with pytest.raises(ValueError, match="KAonv type"):
        KAPlainConvUNet(input_channels=1, n_stages=2, features_per_stage=[4, 8], conv_op=nn.Conv2d,
                        kernel_sizes=3, strides=[1, 2], n_conv_per_stage=1, num_classes=2,
                        n_conv_per_stage_decoder=1)


def test_spline_gradient_scale_is_n_bases_over_the_spline_fan_in():
    assert spline_gradient_scale(KAConv2d(8, 16, 3)) == pytest.approx(8 / 72)  # 8 channels x 3x3
    assert spline_gradient_scale(KAConv3d(8, 16, 3, groups=2)) == pytest.approx(8 / 108)  # 4 channels x 3x3x3
    assert spline_gradient_scale(KAConvTranspose2d(16, 8, 2, 2)) == pytest.approx(8 / 16)  # one voxel of 16 channels
    with pytest.raises(TypeError, match="not a KA layer"):
        spline_gradient_scale(nn.Conv2d(8, 16, 3))


def _gradients(network: nn.Module, x: torch.Tensor, autocast_dtype=None) -> dict:
    network.zero_grad()
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        outputs = network(x)  # deep supervision: every head gets a gradient
    sum((out.float() ** 2).mean() for out in outputs).backward()
    return {name: p.grad.clone() for name, p in network.named_parameters()}


@pytest.mark.parametrize("configuration, residual, autocast_dtype", [
    ("2d", False, None), ("2d", False, torch.bfloat16), ("2d", True, None), ("3d_fullres", False, None)])
def test_scale_spline_gradients_scales_the_spline_coefficients_only(configuration, residual, autocast_dtype):
    """Every v gradient (convolutions, residual shortcuts, upsampling, heads) times factor x n_bases / fan_in, every other
    gradient untouched, 2D and 3D, plain and ResEnc; also under CPU autocast (AMP) and undone by removing the hooks."""
    torch.manual_seed(0)
    plans = _plans()
    dim = 2 if configuration == "2d" else 3
    plans["configurations"][configuration]["architecture"] = _architecture(dim, residual)
    network = _build(plans_with_ka_architecture(plans, configuration, {}), configuration, 1, 2, deep_supervision=True)
    x = torch.randn(2, 1, 16, 32) if dim == 2 else torch.randn(1, 1, 16, 32, 32)
    plain = _gradients(network, x, autocast_dtype)
    handles = scale_spline_gradients(network, factor=0.5)
    scaled = _gradients(network, x, autocast_dtype)
    layers = {name: m for name, m in network.named_modules() if isinstance(m, KA_LAYER_TYPES)}
    assert len(handles) == len(layers) > 10
    assert any(isinstance(m, (KAConvTranspose2d, KAConvTranspose3d)) for m in layers.values())
    for name, grad in plain.items():
        owner, _, kind = name.rpartition(".")
        expected = grad * 0.5 * spline_gradient_scale(layers[owner]) if kind == "v" else grad
        assert torch.allclose(scaled[name], expected, rtol=1e-5, atol=1e-12), name
    for handle in handles:
        handle.remove()
    assert all(torch.equal(g, plain[n]) for n, g in _gradients(network, x, autocast_dtype).items())


def test_scale_silu_gradients_scales_the_silu_path_weights_only():
    """Every u gradient (convolutions, upsampling, heads) times the factor, every other gradient untouched."""
    torch.manual_seed(0)
    plans = _plans()
    plans["configurations"]["2d"]["architecture"] = _architecture(2, False)
    network = _build(plans_with_ka_architecture(plans, "2d", {}), "2d", 1, 2, deep_supervision=True)
    x = torch.randn(2, 1, 16, 32)
    plain = _gradients(network, x)
    handles = scale_silu_gradients(network, 4.0)
    scaled = _gradients(network, x)
    assert len(handles) == sum(isinstance(m, KA_LAYER_TYPES) for m in network.modules()) > 10
    for name, grad in plain.items():
        expected = grad * 4.0 if name.endswith(".u") else grad
        assert torch.allclose(scaled[name], expected, rtol=1e-5, atol=1e-12), name


def _initialized_trainer(trainer_class, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.delenv("nnUNet_compile", raising=False)
    data = tmp_path / "preprocessed" / "Dataset999_X" / "x"  # initialize only lists its cases
    data.mkdir(parents=True)
    for case in ("case_0", "case_1"):
        (data / f"{case}.b2nd").touch()
    plans = minimal_plans("2d", [32, 32], strides=[[1, 1], [2, 2], [2, 2]])
    plans["configurations"]["2d"]["batch_dice"] = True
    dataset_json = {"channel_names": {"0": "x"}, "labels": {"background": 0, "lesion": 1}, "file_ending": ".png"}
    trainer = trainer_class(plans, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def _hooked_spline_coefficients(network: nn.Module) -> int:
    return sum(bool(m.v._backward_hooks) for m in network.modules() if hasattr(m, "v") and m.v is not None)


def _hooked_silu_weights(network: nn.Module) -> int:
    return sum(bool(m.u._backward_hooks) for m in network.modules() if hasattr(m, "u") and m.u is not None)


def test_ka_unet_trainers_scale_spline_gradients_by_default_and_the_paper_trainers_do_not(tmp_path, monkeypatch):
    from nnunet_allukan.training.trainers import nnUNetTrainerAllUKAN, nnUNetTrainerUKAN_MLP

    assert nnUNetTrainerKAUNet.spline_gradient_scaling is True
    trainer = _initialized_trainer(nnUNetTrainerKAUNet, tmp_path / "ka", monkeypatch)
    layers = [m for m in trainer.network.modules() if isinstance(m, KA_LAYER_TYPES)]
    assert _hooked_spline_coefficients(trainer.network) == len(layers) > 0
    # the default factor: an eighth of n_bases / fan_in, i.e. 1 / fan_in with the paper's 8 bases
    assert nnUNetTrainerKAUNet.spline_gradient_factor == 0.125
    x = torch.randn(2, 1, 32, 32)
    sum((out ** 2).mean() for out in trainer.network(x)).backward()
    scaled = {id(m): m.v.grad.clone() for m in layers}
    for m in layers:
        m.v._backward_hooks.clear()
    trainer.network.zero_grad()
    sum((out ** 2).mean() for out in trainer.network(x)).backward()
    for m in layers:
        assert m.grid.n_bases == 8
        assert torch.allclose(scaled[id(m)], m.v.grad / spline_fan_in(m), rtol=1e-5, atol=1e-12)
    log = "".join(p.read_text() for p in (tmp_path / "ka").rglob("training_log_*.txt"))
    assert f"v of {len(layers)} KA layers are scaled by 0.125 x n_bases / fan_in" in log

    class Unscaled(nnUNetTrainerKAUNet):
        spline_gradient_scaling = False

    assert _hooked_spline_coefficients(_initialized_trainer(Unscaled, tmp_path / "off", monkeypatch).network) == 0
    for paper_trainer in (nnUNetTrainerAllUKAN, nnUNetTrainerUKAN_MLP):  # the paper's recipe: no scaling
        assert not issubclass(paper_trainer, nnUNetTrainerKAUNet)
        network = _initialized_trainer(paper_trainer, tmp_path / paper_trainer.__name__, monkeypatch).network
        assert _hooked_spline_coefficients(network) == 0 and _hooked_silu_weights(network) == 0


def test_ka_unet_trainers_scale_silu_gradients_by_default(tmp_path, monkeypatch):
    assert nnUNetTrainerKAUNet.silu_gradient_scale == 4.0
    trainer = _initialized_trainer(nnUNetTrainerKAUNet, tmp_path / "ka", monkeypatch)
    layers = [m for m in trainer.network.modules() if isinstance(m, KA_LAYER_TYPES)]
    assert _hooked_silu_weights(trainer.network) == len(layers) > 0
    log = "".join(p.read_text() for p in (tmp_path / "ka").rglob("training_log_*.txt"))
    assert f"silu-path weights u of {len(layers)} KA layers are scaled by 4 (silu_gradient_scale)" in log

    class Unscaled(nnUNetTrainerKAUNet):
        silu_gradient_scale = 1.0

    assert _hooked_silu_weights(_initialized_trainer(Unscaled, tmp_path / "off", monkeypatch).network) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="the hint is for libgomp (Linux)")
def test_cpu_training_logs_the_openmp_hint_only_without_a_wait_policy(tmp_path, monkeypatch):
    from nnunet_allukan.openmp import CPU_SPIN_COUNT

    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    _initialized_trainer(nnUNetTrainerKAUNet, tmp_path / "default", monkeypatch)
    monkeypatch.setenv("GOMP_SPINCOUNT", CPU_SPIN_COUNT)
    _initialized_trainer(nnUNetTrainerKAUNet, tmp_path / "set", monkeypatch)
    logs = {case: "".join(p.read_text() for p in (tmp_path / case).rglob("training_log_*.txt"))
            for case in ("default", "set")}
    assert f"GOMP_SPINCOUNT={CPU_SPIN_COUNT} in its environment" in logs["default"]
    assert "GOMP_SPINCOUNT" not in logs["set"]
