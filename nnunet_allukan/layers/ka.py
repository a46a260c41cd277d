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
  backward; wide layers also keep P (at most a quarter of the input's size) and skip it (``_KAConvFunction``).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import (ConvGeometry, IntOrTuple, SplineGridAttributes, init_ka_parameters, ntuple,
                     unfold_fields)
from .kernels import (basis_derivative_dot, basis_sum, differentiable_basis_sum, silu_and_activation_sums,
                      silu_and_activation_sums_backward, silu_and_basis_sums, silu_and_window_sums)
from .splines import SplineGrid, bspline_bases

__all__ = ["KALinear", "KAConv2d", "KAConv3d", "ka_grouped"]


def _check_chunk(chunk_size: Optional[int]) -> Optional[int]:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return int(chunk_size)


# ----------------------------------------------------------------------------------------------------
# KA layer (grouped functional form, shared by KALinear and the reference KAonv)
# ----------------------------------------------------------------------------------------------------
def ka_grouped(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, lam: Optional[torch.Tensor], grid: SplineGrid,
               grad_free: bool, chunk_size: Optional[int], literal: bool = False) -> torch.Tensor:
    """G independent KA layers (Eq. 7) applied to grouped inputs.

    Args:
        x: ``[N, G, n_in]``;  u: ``[G, n_out, n_in]``;  v: ``[G, n_out, n_bases]``;  lam: ``[G, n_in]`` or None.
        chunk_size: inputs per chunk when building the (grad-free) bases; bounds their transient memory.
        literal: build every basis B_k(x_j) as a tensor ``[N, G, n_in, n_bases]`` and sum it, as Eq. 7 is
            written (the reference KAonv); otherwise the fused per-basis reduction kernel is used.
    Returns:
        ``[N, G, n_out]``
    """
    n, g, n_in = x.shape
    y = torch.einsum("ngj,goj->ngo", F.silu(x), u)
    step = n_in if (chunk_size is None or not grad_free) else chunk_size
    s = None
    for j0 in range(0, n_in, step):
        xc = x[:, :, j0: j0 + step]
        if literal:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not grad_free):
                dense = bspline_bases(xc, grid.grid_size, grid.spline_order, (grid.lo, grid.hi))  # [N, G, cj, nb]
            part = dense.sum(2) if lam is None else torch.einsum("ngjk,gj->ngk", dense,
                                                                 lam[:, j0: j0 + step].to(dense.dtype))
        elif lam is None:
            part = basis_sum(xc, grid) if grad_free else differentiable_basis_sum(xc, grid)  # [N, G, nb]
        else:
            cj = xc.shape[2]
            flat = xc.reshape(n, g * cj, 1)
            dense = basis_sum(flat, grid) if grad_free else differentiable_basis_sum(flat, grid)  # [N, G*cj, nb]
            part = torch.einsum("ngjk,gj->ngk", dense.view(n, g, cj, -1), lam[:, j0: j0 + step].to(dense.dtype))
        s = part if s is None else s + part
    return y + torch.einsum("ngk,gok->ngo", s.to(y.dtype), v.to(y.dtype))


