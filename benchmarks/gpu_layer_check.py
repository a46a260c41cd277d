"""The KA layers on one device against the unfold reference in float64: the fast layers in float64 (exact, 1e-10),
float32 (1e-4) and under float16 / bfloat16 autocast (the relative tolerances of
tests/test_layers_amp_compile.py), forward and every gradient (largest relative error over them), under each
kernel policy given (default ``auto torch``: on CUDA the Triton kernels and the plain tensor form).

    python benchmarks/gpu_layer_check.py --device cuda --json gpu_layer_check.json
    python benchmarks/gpu_layer_check.py --device cuda --first-step 2 --json first_step_2d.json

``--first-step DIMS``: instead, the seconds from this process's start to the end of its first ALL U-KAN training
step (nnU-Net's AMP on CUDA; 2D: batch 8, 256x256; 3D: batch 2, 64^3; ``--batch-size``, ``--size``), and of the second;
with ``--compile`` the network is compiled as nnU-Net compiles it by default on CUDA (``torch.compile(network)``), so
the first step includes the compilation.

Exit code 1 if any check fails. Runs on CPU too (``--device cpu``), where the test suite checks the same.
"""
from __future__ import annotations

import time

START = time.perf_counter()

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from nnunet_allukan.layers import KAConv2d, KAConv3d, KALinear, kernels  # noqa: E402

CASES = {  # name -> (class, constructor arguments, input shape)
    "dense 3x3 pad 1": (KAConv2d, dict(in_channels=8, out_channels=16, kernel_size=3, padding=1), (2, 8, 17, 16)),
    "depthwise 3x3 pad 1": (KAConv2d, dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
                            (2, 8, 16, 16)),
    "strided, full gradient": (KAConv2d, dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1,
                                              grad_free=False), (2, 8, 16, 16)),
    "groups 2, dilation 2": (KAConv2d, dict(in_channels=8, out_channels=12, kernel_size=3, padding=2, dilation=2,
                                            groups=2), (2, 8, 15, 16)),
    "lambda": (KAConv2d, dict(in_channels=8, out_channels=16, kernel_size=3, padding=1, use_lambda=True),
               (2, 8, 16, 16)),
    "1x1 head, one output": (KAConv2d, dict(in_channels=8, out_channels=1, kernel_size=1), (2, 8, 16, 16)),
    "3D 3x3x3 pad 1": (KAConv3d, dict(in_channels=4, out_channels=8, kernel_size=3, padding=1), (2, 4, 8, 9, 8)),
    "3D depthwise, stride 2": (KAConv3d, dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1,
                                              groups=4), (2, 4, 8, 8, 8)),
}
AMP_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def outputs_and_grads(module, x):
    y = module(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device=y.device, dtype=torch.float32)
    grads = torch.autograd.grad((y.float() * g).sum(), [x] + list(module.parameters()))
    return [y] + list(grads)


def max_rel_error(got, want) -> float:
    return max(float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1e-30))
               for a, b in zip(got, want))


def check_case(name, device) -> dict:
    cls, kw, shape = CASES[name]
    torch.manual_seed(0)
    fast = cls(**kw).to(device)
    with torch.no_grad():  # non-trivial parameters (lambda starts at 1)
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = cls(implementation="reference", **kw).to(device)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(shape, device=device)
    res = {}
    x64 = x.double().requires_grad_()
    want64 = outputs_and_grads(ref.double(), x64)
    res["float64 fast vs reference"] = max_rel_error(outputs_and_grads(fast.double(), x64), want64)
    fast.float()
    x32 = x.clone().requires_grad_()
    got32 = outputs_and_grads(fast, x32)
    res["float32 fast vs float64 reference"] = max_rel_error(got32, want64)
    for dt in (torch.float16, torch.bfloat16):
        with torch.autocast(device.type, dtype=dt):
            got = outputs_and_grads(fast, x32)
        res[f"{str(dt)[6:]} autocast vs float64 reference"] = max_rel_error(got, want64)
    tolerances = {"float64 fast vs reference": 1e-10, "float32 fast vs float64 reference": 1e-4,
                  "float16 autocast vs float64 reference": AMP_TOLERANCE[torch.float16],
                  "bfloat16 autocast vs float64 reference": AMP_TOLERANCE[torch.bfloat16]}
    return {k: {"max_relative_error": v, "tolerance": tolerances[k], "ok": v <= tolerances[k]} for k, v in res.items()}


