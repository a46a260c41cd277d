"""The project's speed and memory ratios in one run, each against its plain-network or plain-layer baseline.

    python benchmarks/benchmark_ratios.py                      # everything below (~15 min on 2 quiet cores)
    python benchmarks/benchmark_ratios.py --skip network       # layers only
    python benchmarks/benchmark_ratios.py --device cuda --amp --time-target 1.5 --memory-target 1.3   # GPU targets

- network time: ALL U-KAN vs U-KAN_MLP train step (forward + 0.5 BCE + Dice + backward + Adam), batch 8,
  256x256, both networks in this one process, interleaved rounds (one step of each per round; the median over
  rounds), so that a shared machine's drifting load hits both alike.
- network memory: each network in a fresh process, growth of peak RSS (CUDA: max_memory_allocated) over
  building it and two steps (benchmark_networks.py's child; on CUDA the basis kernels' compilation included).
- layers: forward + backward against nn.Conv2d / nn.Conv3d, interleaved rounds; peak memory in fresh processes
  (benchmark_layer.py): the layer benchmark's shape, a depthwise layer, and a 3D shape.

Prints a table of ratio, target and verdict and writes everything as JSON (``--json``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
import benchmark_layer  # noqa: E402
import benchmark_networks  # noqa: E402
from _measure import run_in_fresh_process, sync, write_json  # noqa: E402

from nnunet_allukan.layers import kernels  # noqa: E402
from nnunet_allukan.networks import build_table2_network  # noqa: E402
from nnunet_allukan.paper import INITIAL_LR, WEIGHT_DECAY  # noqa: E402

NETWORKS = {"U-KAN_MLP": 4, "ALL U-KAN": 13}
LAYER_CASES = {  # name -> (benchmark_layer arguments, time target, memory target) vs nn.Conv2d / nn.Conv3d
    "KAConv2d, B=2 C=32 128x128 3x3": ([], 1.3, None),
    "depthwise KAConv2d, B=2 C=128 64x64 3x3": (["--depthwise", "--channels", "128", "--size", "64"], 6.0, None),
    "KAConv3d, B=2 C=32 48^3 3x3x3": (["--dims", "3", "--channels", "32", "--size", "48"], 2.0, 1.2),
}
NETWORK_TIME_TARGET, NETWORK_MEMORY_TARGET = 1.5, 1.15


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def network_times(a: argparse.Namespace) -> dict:
    device = torch.device(a.device)
    steps = {}
    for name, row in NETWORKS.items():
        torch.manual_seed(0)
        net = build_table2_network(row, 3, 1).to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=INITIAL_LR, weight_decay=WEIGHT_DECAY)
        x = torch.randn(a.batch_size, 3, a.size, a.size, device=device)
        y = (torch.rand(a.batch_size, 1, a.size, a.size, device=device) > 0.5).float()
        scaler = torch.amp.GradScaler(device.type) if a.amp else None
        steps[name] = (lambda net=net, opt=opt, x=x, y=y, scaler=scaler:
                       benchmark_networks.train_step(net, opt, x, y, scaler))
    for step in steps.values():  # warm-up: compilation of the basis kernels, lazy initialisation
        for _ in range(2):
            step()
    rounds = {name: [] for name in steps}
    for _ in range(a.rounds):
        for name, step in steps.items():
            sync(device)
            t = time.perf_counter()
            step()
            sync(device)
            rounds[name].append(time.perf_counter() - t)
    return {name: {"median_s": statistics.median(ts), "rounds_s": ts} for name, ts in rounds.items()}


def network_memory(a: argparse.Namespace, nnunet_imports: bool) -> dict:
    out = {}
    script = str(Path(benchmark_networks.__file__))
    for name in NETWORKS:
        args = ["--child", name, "--child-batch", str(a.batch_size), "--device", a.device, "--size", str(a.size),
                "--steps", "0", "--warmup", "0"] + (["--amp"] if a.amp else []) + \
            (["--nnunet-imports"] if nnunet_imports else [])
        out[name] = run_in_fresh_process(script, args)
    return out


def layer_ratios(a: argparse.Namespace) -> dict:
    out = {}
    for name, (extra, _, _) in LAYER_CASES.items():
        parser_args = ["--variants", "nn.Conv", "KAConv fast grad-free", "--repeats", str(a.layer_repeats),
                       "--device", a.device, "--json", ""] + extra
        la = benchmark_layer.parse_args(parser_args)
        res = benchmark_layer.measure(la)
        out[name] = {"time_s": res["time_s"], "peak_bytes": res["peak_bytes"],
                     "time_ratio": res["time_s"]["KAConv fast grad-free"] / res["time_s"]["nn.Conv"],
                     "memory_ratio": res["peak_bytes"]["KAConv fast grad-free"] / res["peak_bytes"]["nn.Conv"]}
        print(f"  {name}: {out[name]['time_ratio']:.2f}x time, {out[name]['memory_ratio']:.2f}x memory", flush=True)
    return out


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return "-"
    return "met" if ratio <= target else f"missed by {ratio / target:.2f}x"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="interleaved network rounds (default 5)")
    p.add_argument("--layer-repeats", type=int, default=25,
                   help="interleaved layer rounds (default 25: single steps vary by tens of %% on a shared VM)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="networks with autocast float16 + GradScaler (nnU-Net on CUDA)")
    p.add_argument("--time-target", type=float, default=NETWORK_TIME_TARGET)
    p.add_argument("--memory-target", type=float, default=NETWORK_MEMORY_TARGET)
    p.add_argument("--skip", nargs="*", default=[], choices=["network", "memory", "layers"])
    p.add_argument("--json", type=Path, default=Path("benchmark_results/ratios.json"))
    a = p.parse_args()
    result = {"load_before": load_average(), "threads": torch.get_num_threads(), "device": a.device,
              "torch": torch.__version__}
    print(f"device {a.device}, threads {torch.get_num_threads()}, load average before: {result['load_before']}",
          flush=True)
    print(kernels.describe(torch.device(a.device).type), flush=True)
    rows = []
    if "layers" not in a.skip:
        print("layers ...", flush=True)
        result["layers"] = layer_ratios(a)
        for name, r in result["layers"].items():
            _, t_target, m_target = LAYER_CASES[name]
            rows.append((f"{name}: time vs nn.Conv", r["time_ratio"], t_target))
            rows.append((f"{name}: peak memory vs nn.Conv", r["memory_ratio"], m_target))
    if "network" not in a.skip:
        print(f"network step times, batch {a.batch_size}, {a.size}x{a.size}, interleaved ...", flush=True)
        result["network_time"] = t = network_times(a)
        rows.append((f"ALL U-KAN train step time vs U-KAN_MLP (B={a.batch_size}, {a.size}^2)",
                     t["ALL U-KAN"]["median_s"] / t["U-KAN_MLP"]["median_s"], a.time_target))
    if "memory" not in a.skip:
        print("network peak memory, fresh processes, compilation included ...", flush=True)
        result["network_memory"] = m = network_memory(a, nnunet_imports=False)
        if all("peak_bytes" in m[k] for k in m):
            rows.append(("ALL U-KAN peak memory vs U-KAN_MLP (build + 2 steps, compile included)",
                         m["ALL U-KAN"]["peak_bytes"] / m["U-KAN_MLP"]["peak_bytes"], a.memory_target))
    result["load_after"] = load_average()
    print(f"\nload average after: {result['load_after']}\n")
    print("| measurement | ratio | target | verdict |\n|---|---:|---:|---|")
    for name, ratio, target in rows:
        print(f"| {name} | {ratio:.2f} | {'-' if target is None else f'<= {target}'} | {verdict(ratio, target)} |")
    result["rows"] = [{"measurement": n, "ratio": r, "target": t} for n, r, t in rows]
    if a.json:
        write_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