class _KALinearFunction(torch.autograd.Function):
    """KA layer without lambda as one GEMM: ``y = [silu(x), S(x)] @ [u, v]^T`` with ``S_k = sum_j B_k(x_j)``
    (Eq. 7). Saves only (x, u, v), as ``nn.Linear`` saves (x, w); the augmented input is recomputed in backward."""

    @staticmethod
    def forward(ctx, x, u, bias, v, grid: SplineGrid, grad_free: bool):
        z = silu_and_basis_sums(x.unsqueeze(1), grid, False).squeeze(1)  # [N, in + nb]
        y = F.linear(z, torch.cat([u, v.to(u.dtype)], dim=1), bias)
        ctx.grid, ctx.grad_free = grid, grad_free
        ctx.save_for_backward(x, u, v)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, u, v = ctx.saved_tensors
        need_x, need_u, need_bias, need_v, _, _ = ctx.needs_input_grad
        n_in = x.shape[1]
        gy = gy.contiguous()
        grad_x = grad_u = grad_v = grad_bias = None
        if need_x:
            gz = gy @ torch.cat([u, v.to(u.dtype)], dim=1)  # [N, in + nb]
            grad_x = torch.ops.aten.silu_backward(gz[:, :n_in], x)
            if not ctx.grad_free:  # spline path: sum_k dL/dS_k B'_k(x_j)
                d = basis_derivative_dot(x.unsqueeze(1), gz[:, None, n_in:], ctx.grid).squeeze(1)
                grad_x = grad_x + d.to(grad_x.dtype)
        if need_u or need_v:
            z = silu_and_basis_sums(x.unsqueeze(1), ctx.grid, False).squeeze(1)
            if need_u:
                grad_u = gy.t() @ z[:, :n_in]
            if need_v:  # Eq. 9, summed over all N in float32 at least
                cdt = torch.promote_types(gy.dtype, torch.float32)
                grad_v = (gy.t().to(cdt) @ z[:, n_in:].to(cdt)).to(v.dtype)
        if need_bias:
            grad_bias = gy.sum(0)
        return grad_x, grad_u, grad_bias, grad_v, None, None


