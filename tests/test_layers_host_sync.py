"""No host-device copy or synchronisation inside the KA layers during a training step.

On CUDA a tensor made from Python values (``torch.tensor(...)``) is a blocking copy from pageable host memory and a
tensor read back to Python (``.item()``, ``bool(t)``) waits for the device: either drains the GPU's queue. Without
a GPU the same calls are visible as the operators they dispatch: ``lift_fresh`` (a tensor from Python data),
``_local_scalar_dense`` (a value read back), copies from a CPU tensor to another device. The mode below records them
when the Python stack is inside ``nnunet_allukan/layers`` (forward and backward of every layer), during a whole
training step (forward, loss, backward, optimiser) of ALL U-KAN and of the KA nnU-Net, after a first step (one-time
set-up, such as the constants' cache, is allowed there); on CUDA, where it exists, with
``torch.cuda.set_sync_debug_mode("error")`` besides. The kernel policy is the process's: CI runs this file once
with the default (``native`` on CPU) and once with ``NNUNET_ALLUKAN_KERNELS=torch``; the Triton kernels run in
Triton's interpreter in a test of their own.
"""
from __future__ import annotations

import traceback
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_allukan.layers import KAConv2d, kernels
from nnunet_allukan.networks import KAPlainConvUNet, build_table2_network

LAYERS_DIR = str(Path(kernels.__file__).resolve().parents[1])
_TENSOR_FROM_PYTHON = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default}
_READ_BACK = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
              torch.ops.aten.nonzero.default}
_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


def _host_tensor_to_device(func, args, kwargs) -> bool:
    """A copy whose source is a CPU tensor and whose destination is on another device."""
    if func is torch.ops.aten._to_copy.default:
        device = kwargs.get("device")
        return args[0].device.type == "cpu" and device is not None and torch.device(device).type != "cpu"
    if func is torch.ops.aten.copy_.default:
        return args[1].device.type == "cpu" and args[0].device.type != "cpu"
    return False


class HostSyncRecorder(TorchDispatchMode):
    """Records ``(operator, innermost frame in the layers)`` for every host-device copy or read-back issued from
    code under ``nnunet_allukan/layers``."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TENSOR_FROM_PYTHON or func in _READ_BACK or (func in _COPIES and
                                                                 _host_tensor_to_device(func, args, kwargs)):
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(LAYERS_DIR)]
            if frames:
                self.found.append((str(func), f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"))
        return func(*args, **kwargs)


def _all_ukan():
    torch.manual_seed(0)
    return build_table2_network(13, 3, 1, embed_dims=(16, 24, 32)), torch.randn(2, 3, 32, 32)


def _ka_nnunet():
    torch.manual_seed(0)
    net = KAPlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=KAConv2d,
                          kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]], n_conv_per_stage=[2] * 3,
                          num_classes=2, n_conv_per_stage_decoder=[2] * 2, conv_bias=True,
                          norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                          nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
                          ka_kwargs={"grad_free": True})
    net.apply(KAPlainConvUNet.initialize)
    return net, torch.randn(2, 1, 32, 32)


def _host_syncs_in_a_training_step(make, device: str = "cpu") -> list[tuple[str, str]]:
    net, x = make()
    net, x = net.to(device), x.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        net(x).float().square().mean().backward()
        opt.step()

    step()  # one-time set-up allowed
    with HostSyncRecorder() as recorder:
        if device == "cuda":  # a synchronising CUDA call anywhere in the step raises
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    return recorder.found


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [_all_ukan, _ka_nnunet], ids=["ALL U-KAN", "KA nnU-Net"])
def test_training_step_makes_no_host_device_copy_inside_the_layers(make, device):
    assert _host_syncs_in_a_training_step(make, device) == []


def test_the_recorder_sees_a_tensor_made_from_python_values_inside_a_layer(monkeypatch):
    """The recorder is not blind: B(0) made from Python values at every call (as the layers once did) is caught."""
    from nnunet_allukan.layers.splines import SplineGrid

    def made_at_every_call(grid, dtype, device):
        return torch.tensor(grid.zero_bases, dtype=dtype, device=device)

    monkeypatch.setattr(SplineGrid, "zero_bases_tensor", made_at_every_call)
    found = _host_syncs_in_a_training_step(_all_ukan)
    assert found and {op for op, _ in found} == {"aten.lift_fresh.default"}, found


def test_triton_kernels_make_no_host_device_copy(monkeypatch):
    """The same for the Triton backend, in Triton's interpreter (a depthwise and a dense layer, padded; a chebyshev
    layer: the kernels' constants of another family)."""
    pytest.importorskip("triton")
    from nnunet_allukan.layers.kernels import triton_ops

    if not triton_ops.available() or not triton_ops.interpreted():
        pytest.skip(f"Triton's interpreter is not in use here ({triton_ops.unavailable_reason()})")
    before = kernels.policy()
    kernels.use("triton")
    try:
        def make():
            torch.manual_seed(0)
            net = nn.Sequential(KAConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                KAConv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                                KAConv2d(8, 4, 3, padding=1, basis="chebyshev"), KAConv2d(4, 2, 1))
            return net, torch.randn(2, 3, 8, 8)

        assert _host_syncs_in_a_training_step(make) == []
    finally:
        kernels.use(before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("basis", ["rbf", "chebyshev", "relu"])
def test_every_basis_family_makes_no_host_device_copy(basis, device):
    """The other basis families (torch backend): dense, depthwise and 1x1 layers, padded, both gradient modes,
    and KA upsampling."""
    from nnunet_allukan.layers import KAConvTranspose2d

    def make():
        torch.manual_seed(0)
        net = nn.Sequential(KAConv2d(3, 8, 3, padding=1, basis=basis), nn.ReLU(),
                            KAConv2d(8, 8, 3, padding=1, groups=8, basis=basis, grad_free=False), nn.ReLU(),
                            KAConvTranspose2d(8, 4, 2, basis=basis), KAConv2d(4, 2, 1, basis=basis, grad_free=False))
        return net, torch.randn(2, 3, 8, 8)

    assert _host_syncs_in_a_training_step(make, device) == []
