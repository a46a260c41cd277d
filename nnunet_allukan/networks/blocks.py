"""Building blocks of U-KAN, dimension-generic and built from layer *types*.

As in dynamic-network-architectures, every block takes ``conv_op`` / ``norm_op`` / ``nonlin`` types (plus kwargs)
and, for the tokenised stages, an ``fc_op`` type: ``nn.Conv2d`` or ``KAConv2d`` or ``KANConv2d`` (and the 3D
classes), ``nn.Linear`` or ``KANLinear`` or ``KALinear``. One class serves 2D and 3D, and U-KAN_MLP, U-KAN, the
ablation rows and ALL U-KAN differ only in the types handed in. The topology follows the reference U-KAN code
exactly (``u-kan-and-paper-facts.md`` sec. 3).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..layers import KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d, KANConv2d

__all__ = ["LayerTypes", "accepted_options", "conv_op_dim", "ConvLayer", "DConvLayer", "PatchEmbed", "DWNormNonlin",
           "TokenKANLayer", "TokenKANBlock"]


def conv_op_dim(conv_op: type) -> int:
    """Spatial dimension of a convolution type (``nn.Conv2d``, ``KAConv3d``, ...)."""
    for dim, bases in ((2, (nn.Conv2d, KAConv2d, KANConv2d, nn.ConvTranspose2d, KAConvTranspose2d)),
                       (3, (nn.Conv3d, KAConv3d, nn.ConvTranspose3d, KAConvTranspose3d))):
        if isinstance(conv_op, type) and issubclass(conv_op, bases):
            return dim
    raise ValueError(f"cannot tell the spatial dimension of conv_op {conv_op!r}: use nn.Conv2d/3d, KAConv2d/3d or "
                     "KANConv2d")


@dataclass(frozen=True)
class LayerTypes:
    """The layer types (and their keyword arguments) that make up one U-KAN network.

    ``conv_op(c_in, c_out, kernel_size, stride, padding, groups=..., **conv_kwargs)`` builds every convolution,
    ``fc_op(d, d, **fc_kwargs)`` every token-mixing FC layer, ``norm_op(c, **norm_op_kwargs)`` every BatchNorm,
    ``nonlin(**nonlin_kwargs)`` every ReLU.
    """

    conv_op: type = nn.Conv2d
    fc_op: type = nn.Linear
    norm_op: type = nn.BatchNorm2d
    nonlin: type = nn.ReLU
    conv_kwargs: dict = field(default_factory=dict)
    fc_kwargs: dict = field(default_factory=dict)
    norm_op_kwargs: dict = field(default_factory=dict)
    nonlin_kwargs: dict = field(default_factory=lambda: {"inplace": True})

    @property
    def dim(self) -> int:
        return conv_op_dim(self.conv_op)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: "int | Sequence[int]" = 1,
             padding: int = 0, groups: int = 1) -> nn.Module:
        return self.conv_op(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                            **self.conv_kwargs)

    def fc(self, features: int) -> nn.Module:
        return self.fc_op(features, features, **self.fc_kwargs)

    def norm(self, channels: int) -> nn.Module:
        return self.norm_op(channels, **self.norm_op_kwargs)

    def act(self) -> nn.Module:
        return self.nonlin(**self.nonlin_kwargs)


def tokens_to_map(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """``[B, N, C] -> [B, C, *spatial]`` (N = prod(spatial))."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, *spatial)


class ConvLayer(nn.Sequential):
    """U-KAN encoder stage: [3^d conv -> norm -> nonlin] x 2 (in -> out -> out)."""

    def __init__(self, in_channels: int, out_channels: int, layers: LayerTypes) -> None:
        super().__init__(layers.conv(in_channels, out_channels, 3, padding=1), layers.norm(out_channels), layers.act(),
                         layers.conv(out_channels, out_channels, 3, padding=1), layers.norm(out_channels), layers.act())


class DConvLayer(nn.Sequential):
    """U-KAN decoder stage: 3^d conv in -> in, norm, nonlin, 3^d conv in -> out, norm, nonlin."""

    def __init__(self, in_channels: int, out_channels: int, layers: LayerTypes) -> None:
        super().__init__(layers.conv(in_channels, in_channels, 3, padding=1), layers.norm(in_channels), layers.act(),
                         layers.conv(in_channels, out_channels, 3, padding=1), layers.norm(out_channels), layers.act())


class PatchEmbed(nn.Module):
    """3^d conv with the stage's stride, then LayerNorm over channels: ``[B, C, *sp] -> ([B, N, D], sp_out)``."""

    def __init__(self, in_channels: int, embed_dim: int, stride: Sequence[int], layers: LayerTypes) -> None:
        super().__init__()
        self.proj = layers.conv(in_channels, embed_dim, 3, stride=tuple(stride), padding=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(x.shape[2:])


class DWNormNonlin(nn.Module):
    """3^d depthwise conv -> norm -> nonlin on the token grid. ``[B, N, C] -> [B, N, C]`` (N = prod(spatial))."""

    def __init__(self, dim: int, layers: LayerTypes) -> None:
        super().__init__()
        self.dwconv = layers.conv(dim, dim, 3, padding=1, groups=dim)
        self.bn = layers.norm(dim)
        self.relu = layers.act()

    def forward(self, x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        x = self.relu(self.bn(self.dwconv(tokens_to_map(x, spatial))))
        return x.flatten(2).transpose(1, 2)


class TokenKANLayer(nn.Module):
    """fc1 -> DW -> fc2 -> DW -> fc3 -> DW, all of width ``dim`` (U-KAN's KANLayer)."""

    def __init__(self, dim: int, layers: LayerTypes) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (layers.fc(dim) for _ in range(3))
        self.dwconv_1, self.dwconv_2, self.dwconv_3 = (DWNormNonlin(dim, layers) for _ in range(3))

    def forward(self, x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        x = self.dwconv_1(self.fc1(x), spatial)
        x = self.dwconv_2(self.fc2(x), spatial)
        return self.dwconv_3(self.fc3(x), spatial)


class TokenKANBlock(nn.Module):
    """Residual tokenised block: ``x + layer(LayerNorm(x))``; ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, dim: int, layers: LayerTypes) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layer = TokenKANLayer(dim, layers)

    def forward(self, x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        return x + self.layer(self.norm(x), spatial)


def default_norm_op(dim: int) -> type:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim]


def optional_kwargs(kwargs: Optional[dict]) -> dict:
    return {} if kwargs is None else dict(kwargs)


def accepted_options(op: type, options: dict) -> dict:
    """The entries of ``options`` that ``op``'s constructor takes (so one override can address every layer kind)."""
    parameters = inspect.signature(op.__init__).parameters
    return {k: v for k, v in options.items() if k in parameters}
