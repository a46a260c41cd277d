"""Signal and gradient scale of nnU-Net's PlainConvUNet and its fully KA version at initialisation, layer by layer.

    python benchmarks/diagnose_kaunet_init.py                 # 2D, 128x128, 6 stages, batch 4
    python benchmarks/diagnose_kaunet_init.py --size 64 --stages 5

Both networks are built from the same arguments (as nnU-Net's planner records them for a 2D patch of ``--size``)
and initialised as their trainers do (nnUNetTrainer / nnUNetTrainerKAUNet). One batch of an ultrasound-like
image (z-scored, a dark disc on a brighter noisy background, 3 channels) goes forward, cross-entropy against the
disc goes backward. Printed per encoder convolution: the input's std and the share of its values inside the
B-spline grid [-1, 1]; for KAonv layers the spline path's output std relative to the silu path's (``v/u``).
Then, per convolution of encoder and decoder, the relative gradient |grad w| / |w| of the plain weights, of the
KAonv's silu-path weights ``u`` and of its spline weights ``v``: with SGD, the fraction of each tensor that
one step of learning rate 1 moves; ``v scaled`` is v's with nnUNetTrainerKAUNet's spline gradient scaling
(``n_bases / fan_in``, :func:`nnunet_allukan.networks.scale_spline_gradients`). Last, the share of the whole
gradient norm (the norm nnU-Net clips at 12) that the spline coefficients take, without and with that scaling.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from nnunet_allukan.layers import KAConv2d  # noqa: E402
from nnunet_allukan.networks.ka_unet import KAPlainConvUNet, spline_gradient_scale  # noqa: E402


def unet_kwargs(stages: int) -> dict:
    return dict(input_channels=3, n_stages=stages, features_per_stage=[min(32 * 2 ** i, 512) for i in range(stages)],
                kernel_sizes=[[3, 3]] * stages, strides=[[1, 1]] + [[2, 2]] * (stages - 1),
                n_conv_per_stage=[2] * stages, num_classes=2, n_conv_per_stage_decoder=[2] * (stages - 1),
                conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False)


def ultrasound_like_batch(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size // 2) ** 2 + (xx - size // 2 + 4) ** 2) < (size // 5) ** 2
    image = torch.randn(batch, 3, size, size) * 0.3 + 0.5
    image[:, :, disc] -= 1.5
    image = (image - image.mean()) / image.std()
    return image, disc.long().expand(batch, size, size).clone()


def layer_stats(network: nn.Module, image: torch.Tensor, target: torch.Tensor) -> tuple[list[dict], float]:
    rows: list[dict] = []

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach()
            row = {"layer": name, "input std": x.std().item(),
                   "in grid": ((x > -1) & (x < 1)).float().mean().item()}
            if isinstance(module, KAConv2d):
                silu_path = F.conv2d(F.silu(x), module.u, None, module.stride, module.padding, module.dilation,
                                     module.groups)
                bias = module.bias.view(1, -1, 1, 1) if module.bias is not None else 0
                row["v/u"] = ((output.detach() - silu_path - bias).std() / silu_path.std()).item()
            rows.append(row)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in network.named_modules()
               if isinstance(m, (nn.Conv2d, KAConv2d)) and n.startswith("encoder") and n.endswith("conv")]
    x = image.clone().requires_grad_(True)
    F.cross_entropy(network(x), target).backward()
    for h in handles:
        h.remove()
    return rows, x.grad.norm().item()


def relative(p: torch.Tensor) -> float:
    return (p.grad.norm() / p.norm()).item()


def spline_share(network: nn.Module, scaled: bool) -> float:
    """Share of the squared gradient norm of all parameters that the spline coefficients v take."""
    scales = {id(m.v): spline_gradient_scale(m) if scaled else 1.0 for m in network.modules() if hasattr(m, "v")}
    total = spline = 0.0
    for p in network.parameters():
        if p.grad is None:
            continue
        squared = (p.grad.norm().item() * scales.get(id(p), 1.0)) ** 2
        total += squared
        spline += squared if id(p) in scales else 0.0
    return spline / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--stages", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    kwargs = unet_kwargs(args.stages)
    plain = PlainConvUNet(conv_op=nn.Conv2d, **kwargs)
    plain.apply(PlainConvUNet.initialize)
    ka = KAPlainConvUNet(conv_op=KAConv2d, ka_kwargs={"grad_free": True}, **kwargs)
    ka.apply(KAPlainConvUNet.initialize)
    image, target = ultrasound_like_batch(args.batch, args.size)

    for name, network in (("PlainConvUNet", plain), ("KAPlainConvUNet", ka)):
        rows, input_grad = layer_stats(network, image, target)
        print(f"\n{name}: |grad input| {input_grad:.3e}")
        for row in rows:
            print(f"  {row['layer']:<34}" + "".join(f"  {k} {v:6.3f}" for k, v in row.items() if k != "layer"))

    print("\nrelative gradient |grad w| / |w| per convolution")
    print(f"  {'layer':<34} {'plain w':>9} {'KA u':>9} {'KA v':>9} {'v scaled':>9} {'u/plain':>8}")
    ka_params = dict(ka.named_parameters())
    ka_modules = dict(ka.named_modules())
    ratios = []
    for name, weight in plain.named_parameters():
        if not (name.endswith("conv.weight") and weight.dim() == 4):
            continue
        base = name[: -len("weight")]
        u, v = ka_params[base + "u"], ka_params[base + "v"]
        ratios.append(relative(u) / relative(weight))
        v_scaled = relative(v) * spline_gradient_scale(ka_modules[base[:-1]])
        print(f"  {base[:-1]:<34} {relative(weight):9.2e} {relative(u):9.2e} {relative(v):9.2e} {v_scaled:9.2e} "
              f"{ratios[-1]:8.2f}")
    print(f"  median u/plain {statistics.median(ratios):.2f}")
    print(f"\nshare of the squared gradient norm in the spline coefficients v: {spline_share(ka, False):.3f} "
          f"unscaled, {spline_share(ka, True):.3f} with spline gradient scaling")


if __name__ == "__main__":
    main()
