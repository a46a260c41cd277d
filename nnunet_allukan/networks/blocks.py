"""Building blocks of U-KAN, with the convolution and FC layer types chosen by a :class:`LayerFactory`.

The topology follows the reference U-KAN code exactly (``u-kan-and-paper-facts.md`` sec. 3); only the layer
*types* change between U-KAN_MLP, U-KAN, the ablation rows and ALL U-KAN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..layers import KAConv2d, KALinear, KANConv2d, KANLinear

CONV_KINDS = ("conv", "ka", "kan")  # nn.Conv2d, KAonv (SaKAN), KAonv with vanilla-KAN weights
FC_KINDS = ("linear", "kan", "ka")  # nn.Linear, vanilla KANLinear (U-KAN), KA layer (SaKAN)


@dataclass(frozen=True)
class LayerFactory:
    """Which layer implements each convolution and each FC layer of the network, and their options.

    ``grad_free`` applies to every spline layer (KA, KAonv, KANLinear, KANConv2d); ``implementation``,
    ``chunk_size`` and ``use_lambda`` to the SaKAN layers (KALinear / KAConv2d).
    """

    conv: str = "conv"
    fc: str = "kan"
    grad_free: bool = False
    implementation: str = "fast"
    chunk_size: Optional[int] = None
    use_lambda: bool = False
    grid_size: int = 5
    spline_order: int = 3
    grid_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if self.conv not in CONV_KINDS:
            raise ValueError(f"conv must be one of {CONV_KINDS}, got {self.conv!r}")
        if self.fc not in FC_KINDS:
            raise ValueError(f"fc must be one of {FC_KINDS}, got {self.fc!r}")
        if self.implementation not in ("fast", "reference"):
            raise ValueError(f"implementation must be 'fast' or 'reference', got {self.implementation!r}")
        if self.use_lambda and "ka" not in (self.conv, self.fc):
            raise ValueError("use_lambda only applies to KA layers (conv='ka' or fc='ka')")

    def _grid(self) -> dict:
        return dict(grid_size=self.grid_size, spline_order=self.spline_order, grid_range=tuple(self.grid_range))

    def make_conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                  groups: int = 1) -> nn.Module:
        if self.conv == "conv":
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=True)
        if self.conv == "ka":
            # No bias (Eq. 7 has none; a BatchNorm follows most of these layers anyway).
            return KAConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                            grad_free=self.grad_free, use_lambda=self.use_lambda, chunk_size=self.chunk_size,
                            implementation=self.implementation, **self._grid())
        return KANConv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                         grad_free=self.grad_free, implementation=self.implementation, **self._grid())

    def make_fc(self, in_features: int, out_features: int) -> nn.Module:
        if self.fc == "linear":
            return nn.Linear(in_features, out_features)
        if self.fc == "ka":
            return KALinear(in_features, out_features, grad_free=self.grad_free, use_lambda=self.use_lambda,
                            chunk_size=self.chunk_size, **self._grid())
        return KANLinear(in_features, out_features, grad_free=self.grad_free, **self._grid())


class ConvLayer(nn.Sequential):
    """U-KAN encoder stage: [3x3 conv -> BN -> ReLU] x 2 (in -> out -> out)."""

    def __init__(self, in_channels: int, out_channels: int, layers: LayerFactory) -> None:
        super().__init__(
            layers.make_conv(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(True),
            layers.make_conv(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(True))


class DConvLayer(nn.Sequential):
    """U-KAN decoder stage: 3x3 conv in -> in, BN, ReLU, 3x3 conv in -> out, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, layers: LayerFactory) -> None:
        super().__init__(
            layers.make_conv(in_channels, in_channels, 3, padding=1), nn.BatchNorm2d(in_channels), nn.ReLU(True),
            layers.make_conv(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(True))


class PatchEmbed(nn.Module):
    """3x3 stride-2 conv, then LayerNorm over channels. ``[B, C, H, W] -> ([B, H/2*W/2, D], H/2, W/2)``."""

    def __init__(self, in_channels: int, embed_dim: int, layers: LayerFactory) -> None:
        super().__init__()
        self.proj = layers.make_conv(in_channels, embed_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class DWBNReLU(nn.Module):
    """3x3 depthwise conv -> BN -> ReLU on the token grid. ``[B, N, C] -> [B, N, C]`` (N = H*W)."""

    def __init__(self, dim: int, layers: LayerFactory) -> None:
        super().__init__()
        self.dwconv = layers.make_conv(dim, dim, 3, padding=1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.relu = nn.ReLU(True)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, h, w)
        x = self.relu(self.bn(self.dwconv(x)))
        return x.flatten(2).transpose(1, 2)


class TokenKANLayer(nn.Module):
    """fc1 -> DW -> fc2 -> DW -> fc3 -> DW, all of width ``dim`` (U-KAN's KANLayer)."""

    def __init__(self, dim: int, layers: LayerFactory) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (layers.make_fc(dim, dim) for _ in range(3))
        self.dwconv_1, self.dwconv_2, self.dwconv_3 = (DWBNReLU(dim, layers) for _ in range(3))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.dwconv_1(self.fc1(x), h, w)
        x = self.dwconv_2(self.fc2(x), h, w)
        return self.dwconv_3(self.fc3(x), h, w)


class TokenKANBlock(nn.Module):
    """Residual tokenised block: ``x + layer(LayerNorm(x))``; ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, dim: int, layers: LayerFactory) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layer = TokenKANLayer(dim, layers)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return x + self.layer(self.norm(x), h, w)
