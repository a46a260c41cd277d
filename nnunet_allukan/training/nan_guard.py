"""NaN guard: a non-finite loss stops training before the optimizer step that would spread it into the weights.

The message names the epoch, the cases of the batch and the likely cause (a corrupt preprocessed case, or a
learning rate too high for the network and data). The checkpoints of earlier epochs (checkpoint_best /
checkpoint_latest) are left as they were and no checkpoint_final is written.

Under DDP (``nnUNetv2_train ... -num_gpus N``) every rank learns in each training step, before backward, whether
any rank's loss is non-finite: one all-reduce of a one-element flag per step, on the device of the loss (next to
the gradient all-reduce of every step it is negligible; the guard waits for the loss value on every step anyway).
So all ranks stop at the same step, none is left waiting in the gradient all-reduce, and rank 0 (the one that
writes nnU-Net's log) writes the message with the ranks, cases and inputs of every rank whose loss was not finite.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = ["FiniteLossGuard", "NonFiniteLossError", "NonFiniteLossMixin"]


class NonFiniteLossError(RuntimeError):
    """Raised inside a training step when the loss is NaN or infinite (under DDP: on any rank); ``args[0]`` is this
    rank's loss value."""


class FiniteLossGuard(nn.Module):
    """Wraps nnU-Net's loss module: raises :class:`NonFiniteLossError` before backward/step on a non-finite loss.
    ``ddp``: the loss of every rank counts (one all-reduce of a flag per training step)."""

    def __init__(self, loss: nn.Module, ddp: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.ddp = ddp

    def forward(self, *args, **kwargs):
        value = self.loss(*args, **kwargs)
        # Training steps only (validation runs without autograd and changes no weight); every rank runs the same
        # training steps, so the all-reduce below is met by all of them.
        if torch.is_grad_enabled():
            non_finite = (~torch.isfinite(value.detach()).all()).to(torch.int32).reshape(1)
            if self.ddp:
                dist.all_reduce(non_finite)  # the number of ranks whose loss is not finite
            if int(non_finite.item()):
                raise NonFiniteLossError(float(value.detach().float().cpu().reshape(-1)[0]))
        return value


class NonFiniteLossMixin:
    """Put before ``nnUNetTrainer`` in a trainer's bases: wraps the loss in :class:`FiniteLossGuard` and turns
    :class:`NonFiniteLossError` into a clear stop (``SystemExit`` with the message, also written to the log)."""

    def initialize(self):
        super().initialize()
        if not isinstance(self.loss, FiniteLossGuard):
            self.loss = FiniteLossGuard(self.loss, ddp=self.is_ddp)

    def _rebuild_loss(self) -> nn.Module:
        return FiniteLossGuard(super()._rebuild_loss(), ddp=self.is_ddp)

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
        where, whose = "", ""
        if self.is_ddp:
            # Every rank stopped at this step: what each saw, for the message rank 0 writes (a collective all ranks
            # reach, once).
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, (value, cases, bad_input))
            failed = [(rank, v, c, b) for rank, (v, c, b) in enumerate(ranks) if not np.isfinite(v)]
            # A corrupt case on one rank also reaches the other ranks' losses (SyncBatchNorm's statistics).
            corrupt = [(rank, v, c, b) for rank, (v, c, b) in enumerate(ranks) if b]
            shown = corrupt or failed
            bad_input = bool(corrupt)
            value = failed[0][1] if failed else value
            names = ", ".join(str(f[0]) for f in failed)
            where = (f" on rank{'s' if len(failed) > 1 else ''} {names} of {len(ranks)} (every rank stopped at this "
                     "step)")
            cases = "; ".join(f"rank {rank}: {c}" for rank, _, c, _ in shown)
            whose = f" of rank{'s' if len(shown) > 1 else ''} {', '.join(str(f[0]) for f in shown)}"
        lr = self.optimizer.param_groups[0]["lr"]
        if bad_input:
            cause = (f"the batch{whose} itself holds NaN / infinite values: a preprocessed case is corrupt. Re-run "
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
                f"{self.current_epoch}{where}, before the optimizer step (batch cases: {cases}). "
                f"Likely cause: {cause}. {checkpoints}")

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
