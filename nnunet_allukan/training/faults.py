"""Training faults, handled the same way by every trainer of the project (a mixin placed before nnUNetTrainer).

- A NaN or infinite loss stops training at once, before the optimizer step that would spread it into the weights,
  with a message naming the epoch, the iteration, the cases of the batch and the likely cause; the checkpoints of
  earlier epochs (checkpoint_best / checkpoint_latest) are left as they were and no checkpoint_final is written.
- ``nnUNetv2_train ... --c`` says in the log from which checkpoint, epoch and learning rate it continues.
- A model folder whose plans record a network class or layer type that cannot be imported fails with a message
  that names the package to install, instead of nnU-Net's fallback search (which imports timm).
"""
from __future__ import annotations

import os
import pydoc
import sys

import numpy as np
import torch
from torch import nn

__all__ = ["NonFiniteLossError", "TrainingFaultsMixin", "check_architecture_importable", "unwrapped_network"]

PACKAGE = "nnunet-allukan"


def unwrapped_network(network: nn.Module) -> nn.Module:
    """The network inside DDP and torch.compile wrappers (their parameter names carry prefixes)."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


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
        if not isinstance(self.loss, _FiniteLossGuard):
            self.loss = _FiniteLossGuard(self.loss)

    def train_step(self, batch: dict) -> dict:
        self._current_batch_keys = batch.get("keys")
        self._current_batch_data = batch["data"]
        return super().train_step(batch)

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
