"""Mixed precision: how far each network's output under autocast is from float32, and what the KA layers' float32
spline path costs.

    python benchmarks/benchmark_amp.py                                   # precision and training tables (~15 min, 2 cores)
    python benchmarks/benchmark_amp.py --cost-against /path/to/checkout  # + time and memory vs another checkout

Precision: U-KAN_MLP, ALL U-KAN (paper widths), PlainConvUNet and the KA nnU-Net (KAPlainConvUNet, 4 stages 32-256),
batch 2, 64x64, seed 0, in training mode (normalisation on batch statistics, as in training). For float16 and
bfloat16 autocast on the device, the relative difference ``|y_amp - y_32| / |y_32|`` of the output, at
initialisation and after 20 float32 training steps (Adam, lr 1e-3, BCE on one fixed batch), and two measures
of the network itself, in float32:

- floor: the same difference when only the outputs of the convolutions / linear / KA layers are rounded to the
  half type (everything computed in float32): what any half-precision activation costs this network;
- gain: the relative change of the output per relative change of the input (1e-4 noise): how much the network
  amplifies a perturbation;
- offset: the largest ``|mean| / std`` of a channel at the input of a normalisation layer (BatchNorm over batch and
  positions, InstanceNorm over positions): how much of what a half-precision activation holds is an offset that
  the normalisation removes, leaving the rounding of the whole value on the small deviation it keeps.

Training under autocast (``--train-steps``, default 40): each network trained from the same initialisation on the
same batch (Adam, lr 1e-3, BCE) in float32, under bfloat16 autocast and under float16 autocast with a GradScaler;
the largest relative difference of the AMP run's loss from the float32 run's over the steps. The forward
differences above measure one evaluation; this measures whether what training sees under AMP is what it sees in
float32.

``--v-scale`` multiplies the KA layers' spline coefficients v at initialisation in both measurements (0: the
silu paths alone), to see how much of the KA networks' initial gain comes from the spline path.

Cost (``--cost-against``): an ALL U-KAN AMP training step (autocast + GradScaler, forward, BCE, backward, Adam),
median time, and the peak memory growth over building the network and two steps, this checkout and the other one
alternating in fresh processes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CHECKOUT = Path(__file__).resolve().parents[1]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
PAIRS = (("ALL U-KAN", "U-KAN_MLP"), ("KA nnU-Net", "PlainConvUNet"))
TARGET = 2.0  # the KA network's difference at most twice its plain counterpart's


def unet_kwargs(stages: int = 4) -> dict:
    return dict(input_channels=3, n_stages=stages, features_per_stage=[32 * 2 ** i for i in range(stages)],
                kernel_sizes=[[3, 3]] * stages, strides=[[1, 1]] + [[2, 2]] * (stages - 1),
                n_conv_per_stage=[2] * stages, num_classes=1, n_conv_per_stage_decoder=[2] * (stages - 1),
                conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def build(name: str, v_scale: float = 1.0) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    from nnunet_allukan.layers import KAConv2d
    from nnunet_allukan.networks import KAPlainConvUNet, build_table2_network

    torch.manual_seed(0)
    if name in ("U-KAN_MLP", "ALL U-KAN"):
        return scale_v(build_table2_network(4 if name == "U-KAN_MLP" else 13, 3, 1), v_scale)
    if name == "PlainConvUNet":
        net = PlainConvUNet(conv_op=nn.Conv2d, **unet_kwargs())
    else:
        net = KAPlainConvUNet(conv_op=KAConv2d, ka_kwargs={"grad_free": True}, **unet_kwargs())
    net.apply(type(net).initialize)
    return scale_v(net, v_scale)


def scale_v(net: nn.Module, factor: float) -> nn.Module:
    """Every KA layer's spline coefficients v times ``factor`` (0: the silu paths alone)."""
    if factor != 1.0:
        with torch.no_grad():
            for m in net.modules():
                if isinstance(getattr(m, "v", None), nn.Parameter):
                    m.v.mul_(factor)
    return net


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b).norm() / b.norm()).item()


def rounded_outputs(net: nn.Module, dtype: torch.dtype) -> list:
    """Hooks rounding every convolution / linear / KA layer's output to ``dtype`` (kept in float32)."""
    from nnunet_allukan.layers import KAConv2d, KAConvTranspose2d, KALinear

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, KAConv2d, KAConvTranspose2d, KALinear)
    return [m.register_forward_hook(lambda m, a, y: y.to(dtype).float()) for m in net.modules()
            if isinstance(m, kinds)]


