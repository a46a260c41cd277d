"""The closed form's autograd functions: KALinear without lambda (one GEMM), the fast KAonv (window sums), the fast
KAonv with lambda. Each saves what the layer it replaces saves (the input and the weights) and recomputes its
basis pass in backward; see ka.py for the closed form.

Half precision (autocast): the spline path's sums (KAonv's window sums P, KALinear's channel sums S, the depthwise
activation sums and their padding offset) come from the kernels in float32 and are weighted by v in float32, the
result rounded once into the half-precision output. Inside the grid the bases of each input sum to 1, so P_k is of
the order of the taps times the channels, and v's entries of both signs cancel most of it: P rounded to half before
``v P`` would carry an absolute error of P's size times half's rounding, which the cancellation leaves in place.
The silu path's convolution or GEMM runs in the half type, as ``nn.Conv2d`` / ``nn.Linear`` do."""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from .common import ConvGeometry
from .kernels import (basis_derivative_dot, basis_sum, silu_and_activation_sums, silu_and_activation_sums_backward,
                      silu_and_basis_sums, silu_and_window_sums)

__all__ = ["KALinearFunction", "KAConvFunction", "KAConvLambdaFunction", "KEEP_WINDOW_SUMS_MAX_FRACTION"]


class KALinearFunction(torch.autograd.Function):
    """KA layer without lambda as one GEMM: ``y = [silu(x), S(x)] @ [u, v]^T`` with ``S_k = sum_j B_k(x_j)``
    (Eq. 7). Saves only (x, u, v), as ``nn.Linear`` saves (x, w); the augmented input is recomputed in backward."""

    @staticmethod
    def forward(ctx, x, u, bias, v, grid: SplineGrid, grad_free: bool):
        z = silu_and_basis_sums(x.unsqueeze(1), grid, False).squeeze(1)  # [N, in + nb], compute dtype
        if z.dtype == x.dtype:
            y = F.linear(z, torch.cat([u, v.to(u.dtype)], dim=1), bias)
        else:  # half precision: the silu path in x's dtype, S v^T in S's float32 (module docstring)
            n_in = x.shape[1]
            y = F.linear(z[:, :n_in].to(x.dtype), u, bias).add_(z[:, n_in:] @ v.to(z.dtype).t())
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
                grad_u = gy.t() @ z[:, :n_in].to(gy.dtype)
            if need_v:  # Eq. 9, summed over all N in float32 at least
                cdt = torch.promote_types(gy.dtype, torch.float32)
                grad_v = (gy.t().to(cdt) @ z[:, n_in:].to(cdt)).to(v.dtype)
        if need_bias:
            grad_bias = gy.sum(0)
        return grad_x, grad_u, grad_bias, grad_v, None, None


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


class KAConvFunction(torch.autograd.Function):
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
            spline = _window_sums(geo, phi)  # phi's dtype: the compute dtype
            offset = _padding_offset(geo, v)  # [C_out] or None: phi's padded taps
            if offset is not None and spline.dtype == y.dtype:
                offset = offset.to(y.dtype)
                bias = offset if bias is None else bias + offset
            elif offset is not None:  # half precision: the offset is large, added in float32 (module docstring)
                spline = spline + offset.to(spline.dtype).reshape(1, -1, *([1] * geo.nd))
            y += spline  # rounded once to y's dtype
        else:  # p counts the padded taps itself
            silu, p = silu_and_window_sums(x.reshape(b, g, cg, *sp), geo.grid, geo.kernel, geo.stride, geo.padding,
                                           geo.dilation)  # p: [B, G, nb, *sp_out]
            y = geo.conv(silu.reshape(x.shape), u, g, geo.padding).contiguous()
            del silu
            positions = math.prod(y.shape[2:])
            v_g = v.to(p.dtype).reshape(1, g, geo.cout_g, -1).expand(b, -1, -1, -1).reshape(b * g, geo.cout_g, -1)
            y_g, p_g = y.view(b * g, geo.cout_g, positions), p.reshape(b * g, -1, positions)
            if p.dtype == y.dtype:  # y += v P (Eq. 7's spline path), one batched GEMM into y
                y_g.baddbmm_(v_g, p_g)
            else:  # half precision: v P in P's float32, rounded once with y (module docstring)
                y_g.add_(torch.bmm(v_g, p_g))
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
KEEP_WINDOW_SUMS_MAX_FRACTION = 0.25


def _keeps_window_sums(p: torch.Tensor, x: torch.Tensor) -> bool:
    return p.numel() * p.element_size() <= KEEP_WINDOW_SUMS_MAX_FRACTION * x.numel() * x.element_size()


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
    b0 = geo.grid.zero_bases_tensor(v.dtype, v.device)
    return (math.prod(geo.kernel) * geo.cin_g) * (v @ b0)


def _padding_offset_grad(geo: ConvGeometry, gy_sum: torch.Tensor) -> torch.Tensor:
    b0 = geo.grid.zero_bases_tensor(gy_sum.dtype, gy_sum.device)
    return (math.prod(geo.kernel) * geo.cin_g) * gy_sum[:, None] * b0


class KAConvLambdaFunction(torch.autograd.Function):
    """Fast KAonv with Eq. 6's lambda_j (ablation row 12): the window sums weight every (channel, tap) by
    lambda, so the bases are summed by a grouped convolution with weights lambda on an explicitly padded input,
    block by block (``chunk_size`` channels). Saves only (x, u, v, lam)."""

    @staticmethod
    def forward(ctx, x, u, bias, v, lam, geo: ConvGeometry):
        nd, nb = geo.nd, geo.grid.n_bases
        x_pad = geo.pad(x)
        y = geo.conv(F.silu(x_pad), u, geo.groups, geo.no_padding).contiguous()
        v_g = v.reshape(geo.groups, geo.cout_g, nb)
        y_g = y.view(y.shape[0], geo.groups, geo.cout_g, -1)  # [B, G, out_g, positions]
        for g0, g1, pieces in _blocks(geo):
            p = sum(_piece_lambda_window_sums(geo, x_pad, lam, c0, c1, g1 - g0)[0] for c0, c1 in pieces)
            p = p.reshape(y.shape[0], g1 - g0, nb, -1)
            # y += v @ P: one GEMM broadcast over samples/groups, in P's dtype (module docstring)
            y_g[:, g0:g1] += torch.matmul(v_g[g0:g1].to(p.dtype), p)
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
