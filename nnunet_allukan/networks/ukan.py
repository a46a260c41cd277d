"""U-KAN (Li et al., AAAI 2025) and ALL U-KAN (paper Sec. 3.3): one topology, different layer types, 2D or 3D."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import KAConv2d, KAConv3d, KALinear, KANLinear
from ..paper import EMBED_DIMS, GRID_RANGE, GRID_SIZE, NUM_DOWNSAMPLINGS, SPLINE_ORDER
from .blocks import (ConvLayer, DConvLayer, LayerTypes, PatchEmbed, TokenKANBlock, conv_op_dim, default_norm_op,
                     optional_kwargs, tokens_to_map)
from .reference_init import reference_initialisation

__all__ = ["UKAN", "ALLUKAN", "normalise_strides"]


def normalise_strides(strides: Optional[Sequence], dim: int) -> tuple[tuple[int, ...], ...]:
    """The five per-axis down-sampling factors (three max-pools, two patch embeddings); default 2 everywhere."""
    if strides is None:
        return ((2,) * dim,) * NUM_DOWNSAMPLINGS
    out = tuple((int(s),) * dim if isinstance(s, int) else tuple(int(v) for v in s) for s in strides)
    if len(out) != NUM_DOWNSAMPLINGS or any(len(s) != dim or min(s) < 1 for s in out):
        raise ValueError(f"strides must be {NUM_DOWNSAMPLINGS} entries (one per down-sampling) of {dim} factors >= 1, "
                         f"got {strides!r}")
    return out


class UKAN(nn.Module):
    """U-KAN segmentation network, generalised over the layer types and the spatial dimension.

    Args:
        conv_op: type of every convolution (``nn.Conv2d`` = U-KAN, ``KAConv2d`` = KAonv, ``KANConv2d`` = vanilla-KAN
            KAonv, or the 3D types); built as ``conv_op(c_in, c_out, k, stride, padding, groups=g, **conv_kwargs)``.
        fc_op: type of the token-mixing FC layers (``KANLinear`` = U-KAN, ``nn.Linear`` = U-KAN_MLP, ``KALinear``).
        norm_op / nonlin: BatchNorm and ReLU by default (the reference), of ``conv_op``'s dimension.
        embed_dims: (e0, e1, e2): conv stages e0/8, e0/4, e0; tokenised stages e1, e2.
        strides: five per-axis down-sampling factors (encoder max-pools 1-3, patch embeddings 4-5), default 2 on
            every axis as in the paper; an axis with factor 1 is not down-sampled at that stage (3D plans).
        deep_supervision: accepted because nnU-Net's ``get_network_from_plans`` passes it; U-KAN has one output.

    Initialisation: the reference U-KAN code's (:mod:`nnunet_allukan.networks.reference_init`).

    Shapes: ``[B, input_channels, *spatial] -> [B, num_classes, *spatial]`` logits; each spatial side must be a
    multiple of the product of its strides (32 by default).
    """

    def __init__(self, input_channels: int, num_classes: int, embed_dims: Sequence[int] = EMBED_DIMS, *,
                 conv_op: type = nn.Conv2d, conv_kwargs: Optional[dict] = None, fc_op: type = KANLinear,
                 fc_kwargs: Optional[dict] = None, norm_op: Optional[type] = None,
                 norm_op_kwargs: Optional[dict] = None, nonlin: type = nn.ReLU, nonlin_kwargs: Optional[dict] = None,
                 strides: Optional[Sequence] = None, deep_supervision: bool = False) -> None:
        super().__init__()
        if input_channels < 1 or num_classes < 1:
            raise ValueError(f"input_channels and num_classes must be >= 1, got {input_channels}, {num_classes}")
        if deep_supervision:
            raise ValueError("U-KAN has a single full-resolution output: deep supervision is not available "
                             "(the paper's protocol trains without it)")
        e0, e1, e2 = (int(e) for e in embed_dims)
        if e0 % 8:
            raise ValueError(f"embed_dims[0] must be divisible by 8, got {e0}")
        dim = conv_op_dim(conv_op)
        self.input_channels, self.num_classes, self.embed_dims, self.dim = int(input_channels), int(num_classes), \
            (e0, e1, e2), dim
        self.strides = normalise_strides(strides, dim)
        self.divisors = tuple(math.prod(s[d] for s in self.strides) for d in range(dim))
        self.layer_types = layers = LayerTypes(
            conv_op=conv_op, fc_op=fc_op, norm_op=norm_op or default_norm_op(dim), nonlin=nonlin,
            conv_kwargs=optional_kwargs(conv_kwargs), fc_kwargs=optional_kwargs(fc_kwargs),
            norm_op_kwargs=optional_kwargs(norm_op_kwargs),
            nonlin_kwargs={"inplace": True} if nonlin_kwargs is None else dict(nonlin_kwargs))
        self._max_pool = F.max_pool2d if dim == 2 else F.max_pool3d
        self._interpolation = "bilinear" if dim == 2 else "trilinear"
        self.encoder1 = ConvLayer(input_channels, e0 // 8, layers)
        self.encoder2 = ConvLayer(e0 // 8, e0 // 4, layers)
        self.encoder3 = ConvLayer(e0 // 4, e0, layers)
        self.patch_embed3 = PatchEmbed(e0, e1, self.strides[3], layers)
        self.patch_embed4 = PatchEmbed(e1, e2, self.strides[4], layers)
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
        self.final = layers.conv(e0 // 8, num_classes, 1)
        # As the reference code: its patch-embedding and tokenised-block modules re-initialise their nn.Linear,
        # nn.Conv and LayerNorm layers, and its KAN layers start as efficient-kan fits them. KA layers keep their
        # own initialisation (docs/layers.md), so for ALL U-KAN this changes nothing but the random stream.
        reference_initialisation(self)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.dim + 2 or x.shape[1] != self.input_channels:
            raise ValueError(f"{type(self).__name__} expects [B, {self.input_channels}, "
                             f"{', '.join('*' * self.dim)}], got {tuple(x.shape)}")
        if any(s % d for s, d in zip(x.shape[2:], self.divisors)):
            raise ValueError(f"{type(self).__name__} needs spatial sides divisible by {list(self.divisors)} (the "
                             f"products of its down-sampling strides), got {list(x.shape[2:])}; pad or resize the "
                             f"input, or use a patch size that is a multiple of these")

    def _pool(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        return F.relu(self._max_pool(x, self.strides[stage], self.strides[stage]))

    def _up(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        scale = tuple(float(s) for s in self.strides[stage])
        return F.relu(F.interpolate(x, scale_factor=scale, mode=self._interpolation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        t1 = self._pool(self.encoder1(x), 0)
        t2 = self._pool(self.encoder2(t1), 1)
        t3 = self._pool(self.encoder3(t2), 2)

        out, sp = self.patch_embed3(t3)
        t4 = tokens_to_map(self.norm3(self.block1(out, sp)), sp)
        out, sp = self.patch_embed4(t4)
        out = tokens_to_map(self.norm4(self.block2(out, sp)), sp)

        out = self._up(self.decoder1(out), 4) + t4
        sp = out.shape[2:]
        out = tokens_to_map(self.dnorm3(self.dblock1(out.flatten(2).transpose(1, 2), sp)), sp)
        out = self._up(self.decoder2(out), 3) + t3
        sp = out.shape[2:]
        out = tokens_to_map(self.dnorm4(self.dblock2(out.flatten(2).transpose(1, 2), sp)), sp)
        out = self._up(self.decoder3(out), 2) + t2
        out = self._up(self.decoder4(out), 1) + t1
        out = self._up(self.decoder5(out), 0)
        return self.final(out)


class ALLUKAN(UKAN):
    """ALL U-KAN: U-KAN with every convolution a KAonv (31) and every FC/KAN layer a KA layer (12).

    Defaults are the paper's: Grad-Free Spline on, fast closed-form KAonv, no lambda_j. ``chunk_size`` (the paper's
    chunk-wise computation: 32 at 256x256, 16 at 512x512, ``paper.CHUNK_SIZE``) bounds the per-input bases of
    ``implementation="reference"`` and ``use_lambda``; the fast path builds none and ignores it.
    BatchNorm/ReLU/LayerNorm and skips as in U-KAN. ``dim=3`` builds it from ``KAConv3d`` / ``BatchNorm3d``. The KA
    options go to every KA layer; ``implementation`` to the KAonv layers.
    """

    def __init__(self, input_channels: int, num_classes: int, embed_dims: Sequence[int] = EMBED_DIMS, *,
                 dim: int = 2, grad_free: bool = True, implementation: str = "fast",
                 chunk_size: Optional[int] = None, use_lambda: bool = False, grid_size: int = GRID_SIZE,
                 spline_order: int = SPLINE_ORDER, grid_range: tuple[float, float] = GRID_RANGE,
                 strides: Optional[Sequence] = None, deep_supervision: bool = False) -> None:
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        ka = dict(grad_free=grad_free, chunk_size=chunk_size, use_lambda=use_lambda, grid_size=grid_size,
                  spline_order=spline_order, grid_range=tuple(grid_range))
        super().__init__(input_channels, num_classes, embed_dims, conv_op=KAConv2d if dim == 2 else KAConv3d,
                         conv_kwargs=dict(ka, implementation=implementation), fc_op=KALinear, fc_kwargs=ka,
                         strides=strides, deep_supervision=deep_supervision)
