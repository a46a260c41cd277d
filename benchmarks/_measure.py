"""Shared measurement helpers for the benchmark scripts (timing in-process, peak memory in a fresh process)."""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``step`` in seconds after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_of(step: Callable[[], None], device: torch.device) -> int:
    """Peak memory (bytes) of one call of ``step`` above what was allocated before it.

    CUDA: ``max_memory_allocated``. CPU: growth of the process' peak RSS (ru_maxrss); meaningful only in a
    fresh process, which is why the scripts call this in a subprocess per configuration.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = current_rss_bytes()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(peak - before, 0)


def run_in_fresh_process(script: str, args: list[str], timeout: float = 3600) -> dict:
    """Run ``python script args --child`` and parse the JSON it prints on its last line."""
    cmd = [sys.executable, script, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1] if (res.stderr or res.stdout) else
                f"exit code {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"