def largest_offset(net: nn.Module, x: torch.Tensor) -> float:
    """The largest per-channel ``|mean| / std`` at the input of any BatchNorm / InstanceNorm of ``net`` for ``x``."""
    found = []
    batch_norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    def record(module, args, output):
        dims = [0] if isinstance(module, batch_norms) else []
        a = args[0].detach().double()
        dims += list(range(2, a.dim()))
        found.append((a.mean(dims).abs() / a.std(dims).clamp_min(1e-12)).max().item())

    kinds = batch_norms + (nn.InstanceNorm2d, nn.InstanceNorm3d)
    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, kinds)]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    return max(found, default=0.0)


@torch.no_grad()
def differences(net: nn.Module, x: torch.Tensor) -> dict:
    y32 = net(x)
    out = {}
    for key, dtype in DTYPES.items():
        with torch.autocast(x.device.type, dtype=dtype):
            out[key] = relative(net(x), y32)
        hooks = rounded_outputs(net, dtype)
        out[f"{key} floor"] = relative(net(x), y32)
        for h in hooks:
            h.remove()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device)
    out["gain"] = relative(net(x * (1 + 1e-4 * noise)), y32) / 1e-4
    out["offset"] = largest_offset(net, x)
    return out


def train(net: nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int, dtype=None) -> list:
    """The losses of ``steps`` Adam steps of ``net`` on one batch, under autocast to ``dtype`` (float16 with a
    GradScaler) or in float32 (``dtype=None``)."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(x.device.type, enabled=dtype == torch.float16)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.binary_cross_entropy_with_logits(net(x).float(), target)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses


def batch(a: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's input and BCE target (seed 0)."""
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size)
    target = (torch.rand(a.batch, 1, a.size, a.size) > 0.5).float()
    return x.to(a.device), target.to(a.device)


def training(a: argparse.Namespace) -> dict:
    device = torch.device(a.device)
    x, target = batch(a)
    results = {}
    for name in [n for pair in PAIRS for n in pair]:
        ref = train(build(name, a.v_scale).to(device).train(), x, target, a.train_steps)
        r = results[name] = {"float32 first/last loss": [ref[0], ref[-1]]}
        for key, dtype in DTYPES.items():
            amp = train(build(name, a.v_scale).to(device).train(), x, target, a.train_steps, dtype)
            r[key] = max(abs(p - q) / q for p, q in zip(amp, ref))
        print(f"  {name:<14} loss {ref[0]:.4f} -> {ref[-1]:.4f}  largest relative loss difference "
              + "  ".join(f"{k} {r[k]:.5f}" for k in DTYPES), flush=True)
    return results


def precision(a: argparse.Namespace) -> dict:
    device = torch.device(a.device)
    x, target = batch(a)
    results = {}
    for name in [n for pair in PAIRS for n in pair]:
        net = build(name, a.v_scale).to(device).train()
        results[name] = {"init": differences(net, x)}
        train(net, x, target, a.steps)
        results[name][f"after {a.steps} steps"] = differences(net, x)
        for stage, r in results[name].items():
            print(f"  {name:<14} {stage:<15} " + "  ".join(
                f"{k} {v:.1f}" if k in ("gain", "offset") else f"{k} {v:.4f}" for k, v in r.items()), flush=True)
    return results


def cost_child(a: argparse.Namespace) -> None:
    """One checkout's ALL U-KAN AMP step: the peak memory growth over building the network and two steps, or the
    median time of ``--repeats`` steps after those two."""
    sys.path.insert(0, str(Path(a.checkout).resolve()))
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    from _measure import median_time, peak_memory_of

    device = torch.device(a.device)
    dtype = DTYPES[a.cost_dtype]
    steps = []

    def build_and_two_steps():  # the peak of a first step: what the allocator must hold
        net = build("ALL U-KAN").to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler(device.type)
        x = torch.randn(a.batch, 3, a.size, a.size, device=device)
        target = (torch.rand(a.batch, 1, a.size, a.size, device=device) > 0.5).float()

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype):
                loss = F.binary_cross_entropy_with_logits(net(x).float(), target)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        steps.append(step)
        step()
        step()

    if a.cost_child == "memory":
        out = {"peak_bytes": peak_memory_of(build_and_two_steps, device)}
    else:
        build_and_two_steps()
        out = {"seconds": median_time(steps[0], device, warmup=0, repeats=a.repeats)}
    print(json.dumps({**out, "module": sys.modules["nnunet_allukan"].__file__}))


