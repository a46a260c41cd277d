"""Training faults, handled the same way by every trainer of the project (a mixin placed before nnUNetTrainer).

- A NaN or infinite loss stops training at once, before the optimizer step that would spread it into the weights,
  with a message naming the epoch, the iteration, the cases of the batch and the likely cause; the checkpoints of
  earlier epochs (checkpoint_best / checkpoint_latest) are left as they were and no checkpoint_final is written.
- ``nnUNetv2_train ... --c`` says in the log from which checkpoint, epoch and learning rate it continues.
- A model folder whose plans record a network class or layer type that cannot be imported fails with a message
  that names the package to install, instead of nnU-Net's fallback search (which imports timm).
- torch.compile (``nnUNet_compile``) that fails to compile (dynamo / inductor raise lazily, in the first forward or
  backward of a new graph): the log says so, with the exception type and a short reason, the network (and any
  compiled part of the loss) is put back to eager for the rest of the run, and the step is redone eagerly; the
  final validation then runs eager too. No process-wide torch._dynamo setting is changed.
"""
from __future__ import annotations

import os
import pydoc
import sys
import traceback

import numpy as np
import torch
from torch import nn

from nnunet_allukan.layers import kernels

__all__ = ["NonFiniteLossError", "TrainingFaultsMixin", "check_architecture_importable", "is_compile_failure",
           "unwrapped_network"]

PACKAGE = "nnunet-allukan"


def unwrapped_network(network: nn.Module) -> nn.Module:
    """The network inside DDP and torch.compile wrappers (their parameter names carry prefixes)."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


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


def _short_reason(error: BaseException, limit: int = 300) -> str:
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


def _uncompile_children(module: nn.Module) -> list[str]:
    """Replaces every torch.compile wrapper below ``module`` by the module it wraps; returns their names."""
    from torch._dynamo.eval_frame import OptimizedModule

    replaced = []
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, OptimizedModule):
                setattr(parent, name, child._orig_mod)
                replaced.append(f"{parent_name}.{name}" if parent_name else name)
    return replaced


class NonFiniteLossError(RuntimeError):
    """Raised inside a training step when the loss is NaN or infinite."""


class _FiniteLossGuard(nn.Module):
    """Wraps nnU-Net's loss module: raises :class:`NonFiniteLossError` before backward/step on a non-finite loss."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *args, **kwargs):
        value = self.loss(*args, **kwargs)
        # Training steps only (validation runs without autograd and changes no weight).
        if torch.is_grad_enabled() and not torch.isfinite(value.detach()).all():
            raise NonFiniteLossError(float(value.detach().float().cpu().reshape(-1)[0]))
        return value


def check_architecture_importable(architecture: dict, plans_file: str = "plans.json") -> None:
    """Every dotted path of a plans ``architecture`` entry must import; otherwise say which package provides it."""
    paths = [architecture["network_class_name"]] + [architecture["arch_kwargs"].get(k)
                                                    for k in architecture.get("_kw_requires_import", [])]
    missing = [p for p in paths if isinstance(p, str) and pydoc.locate(p) is None]
    if missing:
        ours = [p for p in missing if p.startswith("nnunet_allukan.")]
        where = (f"They come from the package {PACKAGE}: install it in this environment (pip install {PACKAGE}), "
                 "in the version that trained this model") if ours else \
            "Install the package that provides them in this environment"
        raise RuntimeError(f"The network recorded in {plans_file} cannot be built: {', '.join(missing)} cannot be "
                           f"imported. {where}.")


