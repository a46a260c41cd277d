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
    for _ in range(max(repeats, 0)):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times) if times else float("nan")


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """VmHWM: this process' peak RSS (unlike ru_maxrss it is not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_of(step: Callable[[], None], device: torch.device) -> int:
    """Peak memory (bytes) of one call of ``step`` above what was allocated before it.

    CUDA: ``max_memory_allocated``. CPU: peak RSS during the call minus RSS before it; run it in a fresh
    process per configuration (the scripts do) so that other configurations' freed memory does not hide it.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = current_rss_bytes()
    _reset_peak_rss()
    step()
    return max(_peak_rss_bytes() - before, 0)


def run_in_fresh_process(script: str, args: list[str], timeout: float = 3600, for_memory: bool = True) -> dict:
    """Run ``python script args --child`` and parse the JSON it prints on its last line."""
    cmd = [sys.executable, script, *args]
    # A fixed mmap threshold makes glibc return every large freed block to the OS at once, so that RSS
    # tracks live tensors (the default threshold grows after frees and keeps memory that RSS still counts).
    # It also makes every large allocation fault its pages in again: timing children run without it.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if for_memory else dict(os.environ)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1] if (res.stderr or res.stdout) else
                f"exit code {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def write_json(path: "os.PathLike[str] | str", data) -> None:
    """A benchmark's results as JSON at ``path`` (folders made as needed; values JSON lacks written as text)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"\nwritten to {path.resolve()}")
