"""U-KAN / U-KAN_MLP start from the reference U-KAN code's initialisation (weight statistics per kind of layer)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_allukan.layers import KALinear, KANLinear
from nnunet_allukan.networks import ALLUKAN, build_table2_network

TOKEN_PARTS = ("patch_embed3", "patch_embed4", "block1", "block2", "dblock1", "dblock2")


def _token_modules(network, kind):
    return [m for part in TOKEN_PARTS for m in getattr(network, part).modules() if isinstance(m, kind)]


def _relative(a, b):
    return abs(a / b - 1)


def test_ukan_mlp_linear_and_token_convolutions_have_the_reference_statistics():
    torch.manual_seed(0)
    network = build_table2_network("ukan_mlp")
    weights = torch.cat([m.weight.flatten() for m in _token_modules(network, nn.Linear)])
    assert _relative(weights.std().item(), 0.02) < 0.05
    assert all(torch.count_nonzero(m.bias) == 0 for m in _token_modules(network, nn.Linear))
    depthwise = [m for m in _token_modules(network, nn.Conv2d) if m.groups > 1]
    assert len(depthwise) == 12
    dw = torch.cat([m.weight.flatten() for m in depthwise])
    assert _relative(dw.std().item(), math.sqrt(2 / 9)) < 0.05  # fan_out = 3 * 3 * C / C
    embed = network.patch_embed3.proj  # 3x3, 128 -> 160: fan_out 1440
    assert _relative(embed.weight.std().item(), math.sqrt(2 / (9 * 160))) < 0.05
    # the conv stages keep PyTorch's default (kaiming-uniform a=sqrt(5): std = 1 / sqrt(3 fan_in))
    first = network.encoder2[0]  # 3x3, 16 -> 32
    assert _relative(first.weight.std().item(), 1 / math.sqrt(3 * 16 * 9)) < 0.05


def _efficient_kan_spline_std(in_features, out_features, samples=4):
    """efficient-kan's curve2coeff(noise), re-implemented independently (numpy least squares, Cox-de Boor)."""
    grid_size, order, h = 5, 3, 0.4
    knots = -1 + h * np.arange(-order, grid_size + order + 1)
    x = np.linspace(-1, 1, grid_size + 1)

    def bases(xv):
        b = ((xv[:, None] >= knots[None, :-1]) & (xv[:, None] < knots[None, 1:])).astype(float)
        for k in range(1, order + 1):
            b = ((xv[:, None] - knots[None, :-(k + 1)]) / (knots[None, k:-1] - knots[None, :-(k + 1)]) * b[:, :-1]
                 + (knots[None, k + 1:] - xv[:, None]) / (knots[None, k + 1:] - knots[None, 1:-k]) * b[:, 1:])
        return b

    a = bases(x)  # [6, 8]
    rng = np.random.default_rng(0)
    values = []
    for _ in range(samples):
        noise = (rng.random((grid_size + 1, in_features * out_features)) - 0.5) * 0.1 / grid_size
        values.append(np.linalg.lstsq(a, noise, rcond=None)[0].ravel())
    return np.concatenate(values).std()


def test_ukan_kan_layers_start_as_efficient_kan_fits_them():
    torch.manual_seed(0)
    network = build_table2_network("ukan")
    kan = _token_modules(network, KANLinear)
    assert len(kan) == 12
    spline = torch.cat([m.spline_weight.flatten() for m in kan])
    assert _relative(spline.std().item(), _efficient_kan_spline_std(160, 160)) < 0.05
    # the fitted spline through the noise stays within the noise's range at the grid points
    from nnunet_allukan.layers import bspline_bases

    points = torch.linspace(-1, 1, 6, dtype=torch.float64)
    values = torch.einsum("pk,oik->pio", bspline_bases(points, 5, 3, (-1, 1)), kan[0].spline_weight.double())
    assert values.abs().max() <= 0.05 / 5 + 1e-9


def test_allukan_keeps_its_own_ka_initialisation():
    torch.manual_seed(0)
    network = ALLUKAN(3, 1)
    fc = network.block1.layer.fc1
    assert isinstance(fc, KALinear)
    bound = 1 / fc.in_features
    assert fc.v.abs().max() <= bound and _relative(fc.v.std().item(), bound / math.sqrt(3)) < 0.1


@pytest.mark.parametrize("row", [4, 5])
def test_3d_baselines_get_the_same_reference_initialisation(row):
    torch.manual_seed(0)
    network = build_table2_network(row, 1, 1, dim=3, embed_dims=(16, 24, 32))
    depthwise = [m for m in _token_modules(network, nn.Conv3d) if m.groups > 1]
    dw = torch.cat([m.weight.flatten() for m in depthwise])
    assert _relative(dw.std().item(), math.sqrt(2 / 27)) < 0.1
