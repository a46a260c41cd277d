"""KA layer (SaKAN + Grad-Free Spline) and KAonv layers, paper Sec. 3.

For inputs x_1..x_n and outputs y_1..y_m the KA layer computes (paper Eq. 7)::

    y_i = sum_k v[i, k] * sum_j B_k(x_j)  +  sum_j u[i, j] * silu(x_j)          (+ bias_i)

with B_k the cubic B-spline bases of one grid shared by all inputs (one learnable activation
phi_i = sum_k v[i, k] B_k per *output*). With ``use_lambda=True`` the spline sum becomes
``sum_j lambda_j B_k(x_j)`` (Eq. 6's lambda_j; ablation row 12). With ``grad_free=True`` (Sec. 3.2)
the bases are constants for autograd: v still gets its exact gradient (Eq. 9), x gets only the
silu-path gradient G_L of Eq. 11.

A KAonv layer applies one KA layer to every receptive field of a convolution (zero padding included).
Two implementations with identical parameters and state_dict:

- ``reference``: literally that: unfold every receptive field and apply the KA layer.
- ``fast``: the exact closed form. The silu path is ``conv(silu(x), u)``; the spline path needs only
  ``P_k(p) = sum_{j in field(p)} B_k(x_j)``: the per-group channel sums of the bases, window-summed with the
  conv's stride and dilation (padded zeros contribute B(0)), then a 1x1 map by v. silu(x) and P come from
  one fused pass over x; groups with one output (depthwise) window-sum their one activation map instead.
  Custom autograd functions keep the input for backward (as ``nn.Conv2d`` does) and recompute that pass in
  backward; wide layers also keep P (at most a quarter of the input's size) and skip it. The autograd functions
  are in ka_autograd.py, the literal grouped KA layer (reference KAonv, lambda) in ka_grouped.py.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn as nn

from .common import (ConvGeometry, IntOrTuple, SplineGridAttributes, apply_in_amp_dtype, check_chunk,
                     init_ka_parameters, ntuple, unfold_fields)
from .ka_autograd import KAConvFunction, KAConvLambdaFunction, KALinearFunction
from .ka_grouped import ka_grouped
from .splines import SplineGrid
from ..paper import GRID_RANGE, GRID_SIZE, SPLINE_ORDER

__all__ = ["KALinear", "KAConv2d", "KAConv3d"]


class KALinear(SplineGridAttributes, nn.Module):
    """KA layer: SaKAN with Grad-Free Spline, a drop-in for ``nn.Linear`` (paper Eq. 7).

    Parameters: ``u`` [out, in] (linear residual on silu), ``v`` [out, n_bases] (one shared activation per
    output), optional ``lam`` [in] (lambda_j, initialised to 1), optional ``bias`` [out].
    Count: in*out + n_bases*out (+ out with bias, + in with lambda).

    ``basis``: the family of the bases B_k (``"bspline"``, the paper's, default; ``"rbf"``, ``"chebyshev"``,
    ``"relu"``: splines.py), part of ``grid``; parameters and their count do not depend on it.

    ``bias`` defaults to False because Eq. 7 has none (on the grid range the bases sum to 1, so the spline
    path already provides a per-output offset of v[i] summed over inputs).

    Shapes: input ``[..., in_features]`` -> output ``[..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, grid_size: int = GRID_SIZE,
                 spline_order: int = SPLINE_ORDER, grid_range: tuple[float, float] = GRID_RANGE, basis: str = "bspline",
                 grad_free: bool = True,
                 use_lambda: bool = False, chunk_size: Optional[int] = None) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.grid = SplineGrid.from_args(grid_size, spline_order, grid_range, basis)
        self.grad_free = bool(grad_free)
        self.chunk_size = check_chunk(chunk_size)
        self.u = nn.Parameter(torch.empty(out_features, in_features))
        self.v = nn.Parameter(torch.empty(out_features, self.grid.n_bases))
        self.lam = nn.Parameter(torch.ones(in_features)) if use_lambda else None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        init_ka_parameters(self.u, self.v, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"KALinear expected last dimension {self.in_features}, got input of shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.lam is None:
            y = apply_in_amp_dtype(KALinearFunction, (x2, self.u, self.bias), (self.v,), self.grid, self.grad_free)
            return y.reshape(*lead, self.out_features)
        y = ka_grouped(x2.unsqueeze(1), self.u.unsqueeze(0), self.v.unsqueeze(0), self.lam.unsqueeze(0), self.grid,
                       self.grad_free, self.chunk_size)
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"grid_size={self.grid_size}, spline_order={self.spline_order}, "
                f"grid_range={self.grid_range}{self.basis_repr()}, "
                f"grad_free={self.grad_free}, use_lambda={self.lam is not None}"
                + (f", chunk_size={self.chunk_size}" if self.lam is not None else ""))