class KALinear(SplineGridAttributes, nn.Module):
    """KA layer: SaKAN with Grad-Free Spline, a drop-in for ``nn.Linear`` (paper Eq. 7).

    Parameters: ``u`` [out, in] (linear residual on silu), ``v`` [out, n_bases] (one shared activation per
    output), optional ``lam`` [in] (lambda_j, initialised to 1), optional ``bias`` [out].
    Count: in*out + n_bases*out (+ out with bias, + in with lambda).

    ``bias`` defaults to False because Eq. 7 has none (on the grid range the bases sum to 1, so the spline
    path already provides a per-output offset of v[i] summed over inputs).

    Shapes: input ``[..., in_features]`` -> output ``[..., out_features]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, grid_size: int = 5,
                 spline_order: int = 3, grid_range: tuple[float, float] = (-1.0, 1.0), grad_free: bool = True,
                 use_lambda: bool = False, chunk_size: Optional[int] = None) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.grid = SplineGrid.from_args(grid_size, spline_order, grid_range)
        self.grad_free = bool(grad_free)
        self.chunk_size = _check_chunk(chunk_size)
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
            y = _apply_in_amp_dtype(_KALinearFunction, (x2, self.u, self.bias), (self.v,), self.grid, self.grad_free)
            return y.reshape(*lead, self.out_features)
        y = ka_grouped(x2.unsqueeze(1), self.u.unsqueeze(0), self.v.unsqueeze(0), self.lam.unsqueeze(0), self.grid,
                       self.grad_free, self.chunk_size)
        y = y.reshape(*lead, self.out_features)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"grid_size={self.grid_size}, spline_order={self.spline_order}, grid_range={self.grid_range}, "
                f"grad_free={self.grad_free}, use_lambda={self.lam is not None}"
                + (f", chunk_size={self.chunk_size}" if self.lam is not None else ""))


# ----------------------------------------------------------------------------------------------------
# KAonv: shared geometry helpers
# ----------------------------------------------------------------------------------------------------
def _blocks(geo: ConvGeometry) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """Chunk plan over input channels, never crossing a group boundary inside one piece.

    Yields ``(g0, g1, pieces)``: groups g0..g1-1 handled together, ``pieces`` = absolute channel ranges.
    Several whole groups share one piece when they fit into chunk_size; a group wider than chunk_size is
    split into several pieces of that one group.
    """
    cg, chunk = geo.cin_g, geo.chunk_size
    if chunk is None or chunk >= geo.in_channels:
        yield 0, geo.groups, [(0, geo.in_channels)]
    elif chunk >= cg:
        ng = chunk // cg
        for g0 in range(0, geo.groups, ng):
            g1 = min(g0 + ng, geo.groups)
            yield g0, g1, [(g0 * cg, g1 * cg)]
    else:
        for g in range(geo.groups):
            yield g, g + 1, [(c0, min(c0 + chunk, (g + 1) * cg)) for c0 in range(g * cg, (g + 1) * cg, chunk)]


def _piece_lambda_window_sums(geo: ConvGeometry, x_pad: torch.Tensor, lam: torch.Tensor, c0: int, c1: int,
                              ng: int) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda-weighted window sums (Eq. 6's lambda_j) of channels c0..c1 (``ng`` partial groups), padded input.

    Returns ``(P [B, ng * nb, *sp_out], dense)`` with ``dense`` the bases ``[B*nb, cc, *sp_pad]`` (lambda's
    gradient needs them again).
    """
    b, sp, cc, nb = x_pad.shape[0], x_pad.shape[2:], c1 - c0, geo.grid.n_bases
    dense = basis_sum(x_pad[:, c0:c1].reshape(b, cc, 1, *sp), geo.grid)  # [B, cc, nb, *sp]
    dense = dense.transpose(1, 2).reshape(b * nb, cc, *sp)
    w = lam[c0:c1].to(dense.dtype).reshape(ng, cc // ng, *geo.kernel)
    p = geo.conv(dense, w, ng, geo.no_padding)  # [B*nb, ng, *sp_out]
    return p.reshape(b, nb, ng, *p.shape[2:]).transpose(1, 2).reshape(b, ng * nb, *p.shape[2:]), dense


class _KAConvFunction(torch.autograd.Function):
    """Fast KAonv (no lambda); saves (x, u, v), as a convolution saves (x, w), and P when it is small.

    Per group, the KA layer of a receptive field is (Eq. 7) ``sum_{c,tap} u[o,c,tap] silu(x_c) +
    sum_k v[o,k] P_k`` with the window sums ``P_k = sum_tap S_k`` of the channel sums ``S_k = sum_c B_k(x_c)``:
    a convolution of silu(x) plus ``v @ P``. One compiled pass over x gives silu(x) and P; ``v @ P`` is one
    batched GEMM accumulated into the convolution's output. Groups with one output (depthwise) need only the
    activation map ``Phi = sum_k v[o,k] S_k`` (one map instead of n_bases), window-summed by a depthwise
    convolution with weight 1. Padded zeros are KA inputs too and add ``C_g B(0)`` per tap: the kernels sum
    ``S - C_g B(0)`` (``Phi - C_g phi(0)``), for which zero padding is exact, and add ``n_taps C_g B(0)`` back
    to P (for Phi, ``n_taps C_g phi(0)`` to the output). Backward recomputes silu(x) and P (one pass over x; P is
    kept from forward instead when it is at most a quarter of x's size, ``_keeps_window_sums``): u's
    gradient and the silu path's x gradient G_L (Eq. 11) by ``convolution_backward``, v's exactly from P
    (Eq. 9), and, for ``grad_free=False``, the spline path's x gradient through the window sums' adjoint and B'.
    """

    @staticmethod
    def forward(ctx, x, u, bias, v, geo: ConvGeometry):
        b, sp, g, cg = x.shape[0], x.shape[2:], geo.groups, geo.cin_g
        kept_p = None
        if geo.one_output_per_group:
            silu, phi = silu_and_activation_sums(x.reshape(b, g, cg, *sp), v, geo.grid, any(geo.padding))
            y = geo.conv(silu.reshape(x.shape), u, g, geo.padding)
            y = y + _window_sums(geo, phi)
            offset = _padding_offset(geo, v)  # [C_out] or None: phi's padded taps
            if offset is not None:
                offset = offset.to(y.dtype)
                bias = offset if bias is None else bias + offset
        else:  # p counts the padded taps itself
            silu, p = silu_and_window_sums(x.reshape(b, g, cg, *sp), geo.grid, geo.kernel, geo.stride, geo.padding,
                                           geo.dilation)  # p: [B, G, nb, *sp_out]
            y = geo.conv(silu.reshape(x.shape), u, g, geo.padding).contiguous()
            del silu
            positions = math.prod(y.shape[2:])
            v_g = v.to(y.dtype).reshape(1, g, geo.cout_g, -1).expand(b, -1, -1, -1).reshape(b * g, geo.cout_g, -1)
            # y += v P (Eq. 7's spline path), one batched GEMM into y
            y.view(b * g, geo.cout_g, positions).baddbmm_(v_g, p.reshape(b * g, -1, positions).to(y.dtype))
            if ctx.needs_input_grad[3] and _keeps_window_sums(p, x):
                kept_p = p
        if bias is not None:
            y += bias.reshape(1, -1, *([1] * geo.nd))
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, u, v, *([] if kept_p is None else [kept_p]))
        return y

    @staticmethod
    def backward(ctx, gy):
        x, u, v, *kept = ctx.saved_tensors  # kept: [P] when forward kept the window sums
        geo: ConvGeometry = ctx.geo
        need_x, need_u, need_bias, need_v, _ = ctx.needs_input_grad
        cdt = torch.promote_types(gy.dtype, torch.float32)  # v's gradient sums everything: float32 at least
        nd, nb, cg, g, grid = geo.nd, geo.grid.n_bases, geo.cin_g, geo.groups, geo.grid
        b, sp = x.shape[0], x.shape[2:]
        xg = x.reshape(b, g, cg, *sp)
        gy = gy.contiguous()
        grad_x = grad_u = grad_v = grad_bias = None
        padded_phi = geo.one_output_per_group and any(geo.padding)
        gy_sum = gy.sum(dim=[0] + list(range(2, gy.dim())), dtype=cdt) if need_bias or need_v and padded_phi \
            else None
        if geo.one_output_per_group:
            gin = None
            if need_x or need_u:
                gin, grad_u, _ = torch.ops.aten.convolution_backward(
                    gy, F.silu(x), u, None, list(geo.stride), list(geo.padding), list(geo.dilation), False,
                    [0] * nd, g, [need_x, need_u, False])
            if need_x or need_v:
                g_phi = _window_sums_adjoint(geo, gy, sp)  # dL/dPhi
                grad_x, grad_v = silu_and_activation_sums_backward(
                    xg, torch.zeros_like(x) if gin is None else gin, g_phi, v, grid, any(geo.padding),
                    not geo.grad_free)
                grad_x = grad_x.reshape(x.shape) if need_x else None
        else:
            if kept:  # P kept by forward: only silu(x) is left to recompute, an elementwise pass
                p, silu = kept[0], None
            else:
                silu, p = silu_and_window_sums(xg, grid, geo.kernel, geo.stride, geo.padding, geo.dilation)
            positions = math.prod(gy.shape[2:])
            gy_g = gy.view(b * g, geo.cout_g, positions)
            if need_v:  # Eq. 9: dL/dv = sum over samples and positions of dL/dy P^T
                p = p.reshape(b * g, nb, positions).to(cdt)
                grad_v = torch.bmm(gy_g.to(cdt), p.transpose(1, 2)).reshape(b, g * geo.cout_g, nb).sum(0)
            del p
            # u's gradient, then x's, in two calls: silu(x) is freed before the input gradient is allocated, so
            # backward holds no more than a plain convolution's backward (a higher peak makes the allocator hand
            # memory back and fault it in again at every step).
            conv_args = (list(geo.stride), list(geo.padding), list(geo.dilation), False, [0] * nd, g)
            if need_u:
                silu = F.silu(x) if silu is None else silu.reshape(x.shape)
                grad_u = torch.ops.aten.convolution_backward(gy, silu, u, None, *conv_args, [False, True, False])[1]
            del silu
            if need_x:
                gin = torch.ops.aten.convolution_backward(gy, x, u, None, *conv_args, [True, False, False])[0]
                grad_x = torch.ops.aten.silu_backward.grad_input(gin, x, grad_input=gin)  # G_L (Eq. 11), in place
                if not geo.grad_free:  # spline path: adjoint window sums of dL/dP = v^T dL/dy, then B'
                    v_g = v.to(gy.dtype).reshape(1, g, geo.cout_g, nb).expand(b, -1, -1, -1).reshape(b * g, geo.cout_g, nb)
                    g_p = torch.bmm(v_g.transpose(1, 2), gy_g).reshape(b, g * nb, *gy.shape[2:])
                    ones = g_p.new_ones((g * nb, 1) + geo.kernel)
                    h = geo.conv_input_grad((b, g * nb) + tuple(sp), ones, g_p, g * nb, geo.padding)
                    grad_x = grad_x + basis_derivative_dot(xg, h.reshape(b, g, nb, *sp), grid).reshape(
                        x.shape).to(grad_x.dtype)
        if need_v:
            if padded_phi:  # d(padding offset)/dv
                grad_v = grad_v + _padding_offset_grad(geo, gy_sum)
            grad_v = grad_v.reshape_as(v).to(v.dtype)
        if need_bias and ctx.has_bias:
            grad_bias = gy_sum.to(gy.dtype)
        return grad_x, grad_u, grad_bias, grad_v, None


