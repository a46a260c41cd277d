"""Compile fallback: torch.compile (``nnUNet_compile``) that fails to compile does not end the run.

Dynamo and inductor raise lazily, in the first forward or backward of a new graph. When that happens the log says
so, with the exception type and a short reason; the network (and any compiled part of the loss) is put back to
eager for the rest of the run, and the step is redone eagerly; the final validation then runs eager too. No
process-wide torch._dynamo setting is changed.

Under DDP (``-num_gpus N``) the same fallback applies while DDP has not begun the step's gradient reduction: a
failure in forward, or in backward before any parameter received its gradient (the whole network is one compiled
graph, so its backward fails before handing out any gradient), when every rank fails alike (the same compile of the
same graph). The loss is then rebuilt as nnU-Net builds it for an eager DDP network (with torch.compile nnU-Net gives
the lowest deep supervision output weight 0, which leaves parameters without gradient: DDP stops on those). Where a
gradient had already reached DDP (a network compiled into several graphs, one of whose backward failed), the step
cannot be redone (DDP refuses a new forward before the reduction it began has finished): the run ends with the
reason and what to do (``nnUNet_compile=f``, and ``--c`` to continue from the last checkpoint). A rank that fails
alone leaves the others waiting in the gradient all-reduce, as any exception of one rank does in nnU-Net.
"""
from __future__ import annotations

import os
import traceback

from torch import nn

__all__ = ["CompileFallbackMixin", "is_compile_failure", "short_reason", "uncompile_children"]


def is_compile_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) is torch.compile failing to compile: any dynamo
    exception (``BackendCompilerFailed``, inductor's ``InductorError`` is one, ``Unsupported``, ...) or inductor's
    own lowering / C++ compile errors. Errors raised when compiled code runs (out of memory, ...) are not; an error
    of the model's own code that dynamo meets while tracing is, and the eager retry then raises it as such."""
    from torch._dynamo.exc import TorchDynamoException

    types: list[type] = [TorchDynamoException]
    try:
        from torch._inductor import exc as inductor_exc
        types += [getattr(inductor_exc, name) for name in ("InductorError", "LoweringException", "CppCompileError")
                  if hasattr(inductor_exc, name)]
    except ImportError:  # pragma: no cover - torch without inductor
        pass
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, tuple(types)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def short_reason(error: BaseException, limit: int = 300) -> str:
    """What failed, in one line: for dynamo's wrappers (``BackendCompilerFailed``, ``InductorError``) the wrapped
    exception's type, first message line and where it was raised (inductor's messages carry tracebacks and hints
    after their first line; some of its assertions have no message at all)."""
    inner = getattr(error, "inner_exception", None)
    shown = inner if isinstance(inner, BaseException) else error
    lines = [line.strip() for line in str(shown).splitlines() if line.strip()]
    reason = f"{type(shown).__name__}: {lines[0]}" if lines else type(shown).__name__
    if len(reason) > limit:
        reason = reason[:limit - 3] + "..."
    if shown is inner and inner.__traceback__ is not None:
        frame = traceback.extract_tb(inner.__traceback__)[-1]
        reason += f" (raised at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name})"
    return reason


def uncompile_children(module: nn.Module) -> list[str]:
    """Replaces every torch.compile wrapper below ``module`` by the module it wraps; returns their names."""
    from torch._dynamo.eval_frame import OptimizedModule

    replaced = []
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OptimizedModule):
                setattr(parent, name, child._orig_mod)
                replaced.append(f"{parent_name}.{name}" if parent_name else name)
    return replaced


