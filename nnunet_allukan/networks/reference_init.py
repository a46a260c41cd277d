"""The reference U-KAN code's weight initialisation, for the U-KAN-family networks.

The reference calls ``self.apply(self._init_weights)`` in its PatchEmbed, DW_bn_relu, KANLayer and KANBlock modules
(not in the encoder / decoder conv stages, which keep PyTorch's defaults):

- ``nn.Linear``: truncated normal, std 0.02 (timm's ``trunc_normal_``, cut at +-2), bias 0;
- ``nn.LayerNorm``: weight 1, bias 0;
- ``nn.Conv2d`` (the depthwise and patch-embedding convolutions): N(0, sqrt(2 / fan_out)) with
  fan_out = k_h * k_w * C_out / groups, bias 0.

Its KAN layers (efficient-kan's ``KANLinear``) are untouched by that hook and keep efficient-kan's own
initialisation, whose spline coefficients are the least-squares fit of small uniform noise at the grid points
(``curve2coeff``); the base and scaler weights are kaiming-uniform as in :class:`KANLinear` already.
Layers of other types (KA, KAonv, vanilla KAonv) are not touched: the reference has none.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..layers import KANLinear, bspline_bases

__all__ = ["reference_initialisation", "fit_kan_spline_to_noise"]

LINEAR_STD = 0.02
KAN_SCALE_NOISE = 0.1  # efficient-kan's default, used by U-KAN


def fit_kan_spline_to_noise(layer: KANLinear, scale_noise: float = KAN_SCALE_NOISE) -> None:
    """efficient-kan's spline initialisation: coefficients whose spline passes (least squares, minimum norm) through
    uniform noise in +-scale_noise / (2 grid_size) at the grid_size + 1 grid points of [lo, hi]."""
    grid = layer.grid
    points = torch.linspace(grid.lo, grid.hi, grid.grid_size + 1, dtype=torch.float64)
    bases = bspline_bases(points, grid.grid_size, grid.spline_order, (grid.lo, grid.hi))  # [points, n_bases]
    noise = (torch.rand(grid.grid_size + 1, layer.in_features, layer.out_features) - 0.5) * scale_noise / grid.grid_size
    coefficients = torch.einsum("kp,pio->oik", torch.linalg.pinv(bases), noise.to(torch.float64))
    with torch.no_grad():
        layer.spline_weight.copy_(coefficients.to(layer.spline_weight.dtype))


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=LINEAR_STD, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
        fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, KANLinear):
        fit_kan_spline_to_noise(module)


def reference_initialisation(network: nn.Module) -> None:
    """Applies the reference's initialisation to a :class:`UKAN`'s patch embeddings and tokenised blocks."""
    for name in ("patch_embed3", "patch_embed4", "block1", "block2", "dblock1", "dblock2"):
        getattr(network, name).apply(_init_module)