# Forward keeps the window sums P for backward when they are at most this fraction of the input's size
# (n_bases / C_g of it at stride 1: C_g >= 32 for the cubic grid's 8 bases); backward then need not run
# the basis kernel again. Narrower layers recompute P: keeping it would more than add a quarter to what the layer
# saves (for C_g < 8, more than the input itself).
_KEEP_WINDOW_SUMS_MAX_FRACTION = 0.25


def _keeps_window_sums(p: torch.Tensor, x: torch.Tensor) -> bool:
    return p.numel() * p.element_size() <= _KEEP_WINDOW_SUMS_MAX_FRACTION * x.numel() * x.element_size()


def _is_pointwise(geo: ConvGeometry) -> bool:
    return all(k == 1 for k in geo.kernel) and all(s == 1 for s in geo.stride) and not any(geo.padding)


def _window_sums(geo: ConvGeometry, phi: torch.Tensor) -> torch.Tensor:
    """Sums of the activation map over every receptive field: ``[B, G, *sp] -> [B, G, *sp_out]``."""
    if _is_pointwise(geo):
        return phi
    return geo.conv(phi, phi.new_ones((phi.shape[1], 1) + geo.kernel), phi.shape[1], geo.padding)


def _window_sums_adjoint(geo: ConvGeometry, gy: torch.Tensor, sp_in: Sequence[int]) -> torch.Tensor:
    if _is_pointwise(geo):
        return gy
    ones = gy.new_ones((gy.shape[1], 1) + geo.kernel)
    return geo.conv_input_grad((gy.shape[0], gy.shape[1]) + tuple(sp_in), ones, gy, gy.shape[1], geo.padding)