class TrainingFaultsMixin:
    """Put before ``nnUNetTrainer`` in a trainer's bases."""

    def _do_i_compile(self) -> bool:
        """nnU-Net's choice, except on a CPU when ``nnUNet_compile`` is set explicitly: nnU-Net never compiles on
        CPU (its plain U-Nets crash there); the project's KA layers trace without graph breaks, so an explicit
        request is honoured, which runs on CPU the code path nnU-Net takes on CUDA."""
        requested = os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t")
        if self.device.type == "cpu" and requested:
            if not getattr(self, "_cpu_compile_logged", False):  # nnU-Net asks several times
                self._cpu_compile_logged = True
                self.print_to_log_file("torch.compile of the whole network on CPU (nnUNet_compile is set; nnU-Net "
                                       "itself compiles on CUDA only). The first steps take minutes to compile.")
            return True
        return super()._do_i_compile()

    def initialize(self):
        super().initialize()
        self.print_to_log_file(kernels.describe(self.device.type))  # which kernel backend serves each basis pass
        if not isinstance(self.loss, _FiniteLossGuard):
            self.loss = _FiniteLossGuard(self.loss)

    def train_step(self, batch: dict) -> dict:
        self._current_batch_keys = batch.get("keys")
        self._current_batch_data = batch["data"]
        try:
            return super().train_step(batch)
        except Exception as error:
            if not self._fall_back_to_eager(error, "a training step"):
                raise
        # The compiled and the eager network share their parameters (the optimizer holds the same tensors); a
        # failure in backward may have left gradients half-written, and nnU-Net zeroes them at the step's start.
        self.optimizer.zero_grad(set_to_none=True)
        return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        try:
            return super().validation_step(batch)
        except Exception as error:
            if not self._fall_back_to_eager(error, "a validation step"):
                raise
        return super().validation_step(batch)

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
        if isinstance(getattr(self, "loss", None), nn.Module):
            _uncompile_children(self.loss)
        self._compile_failed = True
        self.print_to_log_file(
            f"WARNING: torch.compile failed in {where} ({type(error).__module__}.{type(error).__name__}: "
            f"{_short_reason(error)}). Continuing with the eager {' and '.join(parts)} for the rest of this run "
            "(same parameters and optimizer state; the failed step is redone eagerly).")
        return True

    def run_training(self):
        try:
            super().run_training()
        except NonFiniteLossError as error:
            message = self._non_finite_loss_message(float(error.args[0]))
            self._shut_down_dataloaders()
            self.print_to_log_file(message)
            raise SystemExit(f"ERROR: {message}") from None

    def _non_finite_loss_message(self, value: float) -> str:
        data = self._current_batch_data
        bad_input = not bool(torch.isfinite(torch.as_tensor(data)).all())
        keys = self._current_batch_keys
        cases = ", ".join(map(str, list(keys)[:8])) if keys is not None else "unknown"
        lr = self.optimizer.param_groups[0]["lr"]
        if bad_input:
            cause = ("the batch itself holds NaN / infinite values: a preprocessed case is corrupt. Re-run "
                     "nnUNetv2_plan_and_preprocess with --verify_dataset_integrity and check these cases' images")
        else:
            cause = (f"the inputs are finite, so the training diverged: the learning rate ({lr:g}) is probably too "
                     "high for this network and data, or an earlier step produced extreme weights")
        folder = self.output_folder
        kept = [name for name in ("checkpoint_best.pth", "checkpoint_latest.pth")
                if os.path.isfile(os.path.join(folder, name))]
        checkpoints = (f"The checkpoints of earlier epochs were left as they were ({', '.join(kept)} in {folder}); "
                       "continue from them with --c once the cause is fixed." if kept else
                       "No checkpoint had been written yet.")
        return (f"Training stopped: the loss became {'NaN' if np.isnan(value) else value} in epoch "
                f"{self.current_epoch}, before the optimizer step (batch cases: {cases}). Likely cause: {cause}. "
                f"{checkpoints}")

    def _shut_down_dataloaders(self) -> None:
        from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
        from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

        stdout = sys.stdout
        with open(os.devnull, "w") as devnull:
            sys.stdout = devnull
            try:
                for loader in (self.dataloader_train, self.dataloader_val):
                    if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                        loader._finish()
            finally:
                sys.stdout = stdout

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "a checkpoint in memory"
        self.lr_scheduler.step(self.current_epoch)  # the lr this epoch will use (nnU-Net sets it again at its start)
        lrs = ", ".join(f"{g['lr']:g}" for g in self.optimizer.param_groups)
        self.print_to_log_file(
            f"Continuing training from {source}: epoch {self.current_epoch} of {self.num_epochs}, learning rate "
            f"{lrs} (the schedule as a function of the epoch), fold {self.fold}; optimizer state, logs and best "
            "EMA pseudo-Dice restored from the checkpoint.")

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        check_architecture_importable(configuration_manager.configuration["architecture"])
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
