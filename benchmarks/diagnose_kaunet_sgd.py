"""A few hundred SGD steps of nnU-Net's planned U-Net and its fully KA version on a real preprocessed dataset: where
the KA network's training goes wrong, and what each remedy changes.

    python benchmarks/diagnose_kaunet_sgd.py $nnUNet_preprocessed/Dataset601_BUSI --steps 60
    python benchmarks/diagnose_kaunet_sgd.py FOLDER --variants unscaled scaled plain --downsample 1

Every variant trains the same network topology (the 2D plans' PlainConvUNet of FOLDER, built without deep
supervision) from the same seed on the same sequence of batches (``--batch`` random training cases of fold 0 of
FOLDER's splits_final.json, foreground cases only, cropped or zero-padded to the plans' patch, average-pooled by
``--downsample``), with nnU-Net's optimiser: SGD lr 1e-2, momentum 0.99 with Nesterov, weight decay 3e-5, gradient
norm clipped at 12, Dice + cross-entropy loss. No augmentation and a constant learning rate: a quick look at the
optimisation, not nnU-Net's training (for that: ``benchmark_learning.py``). Variants:

- ``plain``: nnU-Net's PlainConvUNet (``InitWeights_He``);
- ``unscaled``: KAPlainConvUNet as nnUNetTrainerKAUNet builds it, plain SGD on every parameter;
- ``scaled``: the same with ``v``'s gradient times ``n_bases / fan_in`` (spline gradient scaling at factor 1);
- ``default``: spline and silu gradient scaling as ``nnUNetTrainerKAUNet`` sets them (``v``'s gradient times
  ``spline_gradient_factor * n_bases / fan_in``, ``u``'s times ``silu_gradient_scale``), the trainer's default;
- ``scaled_1/fan``: v's gradient times ``1 / fan_in`` instead (8x smaller steps than ``scaled``);
- ``frozen_v``: v never moves (the spline path stays as initialised).

Every ``--every`` steps: the loss, the whole gradient norm (before clipping) and v's share of its square, |v| over all
layers, and on the first ``--val-cases`` validation cases the Dice of the foreground and the predicted foreground
fraction (0 = collapsed to background).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import load_pickle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: E402

from nnunet_allukan.layers import KAConv2d  # noqa: E402
from nnunet_allukan.networks.ka_unet import (KA_LAYER_TYPES, KAPlainConvUNet, scale_silu_gradients,  # noqa: E402
                                             scale_spline_gradients)
from nnunet_allukan.training.ka_unet_trainers import nnUNetTrainerKAUNet  # noqa: E402

VARIANTS = ("plain", "unscaled", "scaled", "default", "scaled_1/fan", "frozen_v")


def load_cases(folder: Path, identifiers: list[str], patch: list[int], downsample: int) -> tuple[torch.Tensor, ...]:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(str(folder))(str(folder))
    images, labels = [], []
    for identifier in identifiers:
        data, seg, *_ = dataset.load_case(identifier)
        data, seg = np.asarray(data)[:, 0], np.asarray(seg)[0, 0]
        image = np.zeros((data.shape[0], *patch), np.float32)
        label = np.zeros(patch, np.int64)
        h, w = min(patch[0], data.shape[1]), min(patch[1], data.shape[2])
        image[:, :h, :w], label[:h, :w] = data[:, :h, :w], seg[:h, :w] > 0
        images.append(image)
        labels.append(label)
    x, y = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))
    if downsample > 1:
        x = F.avg_pool2d(x, downsample)
        y = (F.avg_pool2d(y[:, None].float(), downsample)[:, 0] > 0.5).long()
    return x, y


def build(variant: str, arch_kwargs: dict, channels: int, downsample: int) -> nn.Module:
    kwargs = {k: arch_kwargs[k] for k in ("n_stages", "features_per_stage", "kernel_sizes", "strides",
                                          "n_conv_per_stage", "n_conv_per_stage_decoder", "conv_bias")}
    if downsample > 1:  # one stage fewer per halving, as the planner would plan the smaller patch
        drop = int(math.log2(downsample))
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
            kwargs[key] = kwargs[key][: kwargs["n_stages"] - drop]
        kwargs["n_conv_per_stage_decoder"] = kwargs["n_conv_per_stage_decoder"][: kwargs["n_stages"] - drop - 1]
        kwargs["n_stages"] -= drop
    kwargs.update(input_channels=channels, num_classes=2, norm_op=nn.InstanceNorm2d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=False)
    if variant == "plain":
        network = PlainConvUNet(conv_op=nn.Conv2d, **kwargs)
        network.apply(PlainConvUNet.initialize)
        return network
    network = KAPlainConvUNet(conv_op=KAConv2d, ka_kwargs={"grad_free": True, "implementation": "fast"}, **kwargs)
    network.apply(KAPlainConvUNet.initialize)
    layers = [m for m in network.modules() if isinstance(m, KA_LAYER_TYPES)]
    if variant == "scaled":
        scale_spline_gradients(network)
    elif variant == "scaled_1/fan":  # factor 1 / n_bases: the gradient times 1 / fan_in
        scale_spline_gradients(network, 1.0 / layers[0].grid.n_bases)
    elif variant == "default":
        scale_spline_gradients(network, nnUNetTrainerKAUNet.spline_gradient_factor)
        scale_silu_gradients(network, nnUNetTrainerKAUNet.silu_gradient_scale)
    elif variant == "frozen_v":
        for module in layers:
            module.v.requires_grad_(False)
    return network


def dice_and_foreground(network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    network.eval()
    with torch.no_grad():
        prediction = network(x).argmax(1)
    network.train()
    predicted, reference = prediction == 1, y == 1
    tp = (predicted & reference).sum().item()
    return 2 * tp / max(1, predicted.sum().item() + reference.sum().item()), predicted.float().mean().item()


def run(variant: str, args: argparse.Namespace, arch_kwargs: dict, patch: list[int], train: list[str],
        validation: tuple[torch.Tensor, torch.Tensor]) -> list[dict]:
    torch.manual_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    network = build(variant, arch_kwargs, validation[0].shape[1], args.downsample)
    spline = {id(m.v) for m in network.modules() if isinstance(m, KA_LAYER_TYPES)}
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], 1e-2, momentum=0.99,
                                nesterov=True, weight_decay=3e-5)
    rows, start = [], time.time()
    for step in range(1, args.steps + 1):
        x, y = load_cases(args.folder, [train[i] for i in rng.choice(len(train), args.batch, replace=False)], patch,
                          args.downsample)
        logits = network(x)
        foreground = logits.softmax(1)[:, 1]
        dice_loss = 1 - (2 * (foreground * y).sum() + 1) / (foreground.sum() + y.sum() + 1)
        loss = F.cross_entropy(logits, y) + dice_loss
        optimizer.zero_grad()
        loss.backward()
        squared = [(p.grad.norm().item() ** 2, id(p) in spline) for p in network.parameters() if p.grad is not None]
        total = math.sqrt(sum(s for s, _ in squared))
        v_share = sum(s for s, is_v in squared if is_v) / max(total ** 2, 1e-30)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            dice, foreground_fraction = dice_and_foreground(network, *validation)
            v_norm = math.sqrt(sum(p.norm().item() ** 2 for p in network.parameters() if id(p) in spline))
            rows.append({"variant": variant, "step": step, "loss": loss.item(), "grad_norm": total,
                         "v_share": v_share, "v_norm": v_norm, "val_dice": dice, "fg_fraction": foreground_fraction})
            print(f"{variant:<13} step {step:4d}  loss {loss.item():.3f}  |grad| {total:7.2f} (v {v_share:5.1%})  "
                  f"|v| {v_norm:7.3f}  val Dice {dice:.3f}  foreground {foreground_fraction:.3f}  "
                  f"({time.time() - start:.0f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="nnU-Net preprocessed dataset folder (nnUNet_preprocessed/DatasetX)")
    parser.add_argument("--variants", nargs="+", default=["unscaled", "scaled", "plain"], choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--downsample", type=int, default=2, help="average-pool factor of patches (1: full size)")
    parser.add_argument("--val-cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    plans = json.loads((args.folder / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    args.folder_2d = args.folder / plans["data_identifier"]
    split = json.loads((args.folder / "splits_final.json").read_text())[0]
    has_foreground = []
    for identifier in split["train"]:
        properties = load_pickle(str(args.folder_2d / f"{identifier}.pkl"))
        if len(properties["class_locations"].get(1, [])):
            has_foreground.append(identifier)
    folder, args.folder = args.folder, args.folder_2d
    validation = load_cases(args.folder, split["val"][: args.val_cases], plans["patch_size"], args.downsample)
    rows = []
    for variant in args.variants:
        rows += run(variant, args, plans["architecture"]["arch_kwargs"], plans["patch_size"], has_foreground,
                    validation)
    if args.json:
        args.json.write_text(json.dumps({"folder": str(folder), "steps": args.steps, "batch": args.batch,
                                         "downsample": args.downsample, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
