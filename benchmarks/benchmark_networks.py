"""Training-step time and peak memory of U-KAN_MLP, U-KAN and ALL U-KAN (paper Table 3), plus the batch-1
memory comparison of ALL U-KAN with the deep full-gradient stacks of Table 2 rows 9 and 11.

    python benchmarks/benchmark_networks.py                      # batch 8, 256x256, 3 channels, 1 class
    python benchmarks/benchmark_networks.py --batch-size 2 --size 128 --steps 3   # quick
    python benchmarks/benchmark_networks.py --device cuda --json out.json
    python benchmarks/benchmark_networks.py --dims 3 --size 64 --batch-size 2 --configs U-KAN_MLP "ALL U-KAN"

A step is forward + loss (0.5 BCE + Dice) + backward + Adam step. Every configuration runs in a fresh
process (so that peak memory is its own): peak memory (CUDA: max_memory_allocated; CPU: peak RSS growth) of
building the network and running its first two steps, so parameters, gradients, Adam state, activations and
on CUDA the compilation of the basis kernels (as in a real training process; ``--precompile`` moves it out, onto a
small copy) are included; then the median step time after warm-up. ``chunk_size`` appears only on the reference
row: the fast path never builds bases per input and has nothing to chunk.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from _measure import fmt_bytes, median_time, peak_memory_of, run_in_fresh_process, write_json  # noqa: E402

from nnunet_allukan.layers import kernels  # noqa: E402
from nnunet_allukan.networks import build_table2_network, network_summary  # noqa: E402
from nnunet_allukan.paper import (BATCH1_GPU_MEMORY_GB, BCE_WEIGHT, CHUNK_SIZE, DICE_SMOOTH, INITIAL_LR,  # noqa: E402
                                  TABLE3, WEIGHT_DECAY)

# name -> (Table 2 row, overrides)
CONFIGS = {
    "U-KAN_MLP": (4, {}),
    "U-KAN": (5, {}),
    "ALL U-KAN": (13, {}),
    f"ALL U-KAN reference (unfold), chunk {CHUNK_SIZE}": (13, dict(chunk_size=CHUNK_SIZE, implementation="reference")),
}
# name -> its row of the paper's Table 3 (GPU memory, time per step), whose ratios the table prints next to ours
PAPER_TABLE3_ROW = {"U-KAN_MLP": "U-KAN_MLP", "U-KAN": "U-KAN", "ALL U-KAN": f"ALL U-KAN chunk {CHUNK_SIZE}",
                    f"ALL U-KAN reference (unfold), chunk {CHUNK_SIZE}": f"ALL U-KAN chunk {CHUNK_SIZE}"}
BATCH1_CONFIGS = {
    "ALL U-KAN (row 13), batch 1": (13, {}),
    "row 11 SaKAN KAonv full-grad, unfold, batch 1": (11, dict(implementation="reference")),
    "row 11 SaKAN KAonv full-grad, fast, batch 1": (11, dict()),
    "row 9 vanilla KAonv full-grad, batch 1": (9, dict()),
}


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid()
    inter = (prob * target).flatten(1).sum(1)
    dice = (2 * inter + DICE_SMOOTH) / (prob.flatten(1).sum(1) + target.flatten(1).sum(1) + DICE_SMOOTH)
    return BCE_WEIGHT * F.binary_cross_entropy_with_logits(logits, target) + (1 - dice).mean()


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                scaler: torch.amp.GradScaler | None = None) -> None:
    """One step; with ``scaler``, nnU-Net's CUDA default: autocast float16 and a GradScaler."""
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss_fn(net(x), y).backward()
        opt.step()
        return
    with torch.autocast(x.device.type, dtype=torch.float16):
        loss = loss_fn(net(x).float(), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def _strides(a: argparse.Namespace) -> list | None:
    """2D: the paper's. 3D: as the 3D trainers derive them from nnU-Net's plan for a cube of side ``--size``
    (2x pooling down to 4 voxels, at most five times)."""
    if a.dims == 2:
        return None
    from nnunet_allukan.training.protocol import ukan_strides

    downsamplings = min(5, max(0, (a.size // 4).bit_length() - 1))
    return ukan_strides([[1] * 3] + [[2] * 3] * downsamplings, 3)


def child(a: argparse.Namespace, name: str, batch: int) -> dict:
    device = torch.device(a.device)
    row, overrides = {**CONFIGS, **BATCH1_CONFIGS}[name]
    overrides = dict(overrides, dim=a.dims, strides=_strides(a))
    if a.nnunet_imports:  # nnU-Net's nnUNetTrainer module imports it in every training process
        importlib.import_module("torch._dynamo")
    if a.precompile:
        # Warm-up on a small copy of the same configuration: compiles the basis kernels (and initialises the
        # backends) so that neither compilation time nor compiler memory is counted below.
        small = build_table2_network(row, a.channels, a.classes, embed_dims=(16, 24, 32), **overrides).to(device)
        xs = torch.randn(2, a.channels, *[a.size if a.dims == 3 else 64] * a.dims, device=device)
        train_step(small, torch.optim.Adam(small.parameters()), xs, (xs[:, : a.classes] > 0).float(),
                    torch.amp.GradScaler(device.type) if a.amp else None)
        del small, xs

    def setup_and_first_steps() -> None:  # measured: parameters, gradients, Adam state, activations (+ compile)
        torch.manual_seed(0)
        state["net"] = net = build_table2_network(row, a.channels, a.classes, **overrides).to(device).train()
        state["opt"] = opt = torch.optim.Adam(net.parameters(), lr=INITIAL_LR, weight_decay=WEIGHT_DECAY)
        state["x"] = torch.randn(batch, a.channels, *[a.size] * a.dims, device=device)
        state["y"] = (torch.rand(batch, a.classes, *[a.size] * a.dims, device=device) > 0.5).float()
        state["scaler"] = torch.amp.GradScaler(device.type) if a.amp else None
        for _ in range(2):
            train_step(net, opt, state["x"], state["y"], state["scaler"])

    state: dict = {}
    peak = peak_memory_of(setup_and_first_steps, device)
    t = median_time(lambda: train_step(state["net"], state["opt"], state["x"], state["y"], state["scaler"]), device,
                    a.warmup, a.steps)
    return {"time_s": t, "peak_bytes": peak, "parameters": network_summary(state["net"])["parameters"]}


def run_all(a: argparse.Namespace, configs: dict, batch: int) -> dict:
    results = {}
    for name in configs:
        print(f"  measuring {name} (batch {batch}) ...", flush=True)
        args = ["--child", name, "--child-batch", str(batch), "--device", a.device, "--size", str(a.size),
                "--dims", str(a.dims), "--channels", str(a.channels), "--classes", str(a.classes), "--steps",
                str(a.steps), "--warmup", str(a.warmup)] + (["--threads", str(a.threads)] if a.threads else []) + \
            (["--precompile"] if a.precompile else []) + (["--amp"] if a.amp else []) + \
            (["--nnunet-imports"] if a.nnunet_imports else [])
        results[name] = run_in_fresh_process(__file__, args)
        if "error" in results[name]:
            print(f"    failed: {results[name]['error']}")
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="square input side, multiple of 32 (default 256)")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2,
                   help="2: square images (default); 3: cubes of side --size, 3D networks (3D trainers' strides)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median) after warm-up")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), help="subset of: " + ", ".join(CONFIGS))
    p.add_argument("--precompile", action="store_true",
                   help="compile the basis kernels on a small copy first, outside the measured peak memory "
                        "(default: the measured peak includes compilation, as in a real training process)")
    p.add_argument("--amp", action="store_true", help="autocast float16 + GradScaler (nnU-Net's CUDA default)")
    p.add_argument("--nnunet-imports", action="store_true",
                   help="import torch._dynamo before measuring, as nnU-Net's trainer module does in every training "
                        "process (its ~70 MB then do not count as the network's)")
    p.add_argument("--skip-batch1", action="store_true", help="skip the batch-1 rows 9/11 memory comparison")
    p.add_argument("--json", type=Path, default=Path("benchmark_results/network_benchmark.json"),
                   help="where to write the results as JSON (default benchmark_results/network_benchmark.json)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-batch", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.size % 32:
        p.error(f"--size must be a multiple of 32, got {a.size}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child is not None:
        print(json.dumps(child(a, a.child, a.child_batch)))
        return 0

    shape = "x".join([str(a.size)] * a.dims)
    print(f"batch {a.batch_size}, {shape}, {a.channels} ch, {a.classes} class(es), device {a.device}, "
          f"threads {torch.get_num_threads()}")
    print(kernels.describe(torch.device(a.device).type))
    main_res = run_all(a, {k: CONFIGS[k] for k in a.configs}, a.batch_size)
    base = main_res.get("U-KAN_MLP", {})
    paper_base_memory, paper_base_time = TABLE3["U-KAN_MLP"]
    lines = [f"### Training step, batch {a.batch_size}, {shape}, {a.device}", "",
             "| method | params | time/step | x U-KAN_MLP | paper x | peak memory | x U-KAN_MLP | paper x |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in main_res.items():
        if "error" in r:
            lines.append(f"| {name} | - | failed | - | - | - | - | - |")
            continue
        tr = f"{r['time_s'] / base['time_s']:.2f}" if "time_s" in base else "-"
        mr = f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if base.get("peak_bytes") else "-"
        paper_memory, paper_time = TABLE3[PAPER_TABLE3_ROW[name]]
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f}M | {r['time_s']:.2f} s | {tr} | "
                     f"{paper_time / paper_base_time:.2f} | {fmt_bytes(r['peak_bytes'])} | {mr} | "
                     f"{paper_memory / paper_base_memory:.2f} |")
    b1 = {}
    if not a.skip_batch1:
        b1 = run_all(a, BATCH1_CONFIGS, 1)
        ref = b1.get("ALL U-KAN (row 13), batch 1", {})
        lines += ["", f"### Batch 1 memory, {a.size}x{a.size} (paper: "
                  + ", ".join(f"row {row} {gb:g} GB" for row, gb in BATCH1_GPU_MEMORY_GB.items()) + ")", "",
                  "| configuration | params | time/step | peak memory | x ALL U-KAN |", "|---|---:|---:|---:|---:|"]
        for name, r in b1.items():
            if "error" in r:
                lines.append(f"| {name} | - | failed: {r['error'][:60]} | - | - |")
                continue
            ratio = f"{r['peak_bytes'] / ref['peak_bytes']:.1f}" if ref.get("peak_bytes") else "-"
            lines.append(f"| {name} | {r['parameters'] / 1e6:.2f}M | {r['time_s']:.2f} s | "
                         f"{fmt_bytes(r['peak_bytes'])} | {ratio} |")
    print("\n" + "\n".join(lines))
    if a.json:
        write_json(a.json, {"args": vars(a) | {"json": str(a.json)}, "train_step": main_res, "batch1": b1})
    return 0


if __name__ == "__main__":
    sys.exit(main())
