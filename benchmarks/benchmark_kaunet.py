"""Train-step time and peak memory of the fully KA networks against their plain counterparts, 2D and 3D.

    python benchmarks/benchmark_kaunet.py                     # all pairs below, CPU, JSON in benchmark_results/
    python benchmarks/benchmark_kaunet.py --pairs kaunet_3d --steps 3 --rounds 1      # quick

Pairs, each a plain network and its KA version built from the same arguments:

- ``kaunet_3d``: nnU-Net's ``PlainConvUNet`` as its planner records it for a 64^3 3d_fullres patch (5 stages,
  32-320 features, InstanceNorm, LeakyReLU, deep supervision) vs ``KAPlainConvUNet`` (nnUNetTrainerKAUNet's), batch 2.
- ``kaunet_2d``: the same for a 2d configuration, a 128x128 patch (6 stages, 32-512 features), batch 4.
- ``allukan_3d``: U-KAN_MLP 3D vs ALL U-KAN 3D at 64^3 (strides as the trainer derives them from that plan), batch 2.

A step is forward + loss (cross-entropy over every deep-supervision output, as nnU-Net weights them) + backward +
SGD step. Every configuration runs in a fresh process: peak memory is the peak-RSS growth over building the
network and its first two steps (parameters, gradients, optimizer state, activations), then the median step time
of ``--steps`` steps after one warm-up. ``--rounds`` alternates the two members of a pair that many times and
reports the median of each, so that both see the same machine load; ratios are KA / plain.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from _measure import fmt_bytes, median_time, peak_memory_of, run_in_fresh_process, write_json  # noqa: E402


def _plain_unet_kwargs(dim: int) -> dict:
    """What nnU-Net 2.8's planner records for a PlainConvUNet with this patch (isotropic spacing)."""
    n_stages = 5 if dim == 3 else 6
    cap = 320 if dim == 3 else 512
    return dict(n_stages=n_stages, features_per_stage=[min(32 * 2 ** i, cap) for i in range(n_stages)],
                kernel_sizes=[[3] * dim] * n_stages, strides=[[1] * dim] + [[2] * dim] * (n_stages - 1),
                n_conv_per_stage=[2] * n_stages, n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True,
                norm_op=torch.nn.InstanceNorm3d if dim == 3 else torch.nn.InstanceNorm2d,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def build(config: str) -> tuple[torch.nn.Module, list[int], int, int]:
    """(network, patch, batch size, input channels) of one configuration name."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_allukan.layers import KAConv2d, KAConv3d
    from nnunet_allukan.networks import KAPlainConvUNet, build_table2_network
    from nnunet_allukan.training.protocol import ukan_strides

    if config.startswith("unet_") or config.startswith("kaunet_"):
        dim = 3 if config.endswith("3d") else 2
        patch, batch = ([64] * 3, 2) if dim == 3 else ([128] * 2, 4)
        kwargs = _plain_unet_kwargs(dim)
        if config.startswith("unet_"):
            net = PlainConvUNet(input_channels=1, num_classes=3, conv_op=torch.nn.Conv3d if dim == 3 else
                                torch.nn.Conv2d, **kwargs)
        else:
            net = KAPlainConvUNet(input_channels=1, num_classes=3, conv_op=KAConv3d if dim == 3 else KAConv2d,
                                  ka_kwargs={"grad_free": True}, **kwargs)
        net.apply(net.initialize)
        return net, patch, batch, 1
    row = {"ukan_mlp_3d": 4, "allukan_3d": 13}[config]
    planned = [[1, 1, 1]] + [[2, 2, 2]] * 4  # nnU-Net's plan for a 64^3 patch: down to 4^3
    return build_table2_network(row, 1, 3, dim=3, strides=ukan_strides(planned, 3)), [64] * 3, 2, 1


PAIRS = {"kaunet_3d": ("unet_3d", "kaunet_3d"), "kaunet_2d": ("unet_2d", "kaunet_2d"),
         "allukan_3d": ("ukan_mlp_3d", "allukan_3d")}


def child(config: str, steps: int) -> dict:
    torch.manual_seed(0)
    state: dict = {}

    def make_batch(patch, batch, channels):
        x = torch.randn(batch, channels, *patch)
        y = torch.randint(0, 3, (batch, *patch))
        return x, y

    def step() -> None:
        net, opt, x, y = state["net"], state["opt"], state["x"], state["y"]
        opt.zero_grad(set_to_none=True)
        outputs = net(x)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        weights = [1 / 2 ** i for i in range(len(outputs))]
        loss = 0.0
        for w, out in zip(weights, outputs):
            target = y if out.shape[2:] == y.shape[1:] else F.interpolate(
                y[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
            loss = loss + w * F.cross_entropy(out, target)
        loss.backward()
        opt.step()

    def build_and_two_steps() -> None:
        net, patch, batch, channels = build(config)
        state["net"] = net.train()
        state["opt"] = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
        state["x"], state["y"] = make_batch(patch, batch, channels)
        step()
        step()

    peak = peak_memory_of(build_and_two_steps, torch.device("cpu"))
    seconds = median_time(step, torch.device("cpu"), warmup=1, repeats=steps)
    params = sum(p.numel() for p in state["net"].parameters())
    return {"config": config, "peak_bytes": peak, "seconds_per_step": seconds, "parameters": params}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=list(PAIRS))
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of each pair (default 2)")
    p.add_argument("--json", type=Path, default=Path("benchmark_results/benchmark_kaunet.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.steps)))
        return 0
    script = str(Path(__file__).resolve())
    results = {}
    for pair in a.pairs:
        runs: dict[str, list[dict]] = {c: [] for c in PAIRS[pair]}
        for r in range(a.rounds):
            for config in PAIRS[pair]:
                start = time.time()
                out = run_in_fresh_process(script, ["--child", config, "--steps", str(a.steps)])
                if "error" in out:
                    print(f"{config}: ERROR {out['error']}", file=sys.stderr)
                    return 1
                runs[config].append(out)
                print(f"[{pair} round {r + 1}] {config}: {out['seconds_per_step']:.3f} s/step, peak "
                      f"{fmt_bytes(out['peak_bytes'])} ({time.time() - start:.0f} s)", flush=True)
        plain, ka = PAIRS[pair]
        summary = {c: {"seconds_per_step": statistics.median(r["seconds_per_step"] for r in runs[c]),
                       "peak_bytes": statistics.median(r["peak_bytes"] for r in runs[c]),
                       "parameters": runs[c][0]["parameters"]} for c in PAIRS[pair]}
        summary["time_ratio"] = summary[ka]["seconds_per_step"] / summary[plain]["seconds_per_step"]
        summary["memory_ratio"] = summary[ka]["peak_bytes"] / summary[plain]["peak_bytes"]
        results[pair] = summary
    print("\n| pair | plain | KA | time plain | time KA | x | memory plain | memory KA | x |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for pair, s in results.items():
        plain, ka = PAIRS[pair]
        print(f"| {pair} | {plain} ({s[plain]['parameters']:,}) | {ka} ({s[ka]['parameters']:,}) | "
              f"{s[plain]['seconds_per_step']:.3f} s | {s[ka]['seconds_per_step']:.3f} s | {s['time_ratio']:.2f} | "
              f"{fmt_bytes(s[plain]['peak_bytes'])} | {fmt_bytes(s[ka]['peak_bytes'])} | {s['memory_ratio']:.2f} |")
    write_json(a.json, {"threads": torch.get_num_threads(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
