"""OpenMP's wait policy for CPU training beside other processes: the setting the demo passes to its training and
the line the trainers write in their log when the environment leaves it at its default.

libgomp, the OpenMP runtime of torch's Linux wheels, lets a thread that ends a parallel region spin up to
``GOMP_SPINCOUNT`` times (300000 by default) before it sleeps. Beside other busy processes (nnU-Net's augmentation
workers) the spinning threads take the cores that the next region's threads wait for; 1000 keeps the quiet speed
and removes most of that loss (docs/performance.md). libgomp reads the variable when it loads, so only a new
process's environment can set it, never a running trainer.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

__all__ = ["CPU_SPIN_COUNT", "OPENMP_WAIT_VARIABLES", "wait_policy_set", "cpu_contention_hint"]

CPU_SPIN_COUNT = "1000"
OPENMP_WAIT_VARIABLES = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


def wait_policy_set(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` chooses OpenMP's wait policy itself (one of :data:`OPENMP_WAIT_VARIABLES`)."""
    return any(name in environ for name in OPENMP_WAIT_VARIABLES)


def cpu_contention_hint(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Optional[str]:
    """One line for the log of CPU training on Linux where ``environ`` sets neither of
    :data:`OPENMP_WAIT_VARIABLES`; ``None`` otherwise."""
    if platform != "linux" or wait_policy_set(environ):
        return None
    return (f"CPU training beside other processes (nnU-Net's augmentation workers, nnUNet_n_proc_DA): OpenMP threads "
            f"spin after every parallel region and lose speed to them; start nnUNetv2_train with "
            f"GOMP_SPINCOUNT={CPU_SPIN_COUNT} in its environment to keep it (docs/performance.md).")