class _KAConvNd(SplineGridAttributes, nn.Module):
    nd: int = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
                 padding: Union[IntOrTuple, str] = 0, dilation: IntOrTuple = 1, groups: int = 1, bias: bool = False,
                 *, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER, grid_range: tuple[float, float] = GRID_RANGE,
                 basis: str = "bspline", grad_free: bool = True, use_lambda: bool = False, chunk_size: Optional[int] = None,
                 implementation: str = "fast") -> None:
        super().__init__()
        nd = self.nd
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")
        if implementation not in ("fast", "reference"):
            raise ValueError(f"implementation must be 'fast' or 'reference', got {implementation!r}")
        kernel = ntuple(kernel_size, nd, "kernel_size")
        stride_t = ntuple(stride, nd, "stride")
        dil = ntuple(dilation, nd, "dilation")
        if min(kernel) < 1 or min(stride_t) < 1 or min(dil) < 1:
            raise ValueError("kernel_size, stride and dilation must be >= 1")
        if isinstance(padding, str):
            if padding == "valid":
                pad = (0,) * nd
            elif padding == "same":
                if any(s != 1 for s in stride_t) or any(d * (k - 1) % 2 for d, k in zip(dil, kernel)):
                    raise ValueError("padding='same' needs stride 1 and an even dilation*(kernel_size-1)")
                pad = tuple(d * (k - 1) // 2 for d, k in zip(dil, kernel))
            else:
                raise ValueError(f"padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
        else:
            pad = ntuple(padding, nd, "padding")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.padding, self.dilation = kernel, stride_t, pad, dil
        self.grid = SplineGrid.from_args(grid_size, spline_order, grid_range, basis)
        self.grad_free = bool(grad_free)
        self.chunk_size = check_chunk(chunk_size)
        self.implementation = implementation
        self.u = nn.Parameter(torch.empty(out_channels, in_channels // groups, *kernel))
        self.v = nn.Parameter(torch.empty(out_channels, self.grid.n_bases))
        self.lam = nn.Parameter(torch.ones(in_channels, *kernel)) if use_lambda else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        init_ka_parameters(self.u, self.v, (in_channels // groups) * math.prod(kernel))

    def _geometry(self) -> ConvGeometry:
        return ConvGeometry(self.nd, self.in_channels, self.out_channels, self.groups, self.kernel_size,
                             self.stride, self.padding, self.dilation, self.grid, self.grad_free, self.chunk_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.nd + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input [B, {self.in_channels}, "
                             f"{', '.join('*' * self.nd)}], got {tuple(x.shape)}")
        geo = self._geometry()
        if self.implementation == "reference":
            return self._forward_reference(x, geo)
        if self.lam is None:
            return apply_in_amp_dtype(KAConvFunction, (x, self.u, self.bias), (self.v,), geo)
        return apply_in_amp_dtype(KAConvLambdaFunction, (x, self.u, self.bias), (self.v, self.lam), geo)

    def _forward_reference(self, x: torch.Tensor, geo: ConvGeometry) -> torch.Tensor:
        """Paper's description: unfold each receptive field (zero padding included), apply the KA layer."""
        b = x.shape[0]
        fields = unfold_fields(geo.pad(x), geo)  # [B, *sp_out, C, *k]
        sp_out = fields.shape[1: 1 + geo.nd]
        n_in = geo.cin_g * math.prod(geo.kernel)
        cols = fields.reshape(-1, self.groups, n_in)  # one KA layer per group, n_in inputs each
        u = self.u.reshape(self.groups, geo.cout_g, n_in)
        v = self.v.reshape(self.groups, geo.cout_g, -1)
        lam = None if self.lam is None else self.lam.reshape(self.groups, n_in)
        y = ka_grouped(cols, u, v, lam, geo.grid, geo.grad_free, geo.chunk_size, literal=True)  # [N, G, out_g]
        y = y.reshape(b, *sp_out, self.out_channels).movedim(-1, 1)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, *([1] * self.nd)).to(y.dtype)
        return y.contiguous()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, grid_size={self.grid_size}, spline_order={self.spline_order}, "
                f"grid_range={self.grid_range}{self.basis_repr()}, grad_free={self.grad_free}, "
                f"use_lambda={self.lam is not None}, "
                f"implementation={self.implementation!r}"
                + (f", chunk_size={self.chunk_size}" if self.implementation == "reference" or self.lam is not None
                   else ""))


class KAConv2d(_KAConvNd):
    """KAonv layer, a drop-in for ``nn.Conv2d`` (same shape rules; depthwise via ``groups``).

    Every receptive field (C_in/groups * k * k values) feeds one KA layer (Eq. 7) per group.
    Parameters: ``u`` [C_out, C_in/groups, kh, kw], ``v`` [C_out, n_bases], optional ``lam`` [C_in, kh, kw],
    optional ``bias`` [C_out] (default off, as Eq. 7).

    Shapes: ``[B, C_in, H, W] -> [B, C_out, H_out, W_out]`` with nn.Conv2d's H_out/W_out.
    ``implementation``: ``"fast"`` (closed form, default) or ``"reference"`` (explicit unfold).
    ``basis``: the family of the bases (see :class:`KALinear`).
    ``chunk_size``: input channels per chunk where bases are built per input (``implementation="reference"``,
    ``use_lambda``): bounds their transient memory. The fast path builds none and ignores it.
    """

    nd = 2


class KAConv3d(_KAConvNd):
    """KAonv layer for volumes, a drop-in for ``nn.Conv3d``; see :class:`KAConv2d`.

    Shapes: ``[B, C_in, D, H, W] -> [B, C_out, D_out, H_out, W_out]``.
    """

    nd = 3
