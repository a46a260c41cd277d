"""NaN guard: a non-finite loss stops training before the optimizer step that would spread it into the weights.

The message names the epoch, the cases of the batch and the likely cause (a corrupt preprocessed case, or a
learning rate too high for the network and data). The checkpoints of earlier epochs (checkpoint_best /
checkpoint_latest) are left as they were and no checkpoint_final is written.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from torch import nn

__all__ = ["FiniteLossGuard", "NonFiniteLossError", "NonFiniteLossMixin"]


class NonFiniteLossError(RuntimeError):
    """Raised inside a training step when the loss is NaN or infinite; ``args[0]`` is the loss value."""


class FiniteLossGuard(nn.Module):
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


class NonFiniteLossMixin:
    """Put before ``nnUNetTrainer`` in a trainer's bases: wraps the loss in :class:`FiniteLossGuard` and turns
    :class:`NonFiniteLossError` into a clear stop (``SystemExit`` with the message, also written to the log)."""

    def initialize(self):
        super().initialize()
        if not isinstance(self.loss, FiniteLossGuard):
            self.loss = FiniteLossGuard(self.loss)

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
        """Stops the augmentation workers quietly, so the process can exit with the message as its last words."""
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
