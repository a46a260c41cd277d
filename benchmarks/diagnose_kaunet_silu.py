"""How fast the silu path of nnU-Net's U-Net made KA learns, against the plain U-Net at the same weights, on one
batch of a real preprocessed dataset.

    python benchmarks/diagnose_kaunet_silu.py $nnUNet_preprocessed/Dataset613_CVCClinicDB
    python benchmarks/diagnose_kaunet_silu.py FOLDER --variants grad_free exact zero_v

Builds the 2D plans' PlainConvUNet of FOLDER (no deep supervision) with nnU-Net's He initialisation and its KA
version (KAPlainConvUNet) with every silu-path weight ``u`` and bias copied from the plain network, so the two
differ only by what the KA layer adds: silu on its inputs, the spline path, and the gradient it passes back. One
batch (``--batch`` training cases of fold 0, cropped or padded to the plans' patch) goes forward, Dice +
cross-entropy backward. Printed per convolution: the relative gradient ``|grad| / |weight|`` of the plain weights
and of u (with SGD, how far one step moves each tensor), their ratio, the spline path's share of the KA layer's
output variance, and on the layer's actual inputs x the rms of silu's slope ``silu'(x)`` (what the backward pass
multiplies the input gradient by) against the spread silu keeps, ``std(silu(x)) / std(x)`` (what the forward pass
keeps of the input); then their medians. Variants: ``grad_free`` (the default KA layer), ``exact``
(``grad_free=False``), ``zero_v`` (spline coefficients set to zero).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from diagnose_kaunet_sgd import load_cases  # noqa: E402
from nnunet_allukan.layers import KAConv2d, KAConvTranspose2d  # noqa: E402
from nnunet_allukan.networks.ka_unet import KAPlainConvUNet  # noqa: E402

VARIANTS = ("grad_free", "exact", "zero_v")


def loss_of(network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = network(x)
    prob = out.softmax(1)[:, 1]
    return F.cross_entropy(out, y) + 1 - (2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1)


def run(variant: str, kwargs: dict, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    torch.manual_seed(0)
    plain = PlainConvUNet(conv_op=nn.Conv2d, **kwargs)
    plain.apply(PlainConvUNet.initialize)
    ka = KAPlainConvUNet(conv_op=KAConv2d, ka_kwargs={"grad_free": variant != "exact"}, **kwargs)
    plain_layers = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    ka_layers = [m for m in ka.modules() if isinstance(m, (KAConv2d, KAConvTranspose2d))]
    shares, slopes, spreads = {}, {}, {}

    def spline_share(module, inputs, output):  # output minus its silu path = the spline path
        sigmoid = torch.sigmoid(inputs[0])
        silu = inputs[0] * sigmoid
        slope = sigmoid * (1 + inputs[0] * (1 - sigmoid))  # silu'(x)
        slopes[id(module)] = slope.square().mean().sqrt().item()
        spreads[id(module)] = (silu.std() / inputs[0].std()).item()
        if isinstance(module, KAConv2d):
            path = F.conv2d(silu, module.u, module.bias, module.stride, module.padding, module.dilation, module.groups)
        else:
            path = F.conv_transpose2d(silu, module.u, module.bias, module.stride)
        shares[id(module)] = ((output - path).var() / output.var()).item()

    with torch.no_grad():
        for p, k in zip(plain_layers, ka_layers, strict=True):
            k.u.copy_(p.weight)
            if k.bias is not None:
                k.bias.copy_(p.bias)
            if variant == "zero_v":
                k.v.zero_()
            k.register_forward_hook(spline_share)
    loss_of(plain, x, y).backward()
    loss_of(ka, x, y).backward()
    ratios, layer_slopes, layer_spreads = [], [], []
    print(f"\n{variant}: layer, weight shape, relative gradient plain / u, ratio, spline share of the output variance, "
          f"rms silu'(x), std silu(x) / std x")
    for i, (p, k) in enumerate(zip(plain_layers, ka_layers)):
        if p.weight.grad is None:  # the heads deep supervision would use
            continue
        rel_plain = (p.weight.grad.norm() / p.weight.norm()).item()
        rel_u = (k.u.grad.norm() / k.u.norm()).item()
        ratios.append(rel_u / rel_plain)
        layer_slopes.append(slopes[id(k)])
        layer_spreads.append(spreads[id(k)])
        print(f"  {i:2d} {type(k).__name__:18s} {str(tuple(k.u.shape)):20s} {rel_plain:.2e} / {rel_u:.2e}  "
              f"{rel_u / rel_plain:5.2f}  {shares[id(k)]:.3f}  {slopes[id(k)]:.2f}  {spreads[id(k)]:.2f}")
    print(f"  median ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"median rms silu'(x) {statistics.median(layer_slopes):.2f}, "
          f"std silu(x) / std x {statistics.median(layer_spreads):.2f}")
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="nnU-Net preprocessed dataset folder (nnUNet_preprocessed/DatasetX)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    configuration = json.loads((args.folder / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    arch = configuration["architecture"]["arch_kwargs"]
    patch = configuration["patch_size"]
    train = json.loads((args.folder / "splits_final.json").read_text())[0]["train"][: args.batch]
    x, y = load_cases(args.folder / configuration["data_identifier"], train, patch, 1)
    kwargs = {k: arch[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
                                   "n_conv_per_stage_decoder", "conv_bias")}
    kwargs.update(input_channels=x.shape[1], num_classes=2, norm_op=nn.InstanceNorm2d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=False)
    for variant in args.variants:
        run(variant, kwargs, x, y)


if __name__ == "__main__":
    main()
