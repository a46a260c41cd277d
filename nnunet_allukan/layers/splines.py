"""B-spline bases on a uniform grid, in closed form.

The KA layers (paper Eq. 7) need, for every input value x, the ``n_bases = grid_size + spline_order``
B-spline bases B_k(x) of a uniform knot vector extended by ``spline_order`` knots on each side::

    h = (hi - lo) / grid_size,   t_i = lo + (i - spline_order) * h,   i = 0 .. grid_size + 2 * spline_order

On a uniform grid every basis is a shifted cardinal B-spline, B_k(x) = N_p((x - t_k) / h), and N_p has a
closed form, so no Cox-de Boor recursion is needed. For the default cubic case (p = 3) the centred form
``beta3(t) = (relu(2 - |t|)^3 - 4 relu(1 - |t|)^3) / 6`` with ``t = (x - t_k) / h - 2`` is used; other
orders use the truncated-power form ``N_p(u) = sum_i (-1)^i C(p+1, i) relu(u - i)^p / p!`` on the
clamped support.

The hot spots of the KA/KAonv layers are reductions over inputs, provided here as *kernels*, each one pass:

- ``basis_sum``: ``S[b, g, k, ...] = sum_c B_k(x[b, g, c, ...])``  (the spline path of Eq. 7),
- ``silu_and_window_sums``: silu(x) and S window-summed over a convolution's receptive fields (KAonv),
- ``silu_and_activation_sums`` (+ backward): silu(x) and ``sum_c phi_g(x_c)`` for groups with one output,
- ``silu_and_basis_sums``: silu(x) next to S (KALinear's one GEMM),
- ``basis_derivative_dot``: ``D[b, g, c, ...] = sum_k h[b, g, k, ...] * B'_k(x[b, g, c, ...])``  (the
  spline-path input gradient, used only with ``grad_free=False``).

On CPU, in float32/float64 and for cubic grids, they run as native code (native.py: one pass each, no
compiler in the process). Otherwise they are plain vectorised tensor code (the eager fallback), compiled with
``torch.compile`` when possible, which fuses the per-basis arithmetic into one pass over the input (on CPU
once a kernel has spent a few seconds in eager calls: short jobs skip the compilation); inside a
whole-network ``torch.compile`` they are traced into the network's graph instead.
``NNUNET_ALLUKAN_COMPILE`` (read once, at import) ``=0`` forces the eager kernels, ``=1`` requires
compilation; :func:`set_kernel_compilation` changes the mode at run time.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import time
import types
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import native

__all__ = [
    "SplineGrid",
    "bspline_bases",
    "bspline_bases_cox_de_boor",
    "basis_sum",
    "basis_derivative_dot",
    "compile_kernels_at_first_call",
    "compiled_kernels_enabled",
    "set_kernel_compilation",
]


@dataclass(frozen=True)
class SplineGrid:
    """A uniform B-spline grid: ``grid_size`` intervals on ``[lo, hi]``, bases of order ``spline_order``."""

    grid_size: int = 5
    spline_order: int = 3
    lo: float = -1.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        if int(self.grid_size) != self.grid_size or self.grid_size < 1:
            raise ValueError(f"grid_size must be a positive integer, got {self.grid_size!r}")
        if int(self.spline_order) != self.spline_order or self.spline_order < 1:
            raise ValueError(f"spline_order must be an integer >= 1, got {self.spline_order!r}")
        if not float(self.hi) > float(self.lo):
            raise ValueError(f"grid_range must satisfy lo < hi, got ({self.lo}, {self.hi})")

    @classmethod
    def from_args(cls, grid_size: int = 5, spline_order: int = 3,
                  grid_range: tuple[float, float] = (-1.0, 1.0)) -> "SplineGrid":
        if len(grid_range) != 2:
            raise ValueError(f"grid_range must be (lo, hi), got {grid_range!r}")
        return cls(int(grid_size), int(spline_order), float(grid_range[0]), float(grid_range[1]))

    @property
    def n_bases(self) -> int:
        return self.grid_size + self.spline_order

    @property
    def h(self) -> float:
        return (self.hi - self.lo) / self.grid_size

    @property
    def t0(self) -> float:
        """First knot, ``lo - spline_order * h``."""
        return self.lo - self.spline_order * self.h

    def knots(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """[grid_size + 2 * spline_order + 1] knot positions."""
        idx = torch.arange(self.grid_size + 2 * self.spline_order + 1, dtype=dtype, device=device)
        return self.lo + (idx - self.spline_order) * self.h


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Bases of half-precision inputs are computed in float32: the cubic terms lose too much in fp16/bf16.
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _cardinal(u: torch.Tensor, order: int) -> torch.Tensor:
    """Cardinal B-spline N_p(u), support [0, p + 1). ``u`` may carry autograd."""
    if order == 3:
        t = (u - 2.0).abs()
        return ((2.0 - t).clamp_min(0.0).pow(3) - 4.0 * (1.0 - t).clamp_min(0.0).pow(3)) * (1.0 / 6.0)
    # Truncated powers on the clamped support; outside it N_p is exactly 0 (masked).
    inside = (u >= 0) & (u < order + 1)
    uc = u.clamp(0.0, float(order + 1))
    acc = torch.zeros_like(uc)
    for i in range(order + 2):
        acc = acc + ((-1) ** i * math.comb(order + 1, i)) * (uc - i).clamp_min(0.0).pow(order)
    return torch.where(inside, acc / math.factorial(order), torch.zeros_like(acc))


def _cardinal_derivative(u: torch.Tensor, order: int) -> torch.Tensor:
    """dN_p/du; N_p'(u) = N_{p-1}(u) - N_{p-1}(u - 1)."""
    if order == 3:
        d = u - 2.0
        t = d.abs()
        mag = 0.5 * (2.0 - t).clamp_min(0.0).pow(2) - 2.0 * (1.0 - t).clamp_min(0.0).pow(2)
        return -torch.sign(d) * mag
    if order == 1:
        return torch.where((u >= 0) & (u < 1), torch.ones_like(u),
                           torch.where((u >= 1) & (u < 2), -torch.ones_like(u), torch.zeros_like(u)))
    return _cardinal(u, order - 1) - _cardinal(u - 1.0, order - 1)


