"""What the KA layer modules share: argument normalisation, convolution geometry, initialisation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .splines import SplineGrid

__all__ = ["IntOrTuple", "ntuple", "ConvGeometry", "unfold_fields", "init_ka_parameters", "SplineGridAttributes",
           "check_chunk", "apply_in_amp_dtype"]

IntOrTuple = Union[int, Sequence[int]]


def ntuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        out = (value,) * n
    else:
        out = tuple(int(v) for v in value)
        if len(out) != n:
            raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    return out


def init_ka_parameters(u: torch.Tensor, v: torch.Tensor, fan_in: int) -> None:
    """u as PyTorch's Linear/Conv default (kaiming-uniform, a=sqrt(5)): the silu path starts as a standard layer
    on silu(x). v ~ U(-1/fan_in, 1/fan_in): the spline path sums over fan_in inputs (S_k grows like fan_in),
    so this keeps its contribution O(1) at any width and depth."""
    nn.init.kaiming_uniform_(u, a=math.sqrt(5))
    nn.init.uniform_(v, -1.0 / fan_in, 1.0 / fan_in)


class SplineGridAttributes:
    """``grid_size`` / ``spline_order`` / ``grid_range`` / ``basis`` read from the layer's :class:`SplineGrid`
    ``grid``."""

    grid: SplineGrid

    @property
    def grid_size(self) -> int:
        return self.grid.grid_size

    @property
    def spline_order(self) -> int:
        return self.grid.spline_order

    @property
    def grid_range(self) -> tuple[float, float]:
        return (self.grid.lo, self.grid.hi)

    @property
    def basis(self) -> str:
        return self.grid.basis

    def basis_repr(self) -> str:
        """``", basis=..."`` for extra_repr, empty for the paper's B-splines."""
        return "" if self.grid.basis == "bspline" else f", basis={self.grid.basis!r}"


@dataclass(frozen=True)
class ConvGeometry:
    """A (grouped, strided, dilated, zero-padded) convolution's geometry and the KA options of its layer."""

    nd: int
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    grid: SplineGrid
    grad_free: bool
    chunk_size: Optional[int]

    @property
    def cin_g(self) -> int:
        return self.in_channels // self.groups

    @property
    def cout_g(self) -> int:
        return self.out_channels // self.groups

    @property
    def one_output_per_group(self) -> bool:
        """Depthwise and alike: each group's KA layer has one output (one learned activation)."""
        return self.cout_g == 1

    @property
    def no_padding(self) -> tuple[int, ...]:
        return (0,) * self.nd

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        if not any(self.padding):
            return x
        return F.pad(x, [q for p in reversed(self.padding) for q in (p, p)])

    def crop(self, x_pad: torch.Tensor) -> torch.Tensor:
        return x_pad[(slice(None), slice(None)) + tuple(slice(p, s - p) for p, s in zip(self.padding, x_pad.shape[2:]))]

    def conv(self, x: torch.Tensor, w: torch.Tensor, groups: int, padding: Sequence[int]) -> torch.Tensor:
        conv = F.conv2d if self.nd == 2 else F.conv3d
        return conv(x, w, None, self.stride, tuple(padding), self.dilation, groups)

    def conv_input_grad(self, in_shape: Sequence[int], w: torch.Tensor, gy: torch.Tensor, groups: int,
                        padding: Sequence[int]) -> torch.Tensor:
        fn = torch.nn.grad.conv2d_input if self.nd == 2 else torch.nn.grad.conv3d_input
        return fn(list(in_shape), w, gy, self.stride, tuple(padding), self.dilation, groups)

    def conv_weight_grad(self, x: torch.Tensor, w_shape: Sequence[int], gy: torch.Tensor, groups: int,
                         padding: Sequence[int]) -> torch.Tensor:
        fn = torch.nn.grad.conv2d_weight if self.nd == 2 else torch.nn.grad.conv3d_weight
        return fn(x, list(w_shape), gy, self.stride, tuple(padding), self.dilation, groups)


def unfold_fields(x_pad: torch.Tensor, geo: ConvGeometry) -> torch.Tensor:
    """Every receptive field, explicitly: ``[B, C, *sp_pad] -> [B, *sp_out, C, *kernel]``."""
    for d in range(geo.nd):
        span = geo.dilation[d] * (geo.kernel[d] - 1) + 1
        x_pad = x_pad.unfold(2 + d, span, geo.stride[d])
        if geo.dilation[d] > 1:
            x_pad = x_pad[..., :: geo.dilation[d]]
    nd = geo.nd
    perm = [0] + list(range(2, 2 + nd)) + [1] + list(range(2 + nd, 2 + 2 * nd))
    return x_pad.permute(perm)


def check_chunk(chunk_size: Optional[int]) -> Optional[int]:
    """A layer's ``chunk_size`` argument: a positive integer or None."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return int(chunk_size)


def apply_in_amp_dtype(function, tensors: tuple, spline_weights: tuple, *constants):
    """``function.apply(*tensors, *spline_weights, *constants)`` with ``tensors`` (x first; None allowed) in the
    dtype the function runs in, as ``torch.amp.custom_fwd(cast_inputs=)`` does, for any device type: under
    autocast, the autocast dtype with autocast off inside (the functions call their convolutions and GEMMs
    themselves, so forward and backward run in that one dtype); otherwise x's dtype. ``spline_weights`` (v,
    lambda) keep their own dtype: their gradients sum over every position and input of the layer and are
    computed in float32 for half inputs, where float16 would overflow (splines.compute_dtype)."""
    x = tensors[0]
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        with torch.autocast(dev, enabled=False):
            return function.apply(*(None if t is None else t.to(dt) for t in tensors), *spline_weights, *constants)
    return function.apply(*(None if t is None else t.to(x.dtype) for t in tensors), *spline_weights, *constants)
