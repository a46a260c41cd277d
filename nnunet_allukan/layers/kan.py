"""Vanilla KAN layers (one learnable activation per edge), as used by U-KAN and the ablation rows 9/10.

``KANLinear`` follows the efficient-KAN layer of the reference U-KAN code::

    y_i = sum_j W_b[i, j] silu(x_j) + sum_j s[i, j] sum_k W_s[i, j, k] B_k(x_j)

(base weight W_b, spline weight W_s, per-edge spline scaler s: ``(2 + n_bases) * in * out`` parameters, i.e.
10 * in * out for the default grid). The grid is fixed (no grid updates: U-KAN never calls them in training).

``KANConv2d`` is the vanilla-KAN KAonv: every receptive field feeds a KANLinear. Its exact fast form is a
convolution of silu(x_pad) plus a convolution of the basis-expanded padded input (C_in * n_bases channels).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import ConvGeometry, IntOrTuple, ntuple, unfold_fields
from .kernels import basis_sum, differentiable_basis_sum
from .splines import SplineGrid
from ..paper import GRID_RANGE, GRID_SIZE, SPLINE_ORDER

__all__ = ["KANLinear", "KANConv2d"]


def _expanded_bases(x: torch.Tensor, grid: SplineGrid, grad_free: bool) -> torch.Tensor:
    """``[B, C, *sp] -> [B, C, n_bases, *sp]`` (no autograd when grad_free)."""
    xs = x.unsqueeze(2)
    return basis_sum(xs, grid) if grad_free else differentiable_basis_sum(xs, grid)


def _init_kan_parameters(base: torch.Tensor, spline: torch.Tensor, scaler: torch.Tensor, grid_size: int) -> None:
    """As efficient-KAN: kaiming-uniform base and scaler, small spline coefficients (noise 0.1 / grid_size)."""
    nn.init.kaiming_uniform_(base, a=math.sqrt(5))
    nn.init.uniform_(spline, -0.05 / grid_size, 0.05 / grid_size)
    nn.init.kaiming_uniform_(scaler.view(scaler.shape[0], -1), a=math.sqrt(5))


class KANLinear(nn.Module):
    """Vanilla KAN layer (per-edge splines), a drop-in for ``nn.Linear``.

    Parameters: ``base_weight`` [out, in], ``spline_weight`` [out, in, n_bases], ``spline_scaler`` [out, in].
    Shapes: ``[..., in_features] -> [..., out_features]``.
    ``grad_free=True`` detaches the bases (ablation row 7); default False as in U-KAN.
    """

    def __init__(self, in_features: int, out_features: int, *, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
                 grid_range: tuple[float, float] = GRID_RANGE, grad_free: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.grid = SplineGrid.from_args(grid_size, spline_order, grid_range)
        self.grad_free = bool(grad_free)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, self.grid.n_bases))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        _init_kan_parameters(self.base_weight, self.spline_weight, self.spline_scaler, self.grid.grid_size)

    def scaled_spline_weight(self) -> torch.Tensor:
        return self.spline_weight * self.spline_scaler.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"KANLinear expected last dimension {self.in_features}, got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        bases = _expanded_bases(x2, self.grid, self.grad_free).to(x2.dtype)  # [N, in, nb]
        y = F.linear(F.silu(x2), self.base_weight) + F.linear(bases.flatten(1), self.scaled_spline_weight().flatten(1))
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid.grid_size}, "
                f"spline_order={self.grid.spline_order}, grad_free={self.grad_free}")


class KANConv2d(nn.Module):
    """Vanilla-KAN KAonv (per-input spline weights), a drop-in for ``nn.Conv2d``.

    Parameters: ``base_weight`` [C_out, C_in/g, kh, kw], ``spline_weight`` [C_out, C_in/g, kh, kw, n_bases],
    ``spline_scaler`` [C_out, C_in/g, kh, kw]: ``(2 + n_bases)`` per edge, like :class:`KANLinear`.
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H_out, W_out]``.
    ``implementation``: ``"fast"`` (convolution over the basis-expanded input) or ``"reference"`` (unfold).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1, *, grid_size: int = GRID_SIZE,
                 spline_order: int = SPLINE_ORDER, grid_range: tuple[float, float] = GRID_RANGE, grad_free: bool = False,
                 implementation: str = "fast") -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by "
                             f"groups ({groups})")
        if implementation not in ("fast", "reference"):
            raise ValueError(f"implementation must be 'fast' or 'reference', got {implementation!r}")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = ntuple(kernel_size, 2, "kernel_size")
        self.stride = ntuple(stride, 2, "stride")
        self.padding = ntuple(padding, 2, "padding")
        self.dilation = ntuple(dilation, 2, "dilation")
        self.grid = SplineGrid.from_args(grid_size, spline_order, grid_range)
        self.grad_free = bool(grad_free)
        self.implementation = implementation
        cg = in_channels // groups
        self.base_weight = nn.Parameter(torch.empty(out_channels, cg, *self.kernel_size))
        self.spline_weight = nn.Parameter(torch.empty(out_channels, cg, *self.kernel_size, self.grid.n_bases))
        self.spline_scaler = nn.Parameter(torch.empty(out_channels, cg, *self.kernel_size))
        _init_kan_parameters(self.base_weight, self.spline_weight, self.spline_scaler, self.grid.grid_size)

    def _geometry(self) -> ConvGeometry:
        return ConvGeometry(2, self.in_channels, self.out_channels, self.groups, self.kernel_size, self.stride,
                             self.padding, self.dilation, self.grid, self.grad_free, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"KANConv2d expects input [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        geo = self._geometry()
        x_pad = geo.pad(x)
        w_s = self.spline_weight * self.spline_scaler.unsqueeze(-1)  # [C_out, C_in/g, kh, kw, nb]
        if self.implementation == "reference":
            cols = unfold_fields(x_pad, geo)  # [B, Ho, Wo, C_in, kh, kw]
            b, ho, wo = cols.shape[:3]
            cols = cols.reshape(b, ho, wo, self.groups, -1)  # [..., G, n_in]
            og = self.out_channels // self.groups
            bases = _expanded_bases(cols.reshape(-1, cols.shape[-1]), self.grid, self.grad_free)
            bases = bases.reshape(b, ho, wo, self.groups, cols.shape[-1], -1).to(x.dtype)
            y = torch.einsum("bhwgj,goj->bhwgo", F.silu(cols), self.base_weight.reshape(self.groups, og, -1))
            y = y + torch.einsum("bhwgjk,gojk->bhwgo", bases,
                                 w_s.reshape(self.groups, og, -1, self.grid.n_bases))
            return y.reshape(b, ho, wo, self.out_channels).permute(0, 3, 1, 2).contiguous()
        y = geo.conv(F.silu(x_pad), self.base_weight, self.groups, geo.no_padding)
        bases = _expanded_bases(x_pad, self.grid, self.grad_free).to(x.dtype)  # [B, C_in, nb, Hp, Wp]
        w = w_s.movedim(-1, 2).reshape(self.out_channels, -1, *self.kernel_size)  # channel-major (c, k) order
        return y + geo.conv(bases.flatten(1, 2), w, self.groups, geo.no_padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, grad_free={self.grad_free}, "
                f"implementation={self.implementation!r}")