def check_layers(device) -> dict:
    results = {name: check_case(name, device) for name in CASES}
    # KALinear: fast (one GEMM) vs the literal grouped KA layer is covered by the CPU tests; here float16 only.
    torch.manual_seed(0)
    lin = KALinear(16, 8, bias=True).to(device)
    x = torch.randn(4, 10, 16, device=device, requires_grad=True)
    got32 = outputs_and_grads(lin, x)
    with torch.autocast(device.type, dtype=torch.float16):
        err = max_rel_error(outputs_and_grads(lin, x), got32)
    results["KALinear"] = {"float16 autocast vs float32": {"max_relative_error": err, "tolerance": 2e-3,
                                                           "ok": err <= 2e-3}}
    return results


def first_step(device, dims: int, batch: int, size: int, compile_: bool = False) -> dict:
    """Seconds from process start to the end of the first and second ALL U-KAN training steps (``compile_``:
    the network under ``torch.compile``, nnU-Net's default)."""
    from nnunet_allukan.networks import build_table2_network
    from nnunet_allukan.training.protocol import ukan_strides

    downsamplings = min(5, max(0, (size // 4).bit_length() - 1))  # as benchmark_networks.py's 3D networks
    strides = None if dims == 2 else ukan_strides([[1] * 3] + [[2] * 3] * downsamplings, 3)
    torch.manual_seed(0)
    net = build_table2_network(13, 3, 1, dim=dims, strides=strides).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    if compile_:
        net = torch.compile(net)
    amp = device.type == "cuda"  # nnU-Net's AMP is a CUDA setting; CPU float16 convolutions are no measure
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    x = torch.randn(batch, 3, *[size] * dims, device=device)
    y = (torch.rand(batch, 1, *[size] * dims, device=device) > 0.5).float()
    ends = []
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter() - START)
    return {"dims": dims, "batch": batch, "size": size, "amp": amp, "compiled": compile_, "first_step_done_s": ends[0],
            "second_step_done_s": ends[1], "kernels": kernels.describe(device.type)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--policies", nargs="+", default=["auto", "torch"], choices=kernels.POLICIES)
    p.add_argument("--first-step", type=int, choices=(2, 3), default=None)
    p.add_argument("--batch-size", type=int, default=None, help="--first-step: default 8 (2D), 2 (3D)")
    p.add_argument("--size", type=int, default=None, help="--first-step: default 256 (2D), 64 (3D)")
    p.add_argument("--compile", action="store_true", help="--first-step: torch.compile the network (nnU-Net's default)")
    p.add_argument("--json", type=Path, default=Path("benchmark_results/gpu_layer_check.json"))
    a = p.parse_args()
    device = torch.device(a.device)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    if a.first_step:
        r = first_step(device, a.first_step, a.batch_size or (8 if a.first_step == 2 else 2),
                       a.size or (256 if a.first_step == 2 else 64), a.compile)
        print(f"ALL U-KAN {a.first_step}D, batch {r['batch']}, {r['size']}^{a.first_step}, AMP {r['amp']}, "
              f"compiled {r['compiled']}: "
              f"first step done "
              f"{r['first_step_done_s']:.1f} s after start, second {r['second_step_done_s']:.1f} s\n{r['kernels']}")
        a.json.write_text(json.dumps(r, indent=2))
        return 0
    results, described = {}, {}
    for policy in a.policies:
        kernels.use(policy)
        described[policy] = kernels.describe(device.type)
        print(described[policy])
        results[policy] = check_layers(device)
    ok = all(c["ok"] for by_case in results.values() for r in by_case.values() for c in r.values())
    for policy, by_case in results.items():
        for name, r in by_case.items():
            print(f"{policy:9s} {name:26s} " + "  ".join(
                f"{k}: {c['max_relative_error']:.1e}{'' if c['ok'] else ' FAIL'}" for k, c in r.items()))
    print("all layer checks passed" if ok else "SOME LAYER CHECKS FAILED")
    a.json.write_text(json.dumps({"device": str(device), "torch": torch.__version__, "ok": ok, "kernels": described,
                                  "results": results}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
