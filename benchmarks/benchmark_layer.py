"""One KAonv layer, forward + backward: time and peak memory of each implementation, as ratios to nn.Conv2d/3d.

    python benchmarks/benchmark_layer.py [--batch 2 --channels 32 --size 128 --kernel 3] [--device cpu|cuda]
    python benchmarks/benchmark_layer.py --depthwise --channels 128 --size 64 --variants nn.Conv "KAConv fast grad-free"
    python benchmarks/benchmark_layer.py --dims 3 --channels 32 --size 48 --variants nn.Conv "KAConv fast grad-free"
    python benchmarks/benchmark_layer.py --variants nn.Conv "KAConv fast grad-free" --basis rbf chebyshev relu
    python benchmarks/benchmark_layer.py --variants nn.Conv "KAConv fast grad-free" --basis bspline1 bspline2

Time: median over ``--repeats`` interleaved rounds (one step of every variant per round) after warm-up.
Peak memory: every variant in a fresh process (``--child``), on CPU as growth of the peak RSS.
``--basis`` adds one "KAConv fast grad-free basis=<family>" variant per basis family named (``bspline1`` and
``bspline2``: B-splines of order 1 and 2; the kernels that serve each are printed first); with "KAConv fast grad-free" (the cubic B-spline) also run, the table gives each
variant's ratio to it too.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from _measure import fmt_bytes, median_time, peak_memory_of, run_in_fresh_process  # noqa: E402

from nnunet_allukan.layers import KAConv2d, KAConv3d, KANConv2d, kernels  # noqa: E402
from nnunet_allukan.layers.splines import BASES, SplineGrid  # noqa: E402

# name -> builder(channels, kernel, dims, groups); "nn.Conv" is the baseline every ratio refers to.
VARIANTS = {
    "nn.Conv": lambda c, k, nd, g: (nn.Conv2d if nd == 2 else nn.Conv3d)(c, c, k, padding=k // 2, groups=g),
    "KAConv fast grad-free": lambda c, k, nd, g: (KAConv2d if nd == 2 else KAConv3d)(c, c, k, padding=k // 2,
                                                                                     groups=g, grad_free=True),
    "KAConv fast full-grad": lambda c, k, nd, g: (KAConv2d if nd == 2 else KAConv3d)(c, c, k, padding=k // 2,
                                                                                     groups=g, grad_free=False),
    "KAConv reference grad-free": lambda c, k, nd, g: (KAConv2d if nd == 2 else KAConv3d)(
        c, c, k, padding=k // 2, groups=g, grad_free=True, implementation="reference"),
    "KAConv reference full-grad": lambda c, k, nd, g: (KAConv2d if nd == 2 else KAConv3d)(
        c, c, k, padding=k // 2, groups=g, grad_free=False, implementation="reference"),
    "KANConv2d (vanilla, full-grad)": lambda c, k, nd, g: KANConv2d(c, c, k, padding=k // 2, groups=g),
}
CUBIC = "KAConv fast grad-free"
FAMILY_VARIANT = CUBIC + " basis="  # + a basis family: the fast grad-free layer with that family's bases
# --basis names: the families, and the B-splines of lower orders as bspline<order>.
FAMILIES = {**{b: dict(basis=b) for b in BASES}, "bspline1": dict(basis="bspline", spline_order=1),
            "bspline2": dict(basis="bspline", spline_order=2)}


def build(name: str, c: int, k: int, nd: int, g: int) -> nn.Module:
    if name.startswith(FAMILY_VARIANT):
        return (KAConv2d if nd == 2 else KAConv3d)(c, c, k, padding=k // 2, groups=g, grad_free=True,
                                                   **FAMILIES[name[len(FAMILY_VARIANT):]])
    return VARIANTS[name](c, k, nd, g)


def make_step(name: str, a: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    layer = build(name, a.channels, a.kernel, a.dims, a.channels if a.depthwise else 1).to(device)
    if "KAConv reference" in name:  # only the reference path builds bases per input, in chunks
        layer.chunk_size = a.chunk_size
    x = torch.randn(a.batch, a.channels, *([a.size] * a.dims), device=device, requires_grad=True)

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).square().mean().backward()

    return step


def measure(a: argparse.Namespace) -> dict:
    """Median fwd+bwd time of every variant over interleaved rounds, peak memory of each in a fresh process."""
    device = torch.device(a.device)
    steps = {name: make_step(name, a, device) for name in a.variants}
    # Interleaved rounds (one step of every variant per round) so that drifting load on a shared machine
    # affects all variants alike; the median over rounds is reported.
    for step in steps.values():
        median_time(step, device, a.warmup, 0)
    rounds = {name: [] for name in steps}
    for _ in range(a.repeats):
        for name, step in steps.items():
            rounds[name].append(median_time(step, device, 0, 1))
    times = {name: statistics.median(ts) for name, ts in rounds.items()}
    base_args = [a_ for k, v in vars(a).items() if k not in ("variants", "json", "child", "depthwise", "basis") and
                 v is not None for a_ in (f"--{k.replace('_', '-')}", str(v))] + (["--depthwise"] if a.depthwise else [])
    base_args += ["--json", ""]
    mems = {}
    for name in a.variants:
        res = run_in_fresh_process(__file__, base_args + ["--child", name])
        mems[name] = res.get("peak_bytes", float("nan"))
        if "error" in res:
            print(f"  memory of {name}: failed ({res['error']})")
    return {"time_s": times, "peak_bytes": mems}


def describe(a: argparse.Namespace) -> str:
    return (f"B={a.batch} C={a.channels} {'x'.join([str(a.size)] * a.dims)}, kernel {a.kernel}"
            f"{', depthwise' if a.depthwise else ''}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2: KAConv2d vs nn.Conv2d, 3: KAConv3d vs nn.Conv3d")
    p.add_argument("--depthwise", action="store_true", help="groups = channels")
    p.add_argument("--chunk-size", type=int, default=None, help="chunk_size of the reference variants (default: all channels; the fast path has none)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help="subset of: " + ", ".join(VARIANTS))
    p.add_argument("--basis", nargs="*", default=[], choices=list(FAMILIES),
                   help=f"add one '{FAMILY_VARIANT}<family>' variant per basis family named")
    p.add_argument("--json", default="benchmark_results/layer_benchmark.json",
                   help="where to write the results as JSON (default benchmark_results/layer_benchmark.json; '' for none)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    unknown = [v for v in a.variants if v not in VARIANTS and not v.startswith(FAMILY_VARIANT)]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    a.variants = list(a.variants) + [FAMILY_VARIANT + b for b in a.basis if FAMILY_VARIANT + b not in a.variants]
    return a


def main() -> int:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.child is not None:  # fresh process: one warm-up step (lazy initialisation), then the measured one
        step = make_step(a.child, a, device)
        step()
        print(json.dumps({"peak_bytes": peak_memory_of(step, device)}))
        return 0

    print(f"shape {describe(a)}, device {device}, threads {torch.get_num_threads()}")
    print(kernels.describe(device.type))
    for basis in a.basis:
        print(kernels.describe(device.type, SplineGrid(**FAMILIES[basis])))
    res = measure(a)
    times, mems = res["time_s"], res["peak_bytes"]
    t0, m0 = times.get("nn.Conv"), mems.get("nn.Conv")
    tc, mc = times.get(CUBIC), mems.get(CUBIC)
    print("\n| variant | time fwd+bwd | x nn.Conv | x cubic B-spline | peak memory | x nn.Conv | x cubic B-spline |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in a.variants:
        tr = f"{times[name] / t0:.2f}" if t0 else "-"
        mr = f"{mems[name] / m0:.2f}" if m0 else "-"
        tcr = f"{times[name] / tc:.2f}" if tc else "-"
        mcr = f"{mems[name] / mc:.2f}" if mc else "-"
        print(f"| {name} | {times[name] * 1e3:.1f} ms | {tr} | {tcr} | {fmt_bytes(mems[name])} | {mr} | {mcr} |")
    fg, rg = "KAConv fast grad-free", "KAConv reference grad-free"
    if fg in times and rg in times:
        print(f"\nfast vs reference (grad-free): {times[rg] / times[fg]:.1f}x faster, {mems[rg] / max(mems[fg], 1):.1f}x"
              f" less peak memory")
    if a.json:
        out = Path(a.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "time_s": times,
                                      "peak_bytes": mems, "kernels": [vars(c) for c in kernels.active(device.type)],
                                      "pid": os.getpid()}, indent=2))
        print(f"written to {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
