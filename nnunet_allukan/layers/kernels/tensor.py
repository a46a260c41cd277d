"""The ``torch`` backend: each pass as one vectorised tensor form, no basis tensor per input.

Serves every pass on every device, grid and basis family, uncompiled: where the native (CPU) or Triton (CUDA)
kernels do not run, and for whoever chooses it (``NNUNET_ALLUKAN_KERNELS=torch``). The bases are splines.py's
definitions (:func:`~nnunet_allukan.layers.splines.basis_terms`), one basis at a time, their constant factor (1/6
for the cubic's centred form) applied after the reduction.
Inputs arrive in the compute dtype (the seam casts); shapes are the seam's (see ``kernels/__init__.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..splines import SplineGrid, basis_derivative_terms, basis_terms

READS_HALF = False  # computes in the dtype it is given: the seam casts half precision to float32


def _zero(grid: SplineGrid, like: torch.Tensor) -> torch.Tensor:
    return grid.zero_bases_tensor(like.dtype, like.device)


def basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    """x [N, C, P] -> ``sum_c B_k(x_c)``, minus ``C B_k(0)`` when ``padded`` [N, n_bases, P]."""
    terms, scale = basis_terms(x, grid)
    out = torch.stack([t.sum(1) for t in terms], 1)
    if scale != 1.0:
        out.mul_(scale)
    return out.sub_(x.shape[1] * _zero(grid, out).reshape(-1, 1)) if padded else out


def silu_and_basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    """x [N, C, P] -> ``[silu(x), basis_sums(x)]`` [N, C + n_bases, P] (KALinear's augmented input)."""
    return torch.cat([F.silu(x), basis_sums(x, grid, padded)], dim=1)


def window_sums(s: torch.Tensor, grid: SplineGrid, channels: int, kernel, stride, padding, dilation) -> torch.Tensor:
    """The channel sums s [N, n_bases, *sp] of ``channels`` inputs summed over a convolution's receptive fields
    [N, n_bases, *sp_out]. With padding, s must be shifted by ``-channels B(0)`` (zero padding is then exact) and
    ``n_taps channels B(0)`` is added back."""
    conv = F.conv2d if len(kernel) == 2 else F.conv3d
    p = conv(s, s.new_ones((grid.n_bases, 1, *kernel)), None, stride, padding, dilation, grid.n_bases)
    if any(padding):
        p += (math.prod(kernel) * channels * _zero(grid, p)).reshape(1, -1, *([1] * len(kernel)))
    return p


def silu_and_window_sums(x: torch.Tensor, grid: SplineGrid, kernel, stride, padding, dilation):
    """x [N, C, *sp] -> (silu(x), window sums P [N, n_bases, *sp_out]), see :func:`window_sums`."""
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    s = basis_sums(x.reshape(n, c, -1), grid, any(padding)).reshape(n, grid.n_bases, *sp)
    return F.silu(x), window_sums(s, grid, c, kernel, stride, padding, dilation)


def activation_sums(x: torch.Tensor, grid: SplineGrid, v: torch.Tensor, padded: bool):
    """x [B, G, C, P], v [G, n_bases] -> (silu(x), ``sum_c phi_g(x_c)``, minus ``C phi_g(0)`` when ``padded``
    [B, G, 1, P]); ``phi_g = sum_k v[g, k] B_k``."""
    terms, scale = basis_terms(x, grid)
    w = v * scale
    phi = sum(t.sum(2, keepdim=True) * w[:, k].reshape(1, -1, 1, 1) for k, t in enumerate(terms))
    if padded:
        phi = phi - x.shape[2] * (v @ _zero(grid, v)).reshape(1, -1, 1, 1)
    return F.silu(x), phi


def activation_sums_backward(x, grid: SplineGrid, grad_silu, grad_phi, v, padded: bool, full_grad: bool):
    """Gradients of :func:`activation_sums` given those of its outputs: (dL/dx, dL/dv [G, n_bases]); dL/dx is
    the silu path's, plus the spline path's through phi' with ``full_grad``."""
    c = x.shape[2]
    grad_x = torch.ops.aten.silu_backward(grad_silu, x)
    zero = grid.zero_bases if padded else (0.0,) * grid.n_bases
    terms, scale = basis_terms(x, grid)
    grad_v = torch.stack([((t.sum(2, keepdim=True) * scale - c * zero[k]) * grad_phi).sum((0, 2, 3))
                          for k, t in enumerate(terms)], 1)
    if full_grad:
        grad_x = grad_x + grad_phi * _derivative_dot(x, v, grid)
    return grad_x, grad_v


def _derivative_dot(x: torch.Tensor, w: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """``sum_k w_k B'_k(x)``, w broadcastable to ``x[:, :, :1]`` per k (dim 1 or 2)."""
    terms, scale = basis_derivative_terms(x, grid)
    out = None
    for k, t in enumerate(terms):
        wk = w[:, k].reshape(1, -1, 1, 1) if w.dim() == 2 else w[:, k: k + 1]
        term = t * wk
        out = term if out is None else out + term
    return out * scale


def basis_derivative_dot(x: torch.Tensor, grid: SplineGrid, g: torch.Tensor) -> torch.Tensor:
    """x [N, C, P], g [N, n_bases, P] -> ``sum_k g_k B'_k(x)`` [N, C, P]."""
    return _derivative_dot(x, g, grid)
