"""torch.compile that fails to compile (lazily, in the first forward or backward): the trainers log it, go back to
the eager network and loss for the rest of the run and redo the step eagerly (CompileFallbackMixin).

The failures are made with custom torch.compile backends that raise, so no real compilation runs (fast). The real
cases (inductor's CPU code generation on a 1x1 stage, nnUNetTrainerKAUNet under nnUNet_compile=1 on CPU) are
recorded in docs/training.md.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.eval_frame import OptimizedModule

from nnunet_allukan.training import trainers
from nnunet_allukan.training.compile_fallback import is_compile_failure
from nnunet_allukan.training.nan_guard import FiniteLossGuard
from plans_helpers import build_from_plans, minimal_plans


def _raise_at_compile(gm, example_inputs):
    raise RuntimeError("synthetic code generation failure")


def _raise_at_backward_compile(gm, example_inputs):
    """What inductor does when its code generation fails (compile_fx.py): the error wrapped in InductorError."""
    from inspect import currentframe

    from torch._inductor.exc import InductorError

    try:
        raise AssertionError("synthetic backward code generation failure")
    except AssertionError as error:
        raise InductorError(error, currentframe()).with_traceback(error.__traceback__) from None


# Forward compiled (as the traced graph itself), backward compiled lazily at the first backward, where it fails.
_BACKWARD_FAILS = aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=_raise_at_backward_compile)


def _tiny_trainer(name, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "preprocessed"))
    monkeypatch.delenv("nnUNet_compile", raising=False)
    # Two stages for nnUNetTrainerKAUNet: dynamo traces it in seconds (the UKAN of the paper trainers is fixed).
    plans = minimal_plans("2d", [32, 32], strides=[[1, 1], [2, 2]])
    plans["configurations"]["2d"]["batch_dice"] = True  # read by nnU-Net's _build_loss
    trainer = getattr(trainers, name)(plans, "2d", 0, {"labels": {"background": 0, "lesion": 1}},
                                      torch.device("cpu"))
    torch.manual_seed(0)
    network = build_from_plans(trainer.plans_manager.plans, "2d", 1, trainer.label_manager.num_segmentation_heads)
    trainer.enable_deep_supervision = False
    trainer.network = network
    trainer.loss = FiniteLossGuard(trainer._build_loss())
    trainer.optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    return trainer, network


def _batch():
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(2, 1, 32, 32, generator=generator)
    target = (torch.rand(2, 1, 32, 32, generator=generator) > 0.5).float()
    return {"data": data, "target": target, "keys": ["case_0", "case_1"]}


def _log(tmp_path) -> str:
    return "".join(p.read_text() for p in tmp_path.rglob("training_log_*.txt"))


def _compiled_forward_that_fails(network):
    """A compiled network whose first call fails the way dynamo reports a backend failure, without tracing."""
    from torch._dynamo.exc import BackendCompilerFailed

    compiled = torch.compile(network, backend="eager")

    def forward(*args, **kwargs):
        try:
            raise AssertionError("synthetic code generation failure")
        except AssertionError as error:
            raise BackendCompilerFailed(_raise_at_compile, error, None) from error

    compiled.forward = forward
    return compiled


# nnUNetTrainerKAUNet: real dynamo traces with backends that fail in forward / in the lazy backward compile (as
# inductor does on a 1x1 stage). The paper-protocol trainers (same mixin; the UKAN takes long to trace): a
# compiled forward that raises dynamo's exception.
CASES = [("nnUNetTrainerKAUNet_smoke", "forward", "torch._dynamo.exc.BackendCompilerFailed: RuntimeError: "
          "synthetic code generation failure (raised at test_trainer_compile_fallback.py:"),
         ("nnUNetTrainerKAUNet_smoke", "backward", "torch._inductor.exc.InductorError: AssertionError: synthetic "
          "backward code generation failure (raised at test_trainer_compile_fallback.py:"),
         ("nnUNetTrainerAllUKAN_1epoch", "patched", "torch._dynamo.exc.BackendCompilerFailed: AssertionError: "
          "synthetic code generation failure (raised at test_trainer_compile_fallback.py:")]


@pytest.mark.parametrize("name,where,reason", CASES)
def test_a_failed_compile_falls_back_to_eager_and_redoes_the_step(name, where, reason, tmp_path, monkeypatch):
    trainer, network = _tiny_trainer(name, tmp_path, monkeypatch)
    reference = copy.deepcopy(network)
    torch._dynamo.reset()
    if where == "patched":
        trainer.network = _compiled_forward_that_fails(network)
    else:
        backend = _raise_at_compile if where == "forward" else _BACKWARD_FAILS
        trainer.network = torch.compile(network, backend=backend)
        for module in trainer.loss.modules():  # what nnU-Net does to its Dice loss when it compiles
            if hasattr(module, "dc"):
                module.dc = torch.compile(module.dc, backend=backend)

    result = trainer.train_step(_batch())

    assert trainer.network is network  # the eager module, with the parameters the optimizer holds
    assert not any(isinstance(m, OptimizedModule) for m in trainer.loss.modules())
    assert np.isfinite(result["loss"])
    log = _log(tmp_path)
    assert f"WARNING: torch.compile failed in a training step ({reason}" in log
    parts = "network" if where == "patched" else "network and loss.dc"
    assert f"Continuing with the eager {parts} for the rest of this run" in log

    # The redone step is exactly one eager step from the same start: same loss, same new weights.
    reference_trainer, _ = _tiny_trainer(name, tmp_path / "reference", monkeypatch)
    reference_trainer.network = reference
    reference_trainer.optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    expected = reference_trainer.train_step(_batch())
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
    for p, q in zip(network.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

    # Later steps and validation stay eager, without a second warning.
    trainer.train_step(_batch())
    trainer.network.eval()
    trainer.validation_step(_batch())
    assert _log(tmp_path).count("WARNING: torch.compile failed") == 1


def test_errors_that_are_not_compile_failures_propagate_and_keep_the_compiled_network(tmp_path, monkeypatch):
    from nnunet_allukan.training.nan_guard import NonFiniteLossError

    trainer, network = _tiny_trainer("nnUNetTrainerKAUNet_smoke", tmp_path, monkeypatch)
    torch._dynamo.reset()
    compiled = torch.compile(network, backend="eager")
    trainer.network = compiled
    batch = _batch()
    batch["data"][0, 0, 0, 0] = float("nan")  # a corrupt case: the loss guard stops the step, compile is fine
    with pytest.raises(NonFiniteLossError):
        trainer.train_step(batch)
    assert trainer.network is compiled
    assert "torch.compile failed" not in _log(tmp_path)


def test_is_compile_failure_follows_the_exception_chain():
    from torch._dynamo.exc import BackendCompilerFailed

    inner = BackendCompilerFailed(_raise_at_compile, RuntimeError("x"), None)
    try:
        try:
            raise inner
        except BackendCompilerFailed as error:
            raise RuntimeError("outer") from error
    except RuntimeError as outer:
        assert is_compile_failure(outer)
    assert not is_compile_failure(RuntimeError("CUDA out of memory"))
    assert not is_compile_failure(ValueError("x"))