def cost(a: argparse.Namespace) -> dict:
    from _measure import run_in_fresh_process

    runs = {"this checkout": [], "other checkout": []}
    for _ in range(a.rounds):
        for label, checkout in (("this checkout", CHECKOUT), ("other checkout", Path(a.cost_against))):
            args = ["--checkout", str(checkout), "--device", a.device, "--size", str(a.cost_size), "--batch",
                    str(a.batch), "--repeats", str(a.repeats), "--cost-dtype", a.cost_dtype]
            run = {}
            for what in ("time", "memory"):
                r = run_in_fresh_process(__file__, args + ["--cost-child", what], for_memory=what == "memory")
                if "error" in r:
                    raise RuntimeError(f"{label} ({checkout}): {r['error']}")
                run.update(r)
            runs[label].append(run)
    out = {label: {"median_s": statistics.median(r["seconds"] for r in rs),
                   "peak_bytes": statistics.median(r["peak_bytes"] for r in rs), "module": rs[0]["module"]}
           for label, rs in runs.items()}
    out["time ratio"] = out["this checkout"]["median_s"] / out["other checkout"]["median_s"]
    out["memory ratio"] = out["this checkout"]["peak_bytes"] / out["other checkout"]["peak_bytes"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="float32 training steps before the second measurement")
    p.add_argument("--v-scale", type=float, default=1.0,
                   help="multiply the KA layers' spline coefficients v at initialisation (a diagnosis of ALL U-KAN's "
                        "initial gain; 0: the silu paths alone; time and memory are measured as initialised)")
    p.add_argument("--train-steps", type=int, default=40,
                   help="steps of the training comparison under autocast (0: skip it)")
    p.add_argument("--cost-against", help="another checkout: time and memory of an ALL U-KAN AMP step vs it")
    p.add_argument("--cost-size", type=int, default=128)
    p.add_argument("--cost-dtype", choices=list(DTYPES), default="bf16",
                   help="autocast type of the cost measurement (default bf16: CPU's fast half type)")
    p.add_argument("--rounds", type=int, default=3, help="alternating fresh processes per checkout")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per process")
    p.add_argument("--json", type=Path, default=Path("benchmark_results/amp.json"))
    p.add_argument("--cost-child", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--checkout", default=str(CHECKOUT),
                   help="measure the nnunet_allukan of this checkout (default: the one holding this script)")
    a = p.parse_args()
    if a.cost_child:
        cost_child(a)
        return 0
    sys.path.insert(0, str(Path(a.checkout).resolve()))
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import nnunet_allukan
    from _measure import write_json

    print(f"nnunet_allukan from {Path(nnunet_allukan.__file__).parent}")
    print(f"device {a.device}, batch {a.batch}, {a.size}x{a.size}, threads {torch.get_num_threads()}"
          + (f", KA layers' v x {a.v_scale} at initialisation" if a.v_scale != 1.0 else ""), flush=True)
    result = {"v_scale": a.v_scale, "precision": precision(a)}
    print("\n| network | stage | fp16 | fp16 floor | bf16 | bf16 floor | gain | offset | fp16 / plain | bf16 / plain |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ka, plain in PAIRS:
        for stage in result["precision"][ka]:
            r, q = result["precision"][ka][stage], result["precision"][plain][stage]
            for name, s in ((plain, q), (ka, r)):
                ratios = f"{r['fp16'] / q['fp16']:.1f} | {r['bf16'] / q['bf16']:.1f}" if name == ka else "- | -"
                print(f"| {name} | {stage} | {s['fp16']:.4f} | {s['fp16 floor']:.4f} | {s['bf16']:.4f} | "
                      f"{s['bf16 floor']:.4f} | {s['gain']:.1f} | {s['offset']:.1f} | {ratios} |")
    print(f"(target: the KA network's ratio to its plain counterpart at most {TARGET})")
    if a.train_steps:
        print(f"\nTraining under autocast, {a.train_steps} steps from one initialisation, against float32:", flush=True)
        result["training"] = t = training(a)
        print("\n| network | float32 loss, first -> last | fp16: largest relative loss difference | bf16 | "
              "fp16 / plain | bf16 / plain |")
        print("|---|---|---:|---:|---:|---:|")
        for ka, plain in PAIRS:
            for name in (plain, ka):
                r, q = t[name], t[plain]
                ratios = f"{r['fp16'] / q['fp16']:.1f} | {r['bf16'] / q['bf16']:.1f}" if name == ka else "- | -"
                first, last = r["float32 first/last loss"]
                print(f"| {name} | {first:.4f} -> {last:.4f} | {r['fp16']:.5f} | {r['bf16']:.5f} | {ratios} |")
    if a.cost_against:
        print(f"\nALL U-KAN {a.cost_dtype} AMP step, batch {a.batch}, {a.cost_size}^2: this checkout vs "
              f"{a.cost_against}, {a.rounds} alternating rounds ...", flush=True)
        result["cost"] = c = cost(a)
        for label in ("this checkout", "other checkout"):
            print(f"  {label}: {c[label]['median_s'] * 1e3:.0f} ms, peak {c[label]['peak_bytes'] / 2 ** 20:.0f} MiB "
                  f"({c[label]['module']})")
        print(f"  time ratio {c['time ratio']:.3f}, peak memory ratio {c['memory ratio']:.3f}")
    if a.json:
        write_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
