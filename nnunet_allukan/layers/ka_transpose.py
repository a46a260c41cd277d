"""KA transposed convolution: the KA counterpart of nnU-Net's ``nn.ConvTranspose2d/3d`` upsampling.

nnU-Net's decoders upsample with transposed convolutions whose stride equals their kernel. Then every output voxel
sees exactly one input voxel: output block ``p * s + t`` (offset ``t`` in the kernel) is a function of the C_in
values ``x[:, p]`` only, so the layer is one linear map ``C_in -> C_out * prod(kernel)`` per input voxel followed by
a rearrangement into the finer grid. The KA version replaces that linear map by a KA layer (paper Eq. 7) with
n = C_in inputs and m = C_out * prod(kernel) outputs::

    y[o, p*s + t] = sum_c u[c, o, t] silu(x[c, p]) + sum_k v[o, t, k] sum_c B_k(x[c, p])        (+ bias_o)

Closed form (``implementation="fast"``): the silu path is ``conv_transpose(silu(x), u)`` and the spline path is
``conv_transpose(S, v)`` with ``S_k(p) = sum_c B_k(x[c, p])``, the 8 basis sums of one voxel: no unfolding, no
per-output spline tensor. ``implementation="reference"`` applies the KA layer to every voxel literally.

``basis`` chooses the family of the bases B_k as for :class:`~nnunet_allukan.layers.ka.KALinear`.
Only the nnU-Net case is supported: stride = kernel, no padding, no output padding, dilation 1, groups 1.
Parameters: ``u`` ``[C_in, C_out, *kernel]`` (``nn.ConvTranspose`` weight layout), ``v`` ``[C_out, *kernel, n_bases]``,
optional ``bias`` ``[C_out]``. Count: C_in*C_out*K + C_out*K*n_bases (+ C_out), K = prod(kernel).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import IntOrTuple, SplineGridAttributes, init_ka_parameters, ntuple
from .ka_grouped import ka_grouped
from .kernels import basis_sum, differentiable_basis_sum
from .splines import SplineGrid
from ..paper import GRID_RANGE, GRID_SIZE, SPLINE_ORDER

__all__ = ["KAConvTranspose2d", "KAConvTranspose3d"]


class _KAConvTransposeNd(SplineGridAttributes, nn.Module):
    nd: int = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
                 stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                 groups: int = 1, bias: bool = False, dilation: IntOrTuple = 1, *, grid_size: int = GRID_SIZE,
                 spline_order: int = SPLINE_ORDER, grid_range: tuple[float, float] = GRID_RANGE, basis: str = "bspline",
                 grad_free: bool = True,
                 implementation: str = "fast") -> None:
        super().__init__()
        nd, name = self.nd, type(self).__name__
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        kernel = ntuple(kernel_size, nd, "kernel_size")
        stride_t = kernel if stride is None else ntuple(stride, nd, "stride")
        if min(kernel) < 1:
            raise ValueError("kernel_size must be >= 1")
        # The closed form rests on each output voxel seeing exactly one input voxel.
        if (stride_t != kernel or any(ntuple(padding, nd, "padding")) or any(ntuple(output_padding, nd, "output_padding"))
                or ntuple(dilation, nd, "dilation") != (1,) * nd or groups != 1):
            raise ValueError(f"{name} supports only stride == kernel_size, padding 0, output_padding 0, dilation 1 "
                             f"and groups 1 (nnU-Net's upsampling); got kernel_size={kernel}, stride={stride_t}, "
                             f"padding={padding}, output_padding={output_padding}, dilation={dilation}, groups={groups}")
        if implementation not in ("fast", "reference"):
            raise ValueError(f"implementation must be 'fast' or 'reference', got {implementation!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = self.stride = kernel
        self.grid = SplineGrid.from_args(grid_size, spline_order, grid_range, basis)
        self.grad_free = bool(grad_free)
        self.implementation = implementation
        self.u = nn.Parameter(torch.empty(in_channels, out_channels, *kernel))
        self.v = nn.Parameter(torch.empty(out_channels, *kernel, self.grid.n_bases))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As :class:`KAConv2d`, for a KA layer with fan-in C_in (each output sees the C_in values of one voxel)."""
        # u's fan-in is C_in; kaiming on the [C_out*K, C_in] view of the KA layer's u gives exactly that.
        u_view = torch.empty(self.out_channels * math.prod(self.kernel_size), self.in_channels)
        v_view = torch.empty(self.out_channels * math.prod(self.kernel_size), self.grid.n_bases)
        init_ka_parameters(u_view, v_view, self.in_channels)
        with torch.no_grad():
            self.u.copy_(self._u_from_layer(u_view))
            self.v.copy_(v_view.reshape(self.v.shape))
            if self.bias is not None:
                self.bias.zero_()

    def _u_from_layer(self, u_layer: torch.Tensor) -> torch.Tensor:
        """KA-layer weight ``[C_out*K, C_in]`` (rows ordered (o, t)) -> ``[C_in, C_out, *kernel]``."""
        return u_layer.t().reshape(self.in_channels, self.out_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.nd + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input [B, {self.in_channels}, "
                             f"{', '.join('*' * self.nd)}], got {tuple(x.shape)}")
        if self.implementation == "reference":
            return self._forward_reference(x)
        conv_t = F.conv_transpose2d if self.nd == 2 else F.conv_transpose3d
        u = self.u.to(x.dtype)
        y = conv_t(F.silu(x), u, None, self.stride)
        bases = basis_sum if self.grad_free else differentiable_basis_sum
        sums = bases(x.unsqueeze(1), self.grid).squeeze(1)  # S_k per voxel: [B, n_bases, *sp], compute dtype
        v = self.v.movedim(-1, 0)  # [n_bases, C_out, *kernel]: S as the input of a transposed conv
        if sums.dtype == y.dtype:
            y = y + conv_t(sums, v.to(y.dtype), None, self.stride)
        else:  # half precision: S is large and v cancels most of it: summed in float32, rounded once into y
            with torch.autocast(x.device.type, enabled=False):
                y = y.add_(conv_t(sums, v.to(sums.dtype), None, self.stride))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).reshape(1, -1, *([1] * self.nd))  # under autocast: its half type
        return y

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """One KA layer (Eq. 7, bases built literally) per input voxel, outputs scattered onto the finer grid."""
        b, sp, nd, k = x.shape[0], x.shape[2:], self.nd, self.kernel_size
        cols = x.movedim(1, -1).reshape(-1, 1, self.in_channels)  # [N voxels, 1 group, C_in]
        n_out = self.out_channels * math.prod(k)
        u = self.u.reshape(self.in_channels, n_out).t().unsqueeze(0)  # [1, C_out*K, C_in], rows ordered (o, t)
        v = self.v.reshape(n_out, -1).unsqueeze(0)
        y = ka_grouped(cols, u, v, None, self.grid, self.grad_free, None, literal=True)  # [N, 1, C_out*K]
        y = y.reshape(b, *sp, self.out_channels, *k)
        # [B, s_1..s_nd, C, k_1..k_nd] -> [B, C, s_1, k_1, ..., s_nd, k_nd] -> [B, C, s_1*k_1, ...]
        perm = [0, 1 + nd] + [a for d in range(nd) for a in (1 + d, 2 + nd + d)]
        y = y.permute(perm).reshape(b, self.out_channels, *(s * kk for s, kk in zip(sp, k)))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).reshape(1, -1, *([1] * nd))
        return y.contiguous()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"bias={self.bias is not None}, grid_size={self.grid_size}, spline_order={self.spline_order}, "
                f"grid_range={self.grid_range}{self.basis_repr()}, grad_free={self.grad_free}, "
                f"implementation={self.implementation!r}")


class KAConvTranspose2d(_KAConvTransposeNd):
    """KA upsampling, a drop-in for ``nn.ConvTranspose2d`` with stride = kernel (see the module docstring).

    Shapes: ``[B, C_in, H, W] -> [B, C_out, H*kh, W*kw]``.
    """

    nd = 2


class KAConvTranspose3d(_KAConvTransposeNd):
    """KA upsampling, a drop-in for ``nn.ConvTranspose3d`` with stride = kernel (see the module docstring).

    Shapes: ``[B, C_in, D, H, W] -> [B, C_out, D*kd, H*kh, W*kw]``.
    """

    nd = 3
