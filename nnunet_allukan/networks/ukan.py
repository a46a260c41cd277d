"""U-KAN (Li et al., AAAI 2025) and ALL U-KAN (paper Sec. 3.3): the same topology, different layer types."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import ConvLayer, DConvLayer, LayerFactory, PatchEmbed, TokenKANBlock

__all__ = ["UKAN", "ALLUKAN"]


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.relu(F.interpolate(x, scale_factor=2.0, mode="bilinear"))


def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class UKAN(nn.Module):
    """U-KAN segmentation network, generalised over the layer types (see :class:`LayerFactory`).

    ``conv``: "conv" (nn.Conv2d, U-KAN), "ka" (KAConv2d), "kan" (KANConv2d); ``fc``: "kan" (KANLinear,
    U-KAN), "linear" (nn.Linear, U-KAN_MLP), "ka" (KALinear). Widths come from ``embed_dims`` = (e0, e1, e2):
    conv stages e0/8, e0/4, e0; tokenised stages e1, e2.

    Shapes: ``[B, input_channels, H, W] -> [B, num_classes, H, W]`` logits (no sigmoid/softmax, no deep
    supervision); H and W must be multiples of 32 (five 2x downsamplings).
    """

    divisor = 32

    def __init__(self, input_channels: int, num_classes: int, embed_dims: Sequence[int] = (128, 160, 256), *,
                 conv: str = "conv", fc: str = "kan", grad_free: bool = False, implementation: str = "fast",
                 chunk_size: Optional[int] = None, use_lambda: bool = False, grid_size: int = 5,
                 spline_order: int = 3, grid_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        if input_channels < 1 or num_classes < 1:
            raise ValueError(f"input_channels and num_classes must be >= 1, got {input_channels}, {num_classes}")
        e0, e1, e2 = (int(e) for e in embed_dims)
        if e0 % 8:
            raise ValueError(f"embed_dims[0] must be divisible by 8, got {e0}")
        self.input_channels, self.num_classes, self.embed_dims = int(input_channels), int(num_classes), (e0, e1, e2)
        self.layer_factory = layers = LayerFactory(conv=conv, fc=fc, grad_free=grad_free,
                                                   implementation=implementation, chunk_size=chunk_size,
                                                   use_lambda=use_lambda, grid_size=grid_size,
                                                   spline_order=spline_order, grid_range=tuple(grid_range))
        self.encoder1 = ConvLayer(input_channels, e0 // 8, layers)
        self.encoder2 = ConvLayer(e0 // 8, e0 // 4, layers)
        self.encoder3 = ConvLayer(e0 // 4, e0, layers)
        self.patch_embed3 = PatchEmbed(e0, e1, layers)
        self.patch_embed4 = PatchEmbed(e1, e2, layers)
        self.block1 = TokenKANBlock(e1, layers)
        self.block2 = TokenKANBlock(e2, layers)
        self.norm3, self.norm4 = nn.LayerNorm(e1), nn.LayerNorm(e2)
        self.dblock1 = TokenKANBlock(e1, layers)
        self.dblock2 = TokenKANBlock(e0, layers)
        self.dnorm3, self.dnorm4 = nn.LayerNorm(e1), nn.LayerNorm(e0)
        self.decoder1 = DConvLayer(e2, e1, layers)
        self.decoder2 = DConvLayer(e1, e0, layers)
        self.decoder3 = DConvLayer(e0, e0 // 4, layers)
        self.decoder4 = DConvLayer(e0 // 4, e0 // 8, layers)
        self.decoder5 = DConvLayer(e0 // 8, e0 // 8, layers)
        self.final = layers.make_conv(e0 // 8, num_classes, 1)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(f"{type(self).__name__} expects [B, {self.input_channels}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[2:]
        if h % self.divisor or w % self.divisor:
            raise ValueError(f"{type(self).__name__} needs H and W divisible by {self.divisor} (five 2x "
                             f"downsamplings), got {h}x{w}; pad or resize the input, or use a patch size that is "
                             f"a multiple of {self.divisor}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        t1 = F.relu(F.max_pool2d(self.encoder1(x), 2))
        t2 = F.relu(F.max_pool2d(self.encoder2(t1), 2))
        t3 = F.relu(F.max_pool2d(self.encoder3(t2), 2))

        out, h, w = self.patch_embed3(t3)
        t4 = _tokens_to_map(self.norm3(self.block1(out, h, w)), h, w)
        out, h, w = self.patch_embed4(t4)
        out = _tokens_to_map(self.norm4(self.block2(out, h, w)), h, w)

        out = _up(self.decoder1(out)) + t4
        h, w = out.shape[2:]
        out = _tokens_to_map(self.dnorm3(self.dblock1(out.flatten(2).transpose(1, 2), h, w)), h, w)
        out = _up(self.decoder2(out)) + t3
        h, w = out.shape[2:]
        out = _tokens_to_map(self.dnorm4(self.dblock2(out.flatten(2).transpose(1, 2), h, w)), h, w)
        out = _up(self.decoder3(out)) + t2
        out = _up(self.decoder4(out)) + t1
        out = _up(self.decoder5(out))
        return self.final(out)


class ALLUKAN(UKAN):
    """ALL U-KAN: U-KAN with every convolution a KAonv (31) and every FC/KAN layer a KA layer (12).

    Defaults are the paper's: Grad-Free Spline on, fast closed-form KAonv, chunk size 32 (its 256x256
    setting; 16 is its choice at 512x512), no lambda_j. BatchNorm/ReLU/LayerNorm and skips as in U-KAN.
    """

    def __init__(self, input_channels: int, num_classes: int, embed_dims: Sequence[int] = (128, 160, 256), *,
                 grad_free: bool = True, implementation: str = "fast", chunk_size: Optional[int] = 32,
                 use_lambda: bool = False, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__(input_channels, num_classes, embed_dims, conv="ka", fc="ka", grad_free=grad_free,
                         implementation=implementation, chunk_size=chunk_size, use_lambda=use_lambda,
                         grid_size=grid_size, spline_order=spline_order, grid_range=grid_range)
