"""The Triton kernels' compiled code for CUDA GPUs, measured without a GPU: for every kernel variant the project's
networks launch in a training step (float32, float16 and bfloat16 autocast), the registers and spills of its cubin
for sm_90 (H100) and sm_80 (A100), the occupancy they allow, bytes, flops and instructions per input value, and the
time these predict on an H100 SXM at its memory bandwidth and its instruction issue rate
(benchmarks/triton_variants.py says how each figure is obtained).

    python benchmarks/benchmark_triton_kernels.py                 # table on stdout (~5-10 minutes on 2 cores)
    python benchmarks/benchmark_triton_kernels.py --markdown --json results.json
    python benchmarks/benchmark_triton_kernels.py --families      # also every other basis family's variants

Recording runs every network family's training step once per dtype on CPU with the kernels replaced by a
recorder; compiling runs in two worker processes with a temporary Triton cache. Also checked and printed: that the
networks left out of tests/test_kernels_cuda_compile.py (3D, the vanilla-KAN rows with full spline gradients) and
its narrower nnU-Net U-Nets add no variant to what the test compiles.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton: the launches are recorded interpreted
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

import triton_variants as tv  # noqa: E402

CHANNELS = 32  # channels per row for the per-position stores' share of the bytes (ALL U-KAN's second stage: 32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown (docs/performance.md)")
    ap.add_argument("--families", action="store_true",
                    help="also the variants of the other basis families (triton_variants.family_stacks: B-splines "
                         "of order 1 and 2, rbf, chebyshev, relu), named with the family")
    ap.add_argument("--skip-test-check", action="store_true",
                    help="do not record the test's configuration to compare (saves a minute or two)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    module = tv.interpreted_kernels()
    t0 = time.perf_counter()
    launched = tv.record_launches(module, families=tv.FAMILIES if args.families else ())
    print(f"recorded the launches of {len(launched)} networks in {time.perf_counter() - t0:.0f} s")
    variants = sorted(set().union(*launched.values()), key=tv.Variant.name)
    for name, seen in launched.items():
        print(f"  {name:28s} {len(seen):3d} variants")
    two_d = set().union(*(v for n, v in launched.items() if n.endswith("2D")))
    three_d = set().union(*(v for n, v in launched.items() if n.endswith("3D")))
    print(f"3D networks' variants not launched by a 2D network: {len(three_d - two_d)}")
    print(f"launched by {', '.join(tv.LAUNCH_NOTHING)}: "
          f"{sum(len(launched.get(n, ())) for n in tv.LAUNCH_NOTHING)} variants")
    if not args.skip_test_check:
        names = {n for n, _, _ in tv.networks(dims=(2,))} - set(tv.LAUNCH_NOTHING)
        test = set().union(*tv.record_launches(module, only=names, dims=(2,), unet_features=8).values())
        cubic = {v for v in variants if v.family == ("bspline", 3)}  # the networks' (without --families: all)
        print(f"the test's configuration records {len(test)} variants; the same set as all networks': "
              f"{test == cubic}")
    t0 = time.perf_counter()
    compiled = tv.compile_variants(variants, archs=(90, 80), processes=2)
    print(f"compiled {len(variants)} variants for sm_90 and sm_80 in {time.perf_counter() - t0:.0f} s "
          "(2 processes)\n")
    rows = []
    for variant, by_arch in compiled:
        if any("error" in by_arch[a] for a in (90, 80)):
            print(f"{variant.name()}: " + "; ".join(f"sm_{a}: {by_arch[a].get('error')}" for a in (90, 80)
                                                   if "error" in by_arch[a]))
            continue
        occ = {a: tv.occupancy(by_arch[a]["registers"], by_arch[a]["shared_bytes"], variant.num_warps, a)
               for a in (90, 80)}
        rows.append(dict(variant=variant.name(), networks=sorted(n for n, s in launched.items() if variant in s),
                         sm90=by_arch[90], sm80=by_arch[80], occupancy90=occ[90], occupancy80=occ[80],
                         h100=tv.predict(variant, by_arch[90], CHANNELS)))
    header = ["variant", "sm_90 regs", "spills", "occupancy", "sm_80 regs", "spills", "occupancy", "B/value",
              "flops/value", "instr/value", "memory us", "issue us", "latency us", "predicted us", "bound"]
    lines = []
    for r in rows:
        h = r["h100"]
        lines.append([r["variant"], r["sm90"]["registers"], r["sm90"]["spill_stores"],
                      f"{r['occupancy90']['occupancy']:.0%}", r["sm80"]["registers"], r["sm80"]["spill_stores"],
                      f"{r['occupancy80']['occupancy']:.0%}", f"{h['bytes']:.2f}", f"{h['flops']:.0f}",
                      f"{h['instructions']:.0f}", f"{h['t_memory_us']:.0f}", f"{h['t_issue_us']:.0f}",
                      f"{h['t_latency_us']:.0f}", f"{h['predicted_us']:.0f}", h["bound"]])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for line in lines:
            print("| " + " | ".join(str(c) for c in line) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
        for line in [header] + lines:
            print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in
                            enumerate(zip(line, widths))))
    worst = max(rows, key=lambda r: r["sm90"]["registers"]) if rows else None
    if worst:
        print(f"\nmost registers: {worst['variant']} ({worst['sm90']['registers']} on sm_90, occupancy "
              f"{worst['occupancy90']['occupancy']:.0%}); spills in any variant: "
              f"{any(r['sm90']['spill_stores'] or r['sm80']['spill_stores'] for r in rows)}")
    print(f"H100 SXM: {tv.H100['bandwidth'] / 1e12:.2f} TB/s, {tv.H100['sms']} SMs at {tv.H100['clock'] / 1e9:.2f} "
          f"GHz issuing {tv.H100['issue'] / 1e12:.1f} T thread-instructions/s (FP32 peak "
          f"{tv.H100['fp32_flops'] / 1e12:.1f} TFLOP/s), a {tv.LATENCY_S * 1e9:.0f} ns memory round trip (assumed); "
          f"times for 2^24 input values, {CHANNELS} channels per row")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows=rows, networks={n: sorted(v.name() for v in s)
                                                                       for n, s in launched.items()}), indent=1))
    return 1 if any("error" in by_arch[a] for _, by_arch in compiled for a in (90, 80)) else 0


if __name__ == "__main__":
    sys.exit(main())
