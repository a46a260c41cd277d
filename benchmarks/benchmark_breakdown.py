"""Where the time of an ALL U-KAN forward and of one KAonv layer goes, per kernel backend.

    python benchmarks/benchmark_breakdown.py            # both parts, ~2 min on 2 idle cores
    python benchmarks/benchmark_breakdown.py --part forward

- ``forward``: one ALL U-KAN / U-KAN_MLP forward at batch 1, 256x256, no gradients (what nnUNetv2_predict runs per
  mirror), each kernel policy in a fresh process: the first call, then the median of 10 calls. Policies
  (``nnunet_allukan.layers.kernels.use``): ``native`` (the default on CPU) and ``torch`` (the tensor backend).
- ``layer``: KAConv2d 32 -> 32, 128x128, batch 2 against nn.Conv2d, forward and backward timed apart (median of
  20 interleaved steps), with the window sums kept for backward (default) and recomputed, native and torch
  kernels.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from _measure import run_in_fresh_process, write_json  # noqa: E402

from nnunet_allukan.layers import KAConv2d, ka_autograd, kernels  # noqa: E402
from nnunet_allukan.networks import build_table2_network  # noqa: E402

ROWS = {"U-KAN_MLP": 4, "ALL U-KAN": 13}


def forward_child(row: int, mode: str) -> dict:
    kernels.use(mode)
    net = build_table2_network(row, 3, 1).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        start = time.perf_counter()
        net(x)
        first = time.perf_counter() - start
        times = []
        for _ in range(10):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(times)}


def layer_split(keep_window_sums: bool, mode: str) -> dict:
    kernels.use(mode)
    if not keep_window_sums:
        ka_autograd.KEEP_WINDOW_SUMS_MAX_FRACTION = 0.0
    torch.manual_seed(0)
    layers = {"KAConv2d": KAConv2d(32, 32, 3, padding=1), "nn.Conv2d": torch.nn.Conv2d(32, 32, 3, padding=1)}
    inputs = {name: torch.randn(2, 32, 128, 128, requires_grad=True) for name in layers}
    times = {name: ([], []) for name in layers}
    for step in range(25):
        for name, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            inputs[name].grad = None
            t0 = time.perf_counter()
            loss = layer(inputs[name]).square().mean()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if step >= 5:  # warm-up: oneDNN primitives, allocator
                times[name][0].append(t1 - t0)
                times[name][1].append(t2 - t1)
    return {name: {"forward_s": statistics.median(f), "backward_s": statistics.median(b)}
            for name, (f, b) in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["forward", "layer", "both"], default="both")
    p.add_argument("--json", type=Path, default=Path("benchmark_results/breakdown.json"))
    p.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:  # fresh process for one forward measurement, or one layer split
        kind, arg = a.child
        first, mode = arg.split(":")
        res = forward_child(ROWS[first], mode) if kind == "forward" else layer_split(first == "keep", mode)
        print(json.dumps(res))
        return 0
    out: dict = {}
    if a.part in ("forward", "both"):
        print("batch-1 forward, 256x256, no gradients (fresh process each):")
        for name in ROWS:
            for mode in ("native", "torch"):
                res = run_in_fresh_process(__file__, ["--child", "forward", f"{name}:{mode}"], for_memory=False)
                out[f"forward {name} {mode}"] = res
                if "error" in res:
                    print(f"  {name}, {mode} kernels: failed ({res['error']})")
                    continue
                print(f"  {name}, {mode} kernels: first call {res['first_s']:.2f} s, then {res['median_s'] * 1e3:.1f} ms")
    if a.part in ("layer", "both"):
        print("KAConv2d 32->32, 128x128, batch 2 vs nn.Conv2d (fresh process each):")
        for keep, mode in (("keep", "native"), ("recompute", "native"), ("keep", "torch")):
            res = run_in_fresh_process(__file__, ["--child", "layer", f"{keep}:{mode}"], for_memory=False)
            out[f"layer window sums {keep}, {mode} kernels"] = res
            if "error" in res:
                print(f"  window sums {keep}, {mode} kernels: failed ({res['error']})")
                continue
            k, c = res["KAConv2d"], res["nn.Conv2d"]
            ratio = (k["forward_s"] + k["backward_s"]) / (c["forward_s"] + c["backward_s"])
            print(f"  window sums {keep}, {mode} kernels: KAConv2d forward {k['forward_s'] * 1e3:.2f} ms, backward "
                  f"{k['backward_s'] * 1e3:.2f} ms; nn.Conv2d {c['forward_s'] * 1e3:.2f} / "
                  f"{c['backward_s'] * 1e3:.2f} ms; ratio {ratio:.2f}")
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
