"""Before the first step on a GPU: will this network, patch and batch size fit? Say so in the log, not via OOM.

The Table 2 rows differ by orders of magnitude in memory (rows 9 / 10, vanilla-KAN KAonv with 27.5M parameters, need
several times ALL U-KAN's; the paper could not train rows 9 and 11 on 24 GB). Rather than a table of figures
measured on some other GPU and patch, the estimate is measured on the user's device for the user's network and
patch: one forward/backward at batch size 1 under the same autocast nnU-Net uses, then

    memory(batch) ~= memory of parameters, gradients and Adam state (+ DDP's gradient buckets) + batch * (activations
    of one sample)

compared with the memory the device has free. The probe runs on a network of its own, built for it from the same
plans (plain BatchNorm, no DDP, weights drawn without touching the training's random state) and freed afterwards:
under DDP the training network holds SyncBatchNorm layers whose forward exchanges statistics with the other ranks,
so a probe through it on one rank would meet the other ranks' collectives out of step (a hang). Only on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["MemoryEstimate", "estimate_training_memory", "memory_message"]

GIB = 2 ** 30


@dataclass
class MemoryEstimate:
    static_bytes: int  # gradients, Adam's two moments (and DDP's gradient buckets); the weights are already allocated
    per_sample_bytes: int  # peak activations of one sample
    batch_size: int
    free_bytes: int
    total_bytes: int

    @property
    def needed_bytes(self) -> int:
        return self.static_bytes + self.batch_size * self.per_sample_bytes


def estimate_training_memory(build_network: Callable[[], nn.Module], input_shape: Sequence[int], batch_size: int,
                             device: torch.device, gradient_buckets: bool = False) -> MemoryEstimate:
    """Measure one sample's training-step memory on ``device`` (CUDA) with a network made by ``build_network()``
    (a copy of the training network's architecture, used only here) and extrapolate to ``batch_size``.
    ``gradient_buckets``: DDP keeps a second copy of the gradients for its all-reduce."""
    with torch.random.fork_rng(devices=[]):  # the copy's initial weights come from the CPU generator
        params, per_sample = _probe(build_network, input_shape, device)
    torch.cuda.empty_cache()  # the copy, its gradients and activations are gone with _probe's frame
    free, total = torch.cuda.mem_get_info(device)
    return MemoryEstimate(static_bytes=(4 if gradient_buckets else 3) * params, per_sample_bytes=int(per_sample),
                          batch_size=batch_size, free_bytes=int(free), total_bytes=int(total))


def _probe(build_network: Callable[[], nn.Module], input_shape: Sequence[int], device: torch.device) -> tuple[int, int]:
    """(bytes of the copy's parameters, peak bytes of one training step at batch 1 beyond them)."""
    network = build_network().to(device).train()
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    x = torch.randn(1, *input_shape, device=device)
    with torch.autocast(device.type, enabled=True):
        output = network(x)
        output = output[0] if isinstance(output, (list, tuple)) else output
        loss = output.float().mean()
    loss.backward()
    torch.cuda.synchronize(device)
    return params, torch.cuda.max_memory_allocated(device) - before


def memory_message(estimate: MemoryEstimate, network_name: str, patch: Sequence[int],
                   global_batch: "int | None" = None) -> tuple[bool, str]:
    """(fits, log line) for an estimate; ``fits`` False when the estimate exceeds 95 % of the free memory.
    ``global_batch``: under DDP, the batch of all GPUs together (``estimate.batch_size`` is this GPU's share)."""
    needed, free = estimate.needed_bytes, estimate.free_bytes
    shared = global_batch is not None and global_batch != estimate.batch_size
    batch = f"{estimate.batch_size} on this GPU (of {global_batch})" if shared else str(estimate.batch_size)
    summary = (f"GPU memory estimate for {network_name}, patch {list(patch)}, batch {batch}: about "
               f"{needed / GIB:.1f} GiB ({estimate.per_sample_bytes / GIB:.2f} GiB per sample measured at batch 1, "
               f"{estimate.static_bytes / GIB:.2f} GiB for weights and optimizer state); the GPU has "
               f"{free / GIB:.1f} GiB free of {estimate.total_bytes / GIB:.1f} GiB.")
    if needed <= 0.95 * free:
        return True, summary
    fitting = max(0, int((0.95 * free - estimate.static_bytes) // max(estimate.per_sample_bytes, 1)))
    return False, (f"WARNING: {summary} This will very likely run out of memory. Options: a GPU with more memory; "
                   f"a smaller batch (about {fitting} would fit, but the paper's protocol uses "
                   f"{batch}); a smaller patch (re-plan with nnUNetv2_plan_experiment); or, for the "
                   "vanilla-KAN rows 9 / 10, the grad-free rows that need a fraction of the memory.")
