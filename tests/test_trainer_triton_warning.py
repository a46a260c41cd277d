"""Training on CUDA without usable Triton kernels (the ``auto`` policy then serves the basis passes on the torch
backend) writes one WARNING line, on stderr and in the training log, naming the cost and the fix. CUDA itself is
faked: only what the trainers ask about it (the device type, whether the Triton kernels load)."""
import types

import pytest
import torch

from nnunet_allukan.layers import kernels
from nnunet_allukan.layers.kernels import triton_ops
from nnunet_allukan.training.base import KATrainerBase, triton_fallback_warning

REASON = "Triton does not import (ModuleNotFoundError: No module named 'triton')"


@pytest.fixture
def no_triton(monkeypatch):
    monkeypatch.setattr(triton_ops, "available", lambda: False)
    monkeypatch.setattr(triton_ops, "unavailable_reason", lambda: REASON)
    before = kernels.policy()
    kernels.use("auto")
    yield
    kernels.use(before)


def _trainer(device_type: str, local_rank: int = 0):
    logged = []
    fake = types.SimpleNamespace(device=torch.device(device_type), local_rank=local_rank, logged=logged,
                                 print_to_log_file=lambda *a, **k: logged.append((" ".join(map(str, a)), k)))
    return fake


def test_cuda_without_triton_writes_one_warning_to_stderr_and_the_log(no_triton, capsys):
    trainer = _trainer("cuda")
    KATrainerBase.log_kernel_backends(trainer)
    warnings = [(line, k) for line, k in trainer.logged if line.startswith("WARNING")]
    assert len(warnings) == 1 and warnings[0][1] == {"also_print_to_console": False}, trainer.logged
    line = warnings[0][0]
    assert "\n" not in line and REASON in line
    assert "torch backend" in line and "slower" in line  # the cost
    assert "torch >= 2.8" in line and "Triton >= 3.4" in line and "NNUNET_ALLUKAN_KERNELS=torch" in line  # fixes
    err = capsys.readouterr().err
    assert err == line + "\n"
    described = [line for line, _ in trainer.logged if not line.startswith("WARNING")]
    assert any("torch" in line and REASON in line for line in described)  # kernels.describe()


def test_no_warning_on_cpu_with_triton_or_with_a_chosen_policy(no_triton, monkeypatch, capsys):
    assert triton_fallback_warning("cpu") is None
    kernels.use("torch")
    assert triton_fallback_warning("cuda") is None  # the user chose the torch backend
    kernels.use("auto")
    assert triton_fallback_warning("cuda") is not None
    monkeypatch.setattr(triton_ops, "available", lambda: True)
    assert triton_fallback_warning("cuda") is None
    trainer = _trainer("cpu")
    KATrainerBase.log_kernel_backends(trainer)
    assert not any(line.startswith("WARNING") for line, _ in trainer.logged)
    assert capsys.readouterr().err == ""


def test_only_rank_zero_writes_the_warning_to_stderr(no_triton, capsys):
    KATrainerBase.log_kernel_backends(_trainer("cuda", local_rank=1))
    assert capsys.readouterr().err == ""