def bspline_bases(x: torch.Tensor, grid_size: int = 5, spline_order: int = 3,
                  grid_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """All B-spline bases of ``x``, closed form (differentiable).

    Args:
        x: any shape ``[...]``.
    Returns:
        ``[..., grid_size + spline_order]``; zero outside ``[t_0, t_last)``.
    """
    grid = SplineGrid.from_args(grid_size, spline_order, grid_range)
    s = (x.to(_compute_dtype(x)) - grid.t0) / grid.h
    offsets = torch.arange(grid.n_bases, dtype=s.dtype, device=s.device)
    return _cardinal(s.unsqueeze(-1) - offsets, grid.spline_order)


def bspline_bases_cox_de_boor(x: torch.Tensor, grid_size: int = 5, spline_order: int = 3,
                              grid_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Bases by the Cox-de Boor recursion (the textbook definition; slow, used as the test oracle).

    Returns ``[..., grid_size + spline_order]``.
    """
    grid = SplineGrid.from_args(grid_size, spline_order, grid_range)
    t = grid.knots(dtype=x.dtype, device=x.device)
    xe = x.unsqueeze(-1)
    bases = ((xe >= t[:-1]) & (xe < t[1:])).to(x.dtype)
    for p in range(1, grid.spline_order + 1):
        left = (xe - t[: -(p + 1)]) / (t[p:-1] - t[: -(p + 1)]) * bases[..., :-1]
        right = (t[p + 1:] - xe) / (t[p + 1:] - t[1:-p]) * bases[..., 1:]
        bases = left + right
    return bases


# ----------------------------------------------------------------------------------------------------
# Kernels: plain tensor code (the eager fallback), compiled on demand by _run_kernel. Every kernel computes
# in _compute_dtype and returns results in the dtype of its input x.
# ----------------------------------------------------------------------------------------------------
def _basis_sum_eager(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int) -> torch.Tensor:
    """[N, C, P] -> [N, n_bases, P]: per-basis sum over dim 1."""
    s = (x - t0) * (1.0 / h)
    if order != 3 or torch.is_grad_enabled() and s.requires_grad:
        return torch.stack([_cardinal(s - k, order).sum(1) for k in range(n_bases)], dim=1)
    # Cubic without autograd: the same centred form, in place, 1/6 applied after the reduction.
    return _cubic_basis_sums_inplace(s, n_bases, 1).mul_(1.0 / 6.0)


def _basis_derivative_dot_eager(x: torch.Tensor, g: torch.Tensor, t0: float, h: float, n_bases: int,
                                order: int) -> torch.Tensor:
    """x [N, C, P], g [N, n_bases, P] -> [N, C, P]: sum_k g_k * dB_k/dx."""
    s = (x - t0) * (1.0 / h)
    out = torch.zeros_like(s)
    for k in range(n_bases):
        out = out + g[:, k: k + 1] * _cardinal_derivative(s - k, order)
    return out * (1.0 / h)


def _shift(c: int, b0: tuple[float, ...] | None, k: int) -> float:
    return 0.0 if b0 is None else c * b0[k]


def _shifts(c: int, b0: tuple[float, ...] | None) -> list[float] | None:
    """``C B_k(0)`` for every k (what C zero-padded inputs add to the channel sums), None without padding."""
    return None if b0 is None else [c * b for b in b0]


def _augmented_input_eager(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                           b0: tuple[float, ...] | None) -> torch.Tensor:
    """x [N, C, P] -> [N, C + n_bases, P]: ``silu(x)`` and the channel sums ``S_k - C * B_k(0)``.

    The input of one convolution that computes a whole KAonv group (see ka.py). ``b0`` = B(0) when the
    convolution pads: then padded zeros, which are KA inputs contributing C * B(0) per tap, become exact zeros.
    """
    xc = x.to(_compute_dtype(x))
    s = _basis_sum_eager(xc, t0, h, n_bases, order)
    if b0 is not None:
        s = s - x.shape[1] * torch.tensor(b0, dtype=s.dtype, device=s.device).reshape(1, n_bases, 1)
    return torch.cat([F.silu(xc), s], dim=1).to(x.dtype)


def _window_sums_of(s: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
                    dilation: tuple[int, ...]) -> torch.Tensor:
    """Zero-padded sums over every receptive field of a convolution: ``[N, M, *sp] -> [N, M, *sp_out]``, as
    shifted strided slices (one fused loop once compiled)."""
    nd = len(kernel)
    if any(padding):
        s = F.pad(s, [q for p in reversed(padding) for q in (p, p)])
    out = [(s.shape[2 + d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d in range(nd)]
    total = None
    for taps in itertools.product(*(range(k) for k in kernel)):
        window = s[(slice(None), slice(None)) + tuple(
            slice(t * dilation[d], t * dilation[d] + stride[d] * (out[d] - 1) + 1, stride[d])
            for d, t in enumerate(taps))]
        total = window if total is None else total + window
    return total


def _silu_and_window_sums_eager(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                                b0: tuple[float, ...] | None, kernel: tuple[int, ...], stride: tuple[int, ...],
                                padding: tuple[int, ...],
                                dilation: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C, *sp] -> (``silu(x)`` in x's dtype, the window sums P_k of ``S_k`` [N, n_bases, *sp_out] in the
    compute dtype): all a KAonv group needs from x, in one pass. With ``b0`` (zero padding) the sums run over
    ``S_k - C B_k(0)``, for which padded taps are exact zeros, and ``n_taps C B_k(0)`` is added back: every
    padded tap then counts its C zero inputs, as Eq. 7 on the padded input does."""
    xc, s = _shifted_basis_sums(x, t0, h, n_bases, order, b0)
    return F.silu(xc).to(x.dtype), _add_padded_taps(_window_sums_of(s, kernel, stride, padding, dilation), b0,
                                                    x.shape[1], kernel)


def _add_padded_taps(p: torch.Tensor, b0: tuple[float, ...] | None, c: int, kernel: tuple[int, ...]) -> torch.Tensor:
    """Window sums of the shifted channel sums -> window sums of the channel sums (see above)."""
    if b0 is None:
        return p
    taps = math.prod(kernel)
    return p + torch.tensor([taps * value for value in _shifts(c, b0)], dtype=p.dtype,
                            device=p.device).reshape(1, -1, *([1] * (p.dim() - 2)))


def _shifted_basis_sums(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                        b0: tuple[float, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C, *sp] -> (x in the compute dtype, ``S_k - C B_k(0)`` [N, n_bases, *sp]; no shift without b0)."""
    xc = x.to(_compute_dtype(x))
    s = _basis_sum_eager(xc, t0, h, n_bases, order)
    if b0 is not None:
        s = s - x.shape[1] * torch.tensor(b0, dtype=s.dtype, device=s.device).reshape(1, n_bases, *([1] * (x.dim() - 2)))
    return xc, s


def _activation_input_eager(x: torch.Tensor, v: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                            b0: tuple[float, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, G, C, P], v [G, n_bases] -> (``silu(x)`` [B, G, C, P], ``sum_c phi_g(x_c) - C phi_g(0)`` [B, G, 1, P]).

    phi_g = sum_k v[g, k] B_k is the learned activation of a group with one output (depthwise KAonv): one map
    per group instead of n_bases."""
    xc = x.to(_compute_dtype(x))
    s = (xc - t0) * (1.0 / h)
    vc = v.to(xc.dtype)
    c = x.shape[2]
    phi = None
    for k in range(n_bases):
        term = _cardinal(s - k, order).sum(2, keepdim=True) - _shift(c, b0, k)
        term = term * vc[:, k].reshape(1, -1, 1, 1)
        phi = term if phi is None else phi + term
    return F.silu(xc).to(x.dtype), phi.to(x.dtype)


def _activation_input_backward_eager(x: torch.Tensor, g_silu: torch.Tensor, g_phi: torch.Tensor, v: torch.Tensor,
                                     t0: float, h: float, n_bases: int, order: int, b0: tuple[float, ...] | None,
                                     full_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients through :func:`_activation_input_eager`, given g_silu [B, G, C, P] and g_phi [B, G, 1, P], the
    gradients of its two outputs.

    Returns (dL/dx [B, G, C, P] in x's dtype, dL/dv [G, n_bases] in the compute dtype). The x gradient is the
    silu path's (plus, with ``full_grad``, the spline path's through phi')."""
    cdt = _compute_dtype(x)
    xc = x.to(cdt)
    c = x.shape[2]
    g_phi = g_phi.to(cdt)
    sig = torch.sigmoid(xc)
    gx = g_silu.to(cdt) * sig * (1.0 + xc * (1.0 - sig))
    s = (xc - t0) * (1.0 / h)
    gv = []
    dphi = None
    vc = v.to(cdt)
    for k in range(n_bases):
        basis = _cardinal(s - k, order).sum(2, keepdim=True) - _shift(c, b0, k)
        gv.append((basis * g_phi).sum((0, 2, 3)))
        if full_grad:
            term = _cardinal_derivative(s - k, order) * vc[:, k].reshape(1, -1, 1, 1)
            dphi = term if dphi is None else dphi + term
    if full_grad:
        gx = gx + g_phi * dphi * (1.0 / h)
    return gx.to(x.dtype), torch.stack(gv, dim=1)


def _cubic_basis_sums_inplace(s: torch.Tensor, n_bases: int, dim: int) -> torch.Tensor:
    """``6 * sum over dim of B_k`` for every k (cubic grid, no autograd), stacked at ``dim``, from the scaled input
    ``s = (x - t0) / h``: the centred form with in-place arithmetic on one scratch tensor per basis."""
    sums = []
    for k in range(n_bases):
        t = (s - (k + 2.0)).abs_()
        inner = torch.rsub(t, 1.0).clamp_min_(0.0).pow_(3).mul_(4.0)
        sums.append(t.neg_().add_(2.0).clamp_min_(0.0).pow_(3).sub_(inner).sum(dim))
    return torch.stack(sums, dim=dim)


def _activation_input_eager_fast(x: torch.Tensor, v: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                                 b0: tuple[float, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_activation_input_eager` with fewer, in-place operations (cubic grids): the channel sums S_k of all
    bases, then ``phi = sum_k v_k (S_k - C B_k(0))`` as one contraction. Used when the kernel runs eagerly; the
    compiled kernel keeps the per-basis form, which inductor fuses into one pass."""
    if order != 3:
        return _activation_input_eager(x, v, t0, h, n_bases, order, b0)
    xc = x.to(_compute_dtype(x))
    c = x.shape[2]
    sums = _cubic_basis_sums_inplace((xc - t0) * (1.0 / h), n_bases, 2)  # [B, G, n_bases, P], times 6
    weights = v.to(xc.dtype) * (1.0 / 6.0)  # [G, n_bases]
    phi = torch.einsum("bgkp,gk->bgp", sums, weights).unsqueeze(2)
    if b0 is not None:
        phi = phi - c * (v.to(xc.dtype) @ torch.tensor(b0, dtype=xc.dtype, device=xc.device)).reshape(1, -1, 1, 1)
    return F.silu(xc).to(x.dtype), phi.to(x.dtype)


def _silu_and_window_sums_eager_fast(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                                     b0: tuple[float, ...] | None, kernel: tuple[int, ...], stride: tuple[int, ...],
                                     padding: tuple[int, ...],
                                     dilation: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_silu_and_window_sums_eager` with the window sums as one depthwise convolution of weight 1 instead
    of one shifted slice per tap. Used when the kernel runs eagerly; the compiled kernel keeps the slices, which
    inductor fuses with the basis sums."""
    xc, s = _shifted_basis_sums(x, t0, h, n_bases, order, b0)
    conv = F.conv2d if len(kernel) == 2 else F.conv3d
    ones = s.new_ones((n_bases, 1) + tuple(kernel))
    return F.silu(xc).to(x.dtype), _add_padded_taps(conv(s, ones, None, stride, padding, dilation, n_bases), b0,
                                                    x.shape[1], kernel)


_KERNELS: dict[str, Callable] = {
    "basis_sum": _basis_sum_eager,
    "basis_derivative_dot": _basis_derivative_dot_eager,
    "augmented_input": _augmented_input_eager,
    "activation_input": _activation_input_eager,
    "silu_and_window_sums": _silu_and_window_sums_eager,
    "activation_input_backward": _activation_input_backward_eager,
}
# Eager implementations with fewer operations where the compiled form (written for inductor's fusion) would be
# slow to run op by op; the same results (tests compare them with the unfold reference).
_EAGER_KERNELS: dict[str, Callable] = {
    **_KERNELS,
    "activation_input": _activation_input_eager_fast,
    "silu_and_window_sums": _silu_and_window_sums_eager_fast,
}


# Native kernels (native.py), used on CPU for float32/float64 whenever they are built: the same results, one pass
# each, no compiler in the process. They fall back to the tensor kernels for what they do not cover.
def _basis_sum_native(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int) -> torch.Tensor:
    if not native.covers(order, n_bases):
        return _EAGER_KERNELS["basis_sum"](x, t0, h, n_bases, order)
    return native.basis_sums(x, t0, h, n_bases, None, with_silu=False)[1]


def _augmented_input_native(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                            b0: tuple[float, ...] | None) -> torch.Tensor:
    if not native.covers(order, n_bases):
        return _EAGER_KERNELS["augmented_input"](x, t0, h, n_bases, order, b0)
    n, c, p = x.shape
    out = x.new_empty((n, c + n_bases, p))
    native.basis_sums(x, t0, h, n_bases, _shifts(c, b0), with_silu=True, out=out)
    return out


def _silu_and_window_sums_native(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                                 b0: tuple[float, ...] | None, kernel: tuple[int, ...], stride: tuple[int, ...],
                                 padding: tuple[int, ...],
                                 dilation: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    if not native.covers(order, n_bases):
        return _EAGER_KERNELS["silu_and_window_sums"](x, t0, h, n_bases, order, b0, kernel, stride, padding, dilation)
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    shift = _shifts(c, b0)
    silu, s = native.basis_sums(x.reshape(n, c, -1), t0, h, n_bases, shift, with_silu=True)
    s = s.reshape(n, n_bases, *sp)
    if all(k == 1 for k in kernel) and all(st == 1 for st in stride) and not any(padding):
        return silu.reshape(x.shape), s
    start = None if shift is None else [math.prod(kernel) * value for value in shift]  # the padded taps' C B(0)
    return silu.reshape(x.shape), native.window_sums(s, kernel, stride, padding, dilation, start)


def _activation_input_native(x: torch.Tensor, v: torch.Tensor, t0: float, h: float, n_bases: int, order: int,
                             b0: tuple[float, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not native.covers(order, n_bases):
        return _EAGER_KERNELS["activation_input"](x, v, t0, h, n_bases, order, b0)
    return native.activation_sums(x, v, t0, h, _shifts(x.shape[2], b0))


def _activation_input_backward_native(x: torch.Tensor, g_silu: torch.Tensor, g_phi: torch.Tensor, v: torch.Tensor,
                                      t0: float, h: float, n_bases: int, order: int, b0: tuple[float, ...] | None,
                                      full_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not native.covers(order, n_bases) or full_grad or g_silu.dtype != x.dtype or g_phi.dtype != x.dtype:
        return _EAGER_KERNELS["activation_input_backward"](x, g_silu, g_phi, v, t0, h, n_bases, order, b0, full_grad)
    gx, gv = native.activation_sums_backward(x, g_silu.contiguous(), g_phi.contiguous(), n_bases, t0, h,
                                             _shifts(x.shape[2], b0))
    return gx, gv.to(x.dtype)


_NATIVE_KERNELS: dict[str, Callable] = {
    "basis_sum": _basis_sum_native,
    "augmented_input": _augmented_input_native,
    "silu_and_window_sums": _silu_and_window_sums_native,
    "activation_input": _activation_input_native,
    "activation_input_backward": _activation_input_backward_native,
}
_COMPILED: dict[tuple, Callable] = {}
_COMPILE_FAILED: set[tuple] = set()
# "auto" on CPU compiles a kernel only once its eager calls have taken this long in the process: compiling one
# costs seconds even from inductor's disk cache (ALL U-KAN's kernels: ~25 s together on 2 cores; a first
# compilation: minutes), which a training run wins back within a few steps but predicting a few 2D cases never
# does (ski rental: spend on eager calls what a compilation would cost, then compile).
_EAGER_SECONDS_BEFORE_COMPILE = 10.0
_EAGER_SECONDS: dict[tuple, float] = {}
_COMPILE_MODES = {"auto": "auto", "0": "off", "false": "off", "no": "off", "off": "off", "eager": "off",
                  "1": "on", "true": "on", "yes": "on", "on": "on"}


def _parse_compile_mode(value: str) -> str:
    mode = _COMPILE_MODES.get(value.strip().lower())
    if mode is None:
        raise ValueError(f"NNUNET_ALLUKAN_COMPILE must be auto, 0 or 1, got {value!r}")
    return mode


# Read once, at import: the switch never costs an environment lookup per call (set_kernel_compilation
# changes it at run time).
_COMPILE_MODE = _parse_compile_mode(os.environ.get("NNUNET_ALLUKAN_COMPILE", "auto"))


def set_kernel_compilation(mode: str) -> None:
    """Set the kernel compilation mode at run time: ``"auto"``, ``"0"`` (eager) or ``"1"`` (required)."""
    global _COMPILE_MODE
    _COMPILE_MODE = _parse_compile_mode(str(mode))


def compile_kernels_at_first_call() -> None:
    """For a process that runs a long job (a training run): ``auto`` then compiles each kernel at its first call
    instead of after ``_EAGER_SECONDS_BEFORE_COMPILE`` of eager calls (a failing compilation still falls back to
    the eager kernel). The project's trainers call it; the mode itself is unchanged."""
    global _EAGER_SECONDS_BEFORE_COMPILE
    _EAGER_SECONDS_BEFORE_COMPILE = 0.0


def compiled_kernels_enabled(device_type: str = "cpu") -> bool:
    """Whether the basis kernels run through ``torch.compile``.

    Mode from ``NNUNET_ALLUKAN_COMPILE`` (read once at import) or :func:`set_kernel_compilation`. ``auto``
    (default) compiles where inductor can build kernels (CUDA; CPU with a C++ compiler) and falls back to the
    eager kernels, with a warning, if compilation fails; on CPU a kernel is compiled once its eager calls have
    taken ``_EAGER_SECONDS_BEFORE_COMPILE`` seconds in this process (on CUDA at its first call). ``1`` compiles
    every kernel at its first call and raises if that fails.
    """
    if _COMPILE_MODE == "off":
        return False
    return _COMPILE_MODE == "on" or (device_type in ("cpu", "cuda") and hasattr(torch, "compile"))


def _own_code_copy(fn: Callable, tag: str) -> Callable:
    """``fn`` with a code object of its own. Dynamo keeps compiled variants, and their limit (8), per code
    object; one copy per (kernel, device, dtype) keeps every copy far below the limit without changing
    dynamo's process-wide configuration."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}__{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _run_kernel(name: str, x: torch.Tensor, *args):
    if torch.compiler.is_compiling():  # inside a whole-network torch.compile: traced into the caller's graph
        return _KERNELS[name](x, *args)
    if name in _NATIVE_KERNELS and native.supports(x):
        return _NATIVE_KERNELS[name](x, *args)
    key = (name, x.device.type, x.dtype)
    if compiled_kernels_enabled(x.device.type) and key not in _COMPILE_FAILED:
        fn = _COMPILED.get(key)
        if fn is None and _COMPILE_MODE == "auto" and x.device.type == "cpu":
            spent = _EAGER_SECONDS.get(key, 0.0)
            if spent < _EAGER_SECONDS_BEFORE_COMPILE:  # not yet worth a compilation: eager, timed
                start = time.perf_counter()
                out = _EAGER_KERNELS[name](x, *args)
                _EAGER_SECONDS[key] = spent + time.perf_counter() - start
                return out
        if fn is None:
            tag = f"{x.device.type}_{str(x.dtype).replace('torch.', '')}"
            fn = _COMPILED[key] = torch.compile(_own_code_copy(_KERNELS[name], tag), dynamic=True)
        try:
            return fn(x, *args)
        except Exception as e:  # inductor missing a compiler, unsupported device, ...
            if _COMPILE_MODE == "on":
                raise
            _COMPILE_FAILED.add(key)
            warnings.warn(f"nnunet_allukan: torch.compile of the {name} kernel failed ({type(e).__name__}: {e}); "
                          f"using the eager kernel. Set NNUNET_ALLUKAN_COMPILE=0 to silence this.")
    return _EAGER_KERNELS[name](x, *args)


def basis_sum(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """Per-basis sums over dim 2, no autograd: ``[B, G, C, *sp] -> [B, G, n_bases, *sp]``.

    Computed in float32 for half-precision inputs (result in that compute dtype).
    """
    with torch.no_grad():
        # One canonical rank ([B*G, C, P]) keeps the number of compiled specialisations small.
        b, g, c = x.shape[:3]
        sp = x.shape[3:]
        xc = x.to(_compute_dtype(x)).reshape(b * g, c, -1).contiguous()
        out = _run_kernel("basis_sum", xc, grid.t0, grid.h, grid.n_bases, grid.spline_order)
        return out.reshape(b, g, grid.n_bases, *sp)


def basis_derivative_dot(x: torch.Tensor, g: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """``sum_k g[:, :, k] * B'_k(x)``: x ``[B, G, C, *sp]``, g ``[B, G, n_bases, *sp]`` -> ``[B, G, C, *sp]``."""
    with torch.no_grad():
        dt = _compute_dtype(x)
        b, gr, c = x.shape[:3]
        xc = x.to(dt).reshape(b * gr, c, -1).contiguous()
        gc = g.to(dt).reshape(b * gr, grid.n_bases, -1).contiguous()
        out = _run_kernel("basis_derivative_dot", xc, gc, grid.t0, grid.h, grid.n_bases, grid.spline_order)
        return out.reshape(x.shape)


@functools.lru_cache(maxsize=None)  # called on every KAonv call with padding; a grid has few distinct values
def zero_bases(grid: SplineGrid) -> tuple[float, ...]:
    """``B_k(0)`` for every basis (Python floats): what one zero-padded input adds to the spline sums."""
    u0 = (0.0 - grid.t0) / grid.h
    p = grid.spline_order
    # N_p(u) = sum_i (-1)^i C(p+1, i) relu(u - i)^p / p! on its support [0, p + 1)
    return tuple(sum((-1) ** i * math.comb(p + 1, i) * max(u0 - k - i, 0.0) ** p for i in range(p + 2))
                 / math.factorial(p) if 0.0 <= u0 - k < p + 1 else 0.0 for k in range(grid.n_bases))


def silu_and_basis_sums(x: torch.Tensor, grid: SplineGrid, zero_padded: bool) -> torch.Tensor:
    """One pass over x, no autograd: ``[B, G, C, *sp] -> [B, G, C + n_bases, *sp]`` holding ``silu(x)`` and
    the per-group channel sums ``S_k = sum_c B_k(x_c)`` (minus ``C * B_k(0)`` when ``zero_padded``), in x's
    dtype (bases in float32 for half-precision x)."""
    with torch.no_grad():
        b, g, c = x.shape[:3]
        xc = x.reshape(b * g, c, -1).contiguous()
        b0 = zero_bases(grid) if zero_padded else None
        out = _run_kernel("augmented_input", xc, grid.t0, grid.h, grid.n_bases, grid.spline_order, b0)
        return out.reshape(b, g, c + grid.n_bases, *x.shape[3:])


def silu_and_window_sums(x: torch.Tensor, grid: SplineGrid, kernel: tuple[int, ...], stride: tuple[int, ...],
                         padding: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over x ``[B, G, C, *sp]``, no autograd: ``silu(x)`` (x's shape and dtype) and the spline path's
    window sums ``P_k(p) = sum_{taps} S_k`` ``[B, G, n_bases, *sp_out]`` (compute dtype) of a convolution with
    that geometry, ``S_k = sum_c B_k(x_c)`` per group; a zero-padded tap adds ``C B_k(0)`` (its C zero inputs)."""
    with torch.no_grad():
        b, g, c = x.shape[:3]
        xc = x.reshape(b * g, c, *x.shape[3:]).contiguous()
        b0 = zero_bases(grid) if any(padding) else None
        silu, p = _run_kernel("silu_and_window_sums", xc, grid.t0, grid.h, grid.n_bases, grid.spline_order, b0,
                              tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
        return silu.reshape(x.shape), p.reshape(b, g, grid.n_bases, *p.shape[2:])


def silu_and_activation_sums(x: torch.Tensor, v: torch.Tensor, grid: SplineGrid,
                             zero_padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """For groups with one output each (depthwise): one pass over x ``[B, G, C, *sp]``, no autograd, giving
    ``silu(x)`` (x's shape) and ``sum_c phi_g(x_c)`` ``[B, G, *sp]`` with ``phi_g = sum_k v[g, k] B_k`` (minus
    ``C * phi_g(0)`` when ``zero_padded``), in x's dtype. :func:`silu_and_activation_sums_backward` gives the
    gradients."""
    with torch.no_grad():
        b, g, c = x.shape[:3]
        xc = x.reshape(b, g, c, -1).contiguous()
        b0 = zero_bases(grid) if zero_padded else None
        silu, phi = _run_kernel("activation_input", xc, v.reshape(g, -1).contiguous(), grid.t0, grid.h,
                                grid.n_bases, grid.spline_order, b0)
        return silu.reshape(x.shape), phi.reshape(b, g, *x.shape[3:])


def silu_and_activation_sums_backward(x: torch.Tensor, grad_silu: torch.Tensor, grad_phi: torch.Tensor,
                                      v: torch.Tensor, grid: SplineGrid, zero_padded: bool,
                                      full_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`silu_and_activation_sums` given those of its outputs (``grad_silu`` of x's shape,
    ``grad_phi`` ``[B, G, *sp]``): ``(dL/dx, dL/dv)``, dL/dx of x's shape and dtype (the silu path only unless
    ``full_grad``), dL/dv ``[G, n_bases]``."""
    with torch.no_grad():
        b, g, c = x.shape[:3]
        xc = x.reshape(b, g, c, -1).contiguous()
        gs = grad_silu.reshape(b, g, c, -1).contiguous()
        gp = grad_phi.reshape(b, g, 1, -1).contiguous()
        b0 = zero_bases(grid) if zero_padded else None
        gx, gv = _run_kernel("activation_input_backward", xc, gs, gp, v.reshape(g, -1).contiguous(), grid.t0,
                             grid.h, grid.n_bases, grid.spline_order, b0, bool(full_grad))
        return gx.reshape(x.shape), gv


def differentiable_basis_sum(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """Like :func:`basis_sum` but through autograd (full spline gradients; the paper's non-grad-free path)."""
    b, g, c = x.shape[:3]
    out = _basis_sum_eager(x.to(_compute_dtype(x)).reshape(b * g, c, -1), grid.t0, grid.h, grid.n_bases,
                           grid.spline_order)
    return out.reshape(b, g, grid.n_bases, *x.shape[3:])

