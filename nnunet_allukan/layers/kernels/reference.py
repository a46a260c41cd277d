"""The ``reference`` backend: every pass written as its definition, for tests and the paper-style path.

Every basis B_k(x_c) is built as a tensor (:func:`~nnunet_allukan.layers.splines.grid_bases`, any order and family),
padded zeros are inputs like any other, receptive fields are unfolded, and the backward passes are autograd of
the forward ones. Slow and memory-hungry by design: the other backends are tested against it.
Inputs arrive in the compute dtype (the seam casts); shapes are the seam's (see ``kernels/__init__.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..splines import SplineGrid, grid_bases

READS_HALF = False  # computes in the dtype it is given: the seam casts half precision to float32


def _bases(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """``[N, C, ...] -> [N, C, n_bases, ...]``."""
    return grid_bases(x, grid).movedim(-1, 2)


def _zero(grid: SplineGrid, like: torch.Tensor) -> torch.Tensor:
    return grid.zero_bases_tensor(like.dtype, like.device)


def basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    """x [N, C, P] -> ``sum_c B_k(x_c)``, minus ``C B_k(0)`` when ``padded`` [N, n_bases, P]."""
    s = _bases(x, grid).sum(1)
    return s - x.shape[1] * _zero(grid, s).reshape(-1, 1) if padded else s


def silu_and_basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    """x [N, C, P] -> ``[silu(x), basis_sums(x)]`` [N, C + n_bases, P]."""
    return torch.cat([F.silu(x), basis_sums(x, grid, padded)], dim=1)


def silu_and_window_sums(x: torch.Tensor, grid: SplineGrid, kernel, stride, padding, dilation):
    """x [N, C, *sp] -> (silu(x), ``P_k(p) = sum over the receptive field of p of B_k``) on the zero-padded x."""
    x_pad = F.pad(x, [q for p in reversed(padding) for q in (p, p)])
    s = _bases(x_pad, grid).sum(1)  # [N, n_bases, *sp_pad]
    for d, (k, st, dil) in enumerate(zip(kernel, stride, dilation)):
        s = s.unfold(2 + d, dil * (k - 1) + 1, st)[..., ::dil]
    return F.silu(x), s.sum(tuple(range(-len(kernel), 0)))


def activation_sums(x: torch.Tensor, grid: SplineGrid, v: torch.Tensor, padded: bool):
    """x [B, G, C, P], v [G, n_bases] -> (silu(x), ``sum_c phi_g(x_c) - C phi_g(0) [padded]`` [B, G, 1, P])."""
    b, g, c, p = x.shape
    phi = torch.einsum("bgckp,gk->bgp", _bases(x.reshape(b * g, c, p), grid).reshape(b, g, c, -1, p), v)
    if padded:
        phi = phi - c * (v @ _zero(grid, v)).reshape(1, g, 1)
    return F.silu(x), phi.unsqueeze(2)


def activation_sums_backward(x, grid: SplineGrid, grad_silu, grad_phi, v, padded: bool, full_grad: bool):
    """Autograd of :func:`activation_sums` (bases constant unless ``full_grad``): (dL/dx, dL/dv)."""
    with torch.enable_grad():
        xr, vr = x.detach().requires_grad_(), v.detach().requires_grad_()
        silu, _ = activation_sums(xr, grid, vr, padded)
        _, phi = activation_sums(xr if full_grad else xr.detach(), grid, vr, padded)
        return torch.autograd.grad([silu, phi], [xr, vr], [grad_silu, grad_phi])


def basis_derivative_dot(x: torch.Tensor, grid: SplineGrid, g: torch.Tensor) -> torch.Tensor:
    """x [N, C, P], g [N, n_bases, P] -> ``sum_k g_k B'_k(x)`` [N, C, P], by autograd of the bases."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_()
        return torch.autograd.grad(_bases(xr, grid), xr, g.unsqueeze(1).expand(-1, x.shape[1], -1, -1))[0]