class CompileFallbackMixin:
    """Put before ``nnUNetTrainer`` in a trainer's bases. Also honours an explicit ``nnUNet_compile`` on CPU."""

    def _do_i_compile(self) -> bool:
        """nnU-Net's choice, except on a CPU when ``nnUNet_compile`` is set explicitly: nnU-Net never compiles on
        CPU (its plain U-Nets crash there); the project's KA layers trace without graph breaks, so an explicit
        request is honoured, which runs on CPU the code path nnU-Net takes on CUDA. False once compiling failed."""
        if getattr(self, "_compile_failed", False):
            return False
        requested = os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t")
        if self.device.type == "cpu" and requested:
            if not getattr(self, "_cpu_compile_logged", False):  # nnU-Net asks several times
                self._cpu_compile_logged = True
                self.print_to_log_file("torch.compile of the whole network on CPU (nnUNet_compile is set; nnU-Net "
                                       "itself compiles on CUDA only). The first steps take minutes to compile.")
            return True
        return super()._do_i_compile()

    def train_step(self, batch: dict) -> dict:
        # The compiled and the eager network share their parameters (the optimizer holds the same tensors); a
        # failure in backward may have left gradients half-written, and nnU-Net zeroes them at the step's start.
        return self._step_with_fallback(super().train_step, batch, "a training step",
                                        before_retry=lambda: self.optimizer.zero_grad(set_to_none=True))

    def validation_step(self, batch: dict) -> dict:
        return self._step_with_fallback(super().validation_step, batch, "a validation step")

    def _step_with_fallback(self, step, batch: dict, where: str, before_retry=None) -> dict:
        """``step(batch)``; after a compile failure, the same step again with the eager network and loss (under DDP
        after the gradient reduction began: a clear stop)."""
        try:
            return step(batch)
        except Exception as error:
            if self.is_ddp and self._compiled_parts() and is_compile_failure(error) and self._ddp_reduction_begun():
                message = (f"torch.compile failed in {where} ({type(error).__module__}.{type(error).__name__}: "
                           f"{short_reason(error)}) after DDP had begun reducing this step's gradients, so the step "
                           "cannot be redone eagerly: train with nnUNet_compile=f (add --c to continue from the last "
                           "checkpoint).")
                self.print_to_log_file(f"ERROR: {message}")
                raise SystemExit(f"ERROR: {message}") from error
            if not self._fall_back_to_eager(error, where):
                raise
        if before_retry is not None:
            before_retry()
        return step(batch)

    def _rebuild_loss(self) -> nn.Module:
        """The loss as ``initialize`` makes it (the NaN guard wraps it again)."""
        return self._build_loss()

    def _ddp_reduction_begun(self) -> bool:
        """Whether a parameter holds a gradient: nnU-Net's step starts with ``zero_grad(set_to_none=True)``, and DDP
        reduces each gradient as it is accumulated."""
        return any(p.grad is not None for p in self.network.parameters())

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not getattr(self, "_compile_failed", False):
            try:
                return super().perform_actual_validation(save_probabilities)
            except Exception as error:
                if not self._fall_back_to_eager(error, "the final validation"):
                    raise
        # nnU-Net's predictor compiles an eager network itself whenever nnUNet_compile is set: after a failure,
        # the final validation runs without it (the variable is restored afterwards).
        saved = os.environ.pop("nnUNet_compile", None)
        try:
            return super().perform_actual_validation(save_probabilities)
        finally:
            if saved is not None:
                os.environ["nnUNet_compile"] = saved

    def _compiled_parts(self) -> list[str]:
        from torch._dynamo.eval_frame import OptimizedModule
        from torch.nn.parallel import DistributedDataParallel

        network = self.network.module if isinstance(self.network, DistributedDataParallel) else self.network
        parts = ["network"] if isinstance(network, OptimizedModule) else []
        loss = getattr(self, "loss", None)
        if isinstance(loss, nn.Module):
            parts += [name for name, module in loss.named_modules() if isinstance(module, OptimizedModule)]
        return parts

    def _fall_back_to_eager(self, error: BaseException, where: str) -> bool:
        """After torch.compile failed to compile: network and loss eager for the rest of the run, said in the log.
        False (nothing changed) when ``error`` is no compile failure or nothing was compiled."""
        from torch._dynamo.eval_frame import OptimizedModule
        from torch.nn.parallel import DistributedDataParallel

        parts = self._compiled_parts()
        if not parts or not is_compile_failure(error):
            return False
        if isinstance(self.network, DistributedDataParallel):
            if isinstance(self.network.module, OptimizedModule):
                self.network.module = self.network.module._orig_mod  # DDP(compiled) -> DDP(eager), same parameters
        elif isinstance(self.network, OptimizedModule):
            self.network = self.network._orig_mod
        self._compile_failed = True
        if self.is_ddp:
            # The loss as nnU-Net builds it for an eager DDP network: with torch.compile it gives the lowest deep
            # supervision output weight 0, which leaves parameters without gradient, and DDP stops on those.
            self.loss = self._rebuild_loss()
        elif isinstance(getattr(self, "loss", None), nn.Module):
            uncompile_children(self.loss)
        self.print_to_log_file(
            f"WARNING: torch.compile failed in {where} ({type(error).__module__}.{type(error).__name__}: "
            f"{short_reason(error)}). Continuing with the eager {' and '.join(parts)} for the rest of this run "
            "(same parameters and optimizer state; the failed step is redone eagerly).")
        return True