def _padding_offset(geo: ConvGeometry, v: torch.Tensor) -> Optional[torch.Tensor]:
    """``n_taps * C_g * sum_k v[o, k] B_k(0)`` per output: what the augmented input's shift by C_g B(0) removed."""
    if not any(geo.padding):
        return None
    b0 = torch.tensor(geo.grid.zero_bases, dtype=v.dtype, device=v.device)
    return (math.prod(geo.kernel) * geo.cin_g) * (v @ b0)


def _padding_offset_grad(geo: ConvGeometry, gy_sum: torch.Tensor) -> torch.Tensor:
    b0 = torch.tensor(geo.grid.zero_bases, dtype=gy_sum.dtype, device=gy_sum.device)
    return (math.prod(geo.kernel) * geo.cin_g) * gy_sum[:, None] * b0


class _KAConvLambdaFunction(torch.autograd.Function):
    """Fast KAonv with Eq. 6's lambda_j (ablation row 12): the window sums weight every (channel, tap) by
    lambda, so the bases are summed by a grouped convolution with weights lambda on an explicitly padded input,
    block by block (``chunk_size`` channels). Saves only (x, u, v, lam)."""

    @staticmethod
    def forward(ctx, x, u, bias, v, lam, geo: ConvGeometry):
        nd, nb = geo.nd, geo.grid.n_bases
        x_pad = geo.pad(x)
        y = geo.conv(F.silu(x_pad), u, geo.groups, geo.no_padding).contiguous()
        v_g = v.to(y.dtype).reshape(geo.groups, geo.cout_g, nb)
        y_g = y.view(y.shape[0], geo.groups, geo.cout_g, -1)  # [B, G, out_g, positions]
        for g0, g1, pieces in _blocks(geo):
            p = sum(_piece_lambda_window_sums(geo, x_pad, lam, c0, c1, g1 - g0)[0] for c0, c1 in pieces)
            p = p.to(y.dtype).reshape(y.shape[0], g1 - g0, nb, -1)
            y_g[:, g0:g1] += torch.matmul(v_g[g0:g1], p)  # y += v @ P: one GEMM broadcast over samples/groups
        if bias is not None:
            y += bias.reshape(1, -1, *([1] * nd))
        ctx.geo = geo
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, u, v, lam)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, u, v, lam = ctx.saved_tensors
        geo: ConvGeometry = ctx.geo
        need_x, need_u, need_bias, need_v, need_lam, _ = ctx.needs_input_grad
        cdt = torch.promote_types(gy.dtype, torch.float32)  # v's and lambda's gradients sum everything
        nd, nb = geo.nd, geo.grid.n_bases
        gy = gy.contiguous()
        x_pad = geo.pad(x)
        b = x.shape[0]
        sp_pad = x_pad.shape[2:]
        grad_x = grad_u = grad_v = grad_lam = grad_bias = None

        # silu path: silu(x) is recomputed here instead of being stored by forward.
        grad_pad = None
        if need_x or need_u:
            xs = F.silu(x_pad)
            gin, gw, _ = torch.ops.aten.convolution_backward(
                gy, xs, u, None, list(geo.stride), list(geo.no_padding), list(geo.dilation), False, [0] * nd,
                geo.groups, [need_x, need_u, False])
            del xs
            if need_u:
                grad_u = gw
            if need_x:
                grad_pad = torch.ops.aten.silu_backward(gin, x_pad)
            del gin

        # spline path, block by block: exact v and lambda gradients; the B'-path only without grad_free.
        spline_x = need_x and not geo.grad_free
        if need_v or need_lam or spline_x:
            v_g = v.reshape(geo.groups, geo.cout_g, nb)
            gy_g = gy.view(b, geo.groups, geo.cout_g, -1)  # [B, G, out_g, positions]
            grad_v = torch.empty(v_g.shape, dtype=cdt, device=v.device) if need_v else None
            grad_lam = torch.empty_like(lam) if need_lam else None
            for g0, g1, pieces in _blocks(geo):
                ng = g1 - g0
                ngp = ng if len(pieces) == 1 else 1
                g_s = torch.matmul(v_g[g0:g1].transpose(1, 2).to(gy.dtype), gy_g[:, g0:g1])  # dL/dP = v^T dL/dy
                g_s = g_s.reshape(b, ng * nb, *gy.shape[2:])
                p = None
                for c0, c1 in pieces:
                    cc = c1 - c0
                    part, dense = _piece_lambda_window_sums(geo, x_pad, lam, c0, c1, ngp)
                    if need_v:
                        p = part if p is None else p + part
                    if need_lam or spline_x:
                        g_flat = g_s.reshape(b, ngp, nb, *g_s.shape[2:]).transpose(1, 2)
                        g_flat = g_flat.reshape(b * nb, ngp, *g_s.shape[2:]).to(dense.dtype)
                        if need_lam:
                            gl = geo.conv_weight_grad(dense, (ngp, cc // ngp) + geo.kernel, g_flat, ngp,
                                                      geo.no_padding)
                            grad_lam[c0:c1] = gl.reshape(cc, *geo.kernel).to(lam.dtype)
                        if spline_x:
                            w = lam[c0:c1].to(dense.dtype).reshape(ngp, cc // ngp, *geo.kernel)
                            h = geo.conv_input_grad((b * nb, cc) + tuple(sp_pad), w, g_flat, ngp, geo.no_padding)
                            h = h.reshape(b, nb, cc, *sp_pad).transpose(1, 2)  # [B, cc, nb, *sp]
                            d = basis_derivative_dot(x_pad[:, c0:c1].reshape(b, cc, 1, *sp_pad), h, geo.grid)
                            grad_pad[:, c0:c1] += d.reshape(b, cc, *sp_pad).to(grad_pad.dtype)
                if need_v:  # dL/dv = sum over samples and positions of dL/dy P^T (Eq. 9)
                    p = p.to(cdt).reshape(b, ng, nb, -1)
                    grad_v[g0:g1] = torch.matmul(gy_g[:, g0:g1].to(cdt), p.transpose(-1, -2)).sum(0)
            if need_v:
                grad_v = grad_v.reshape_as(v).to(v.dtype)

        if need_x:
            grad_x = geo.crop(grad_pad).to(x.dtype)
        if need_bias and ctx.has_bias:
            grad_bias = gy.sum(dim=[0] + list(range(2, gy.dim())))
        return grad_x, grad_u, grad_bias, grad_v, grad_lam, None


def _apply_in_amp_dtype(function, tensors: tuple, spline_weights: tuple, *constants):
    """``function.apply(*tensors, *spline_weights, *constants)`` with ``tensors`` (x first; None allowed) in the
    dtype the function runs in, as ``torch.amp.custom_fwd(cast_inputs=)`` does, for any device type: under
    autocast, the autocast dtype with autocast off inside (the functions call their convolutions and GEMMs
    themselves, so forward and backward run in that one dtype); otherwise x's dtype. ``spline_weights`` (v,
    lambda) keep their own dtype: their gradients sum over every position and input of the layer and are
    computed in float32 for half inputs, where float16 would overflow (splines._compute_dtype)."""
    x = tensors[0]
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        with torch.autocast(dev, enabled=False):
            return function.apply(*(None if t is None else t.to(dt) for t in tensors), *spline_weights, *constants)
    return function.apply(*(None if t is None else t.to(x.dtype) for t in tensors), *spline_weights, *constants)


class _KAConvNd(SplineGridAttributes, nn.Module):
    nd: int = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
                 padding: Union[IntOrTuple, str] = 0, dilation: IntOrTuple = 1, groups: int = 1, bias: bool = False,
                 *, grid_size: int = 5, spline_order: int = 3, grid_range: tuple[float, float] = (-1.0, 1.0),
                 grad_free: bool = True, use_lambda: bool = False, chunk_size: Optional[int] = None,
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
        self.grid = SplineGrid.from_args(grid_size, spline_order, grid_range)
        self.grad_free = bool(grad_free)
        self.chunk_size = _check_chunk(chunk_size)
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
            return _apply_in_amp_dtype(_KAConvFunction, (x, self.u, self.bias), (self.v,), geo)
        return _apply_in_amp_dtype(_KAConvLambdaFunction, (x, self.u, self.bias), (self.v, self.lam), geo)

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
                f"grid_range={self.grid_range}, grad_free={self.grad_free}, use_lambda={self.lam is not None}, "
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
    ``chunk_size``: input channels per chunk where bases are built per input (``implementation="reference"``,
    ``use_lambda``): bounds their transient memory. The fast path builds none and ignores it.
    """

    nd = 2


class KAConv3d(_KAConvNd):
    """KAonv layer for volumes, a drop-in for ``nn.Conv3d``; see :class:`KAConv2d`.

    Shapes: ``[B, C_in, D, H, W] -> [B, C_out, D_out, H_out, W_out]``.
    """

    nd = 3
