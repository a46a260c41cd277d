"""B-spline bases on a uniform grid, in closed form.

The KA layers (paper Eq. 7) need, for every input value x, the ``n_bases = grid_size + spline_order``
B-spline bases B_k(x) of a uniform knot vector extended by ``spline_order`` knots on each side::

    h = (hi - lo) / grid_size,   t_i = lo + (i - spline_order) * h,   i = 0 .. grid_size + 2 * spline_order

On a uniform grid every basis is a shifted cardinal B-spline, B_k(x) = N_p((x - t_k) / h), and N_p has a
closed form, so no Cox-de Boor recursion is needed. For the default cubic case (p = 3) the centred form
``beta3(t) = (relu(2 - |t|)^3 - 4 relu(1 - |t|)^3) / 6`` with ``t = (x - t_k) / h - 2`` is used; other
orders use the truncated-power form ``N_p(u) = sum_i (-1)^i C(p+1, i) relu(u - i)^p / p!`` on the
clamped support.

The hot spots of the KA/KAonv layers are two reductions over inputs, provided here as *kernels*:

- ``basis_sum``: ``S[b, g, k, ...] = sum_c B_k(x[b, g, c, ...])``  (the spline path of Eq. 7),
- ``basis_derivative_dot``: ``D[b, g, c, ...] = sum_k h[b, g, k, ...] * B'_k(x[b, g, c, ...])``  (the
  spline-path input gradient, used only with ``grad_free=False``).

Both are written as plain vectorised tensor code (the eager fallback) and are compiled with
``torch.compile`` when possible, which fuses the per-basis arithmetic into one pass over the input.
Set ``NNUNET_ALLUKAN_COMPILE=0`` to force the eager kernels, ``=1`` to require compilation.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "SplineGrid",
    "bspline_bases",
    "bspline_bases_cox_de_boor",
    "basis_sum",
    "basis_derivative_dot",
    "compiled_kernels_enabled",
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
# Reduction kernels (eager reference versions; compiled on demand below)
# ----------------------------------------------------------------------------------------------------
def _basis_sum_eager(x: torch.Tensor, t0: float, h: float, n_bases: int, order: int) -> torch.Tensor:
    """[N, C, P] -> [N, n_bases, P]: per-basis sum over dim 1."""
    s = (x - t0) * (1.0 / h)
    if order != 3 or torch.is_grad_enabled() and s.requires_grad:
        return torch.stack([_cardinal(s - k, order).sum(1) for k in range(n_bases)], dim=1)
    # Cubic without autograd: the same centred form, in place, 1/6 applied after the reduction.
    sums = []
    for k in range(n_bases):
        t = (s - (k + 2.0)).abs_()
        inner = torch.rsub(t, 1.0).clamp_min_(0.0).pow_(3).mul_(4.0)
        sums.append(t.neg_().add_(2.0).clamp_min_(0.0).pow_(3).sub_(inner).sum(1))
    return torch.stack(sums, dim=1).mul_(1.0 / 6.0)


def _basis_derivative_dot_eager(x: torch.Tensor, g: torch.Tensor, t0: float, h: float, n_bases: int,
                                order: int) -> torch.Tensor:
    """x [N, C, P], g [N, n_bases, P] -> [N, C, P]: sum_k g_k * dB_k/dx."""
    s = (x - t0) * (1.0 / h)
    out = torch.zeros_like(s)
    for k in range(n_bases):
        out = out + g[:, k: k + 1] * _cardinal_derivative(s - k, order)
    return out * (1.0 / h)


_KERNELS: dict[str, Callable] = {"basis_sum": _basis_sum_eager, "basis_derivative_dot": _basis_derivative_dot_eager}
_COMPILED: dict[str, Callable] = {}
_COMPILE_FAILED: set[str] = set()


def compiled_kernels_enabled(device_type: str = "cpu") -> bool:
    """Whether the basis kernels are run through ``torch.compile`` (env ``NNUNET_ALLUKAN_COMPILE``).

    ``auto`` (default) compiles where inductor can build kernels (CUDA; CPU with a C++ compiler) and
    falls back to the eager kernels, with a warning, if compilation fails.
    """
    mode = os.environ.get("NNUNET_ALLUKAN_COMPILE", "auto").strip().lower()
    if mode in ("0", "false", "no", "off", "eager"):
        return False
    if mode in ("1", "true", "yes", "on"):
        return True
    if mode != "auto":
        raise ValueError(f"NNUNET_ALLUKAN_COMPILE must be auto, 0 or 1, got {mode!r}")
    return device_type in ("cpu", "cuda") and hasattr(torch, "compile")


def _run_kernel(name: str, device_type: str, *args):
    if compiled_kernels_enabled(device_type) and name not in _COMPILE_FAILED:
        fn = _COMPILED.get(name)
        if fn is None:
            # Sizes of 1 (depthwise pieces, token layers, batch 1) and dtypes each get their own specialisation;
            # dynamo's default limit of 8 per function would silently send later shapes to the eager kernel.
            import torch._dynamo  # noqa: PLC0415 - only needed once compilation is used
            for attr in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, attr):
                    setattr(torch._dynamo.config, attr, max(getattr(torch._dynamo.config, attr), 64))
            fn = _COMPILED[name] = torch.compile(_KERNELS[name], dynamic=True)
        try:
            return fn(*args)
        except Exception as e:  # inductor missing a compiler, unsupported device, ...
            if os.environ.get("NNUNET_ALLUKAN_COMPILE", "auto").strip() == "1":
                raise
            _COMPILE_FAILED.add(name)
            warnings.warn(f"nnunet_allukan: torch.compile of the {name} kernel failed ({type(e).__name__}: {e}); "
                          f"using the eager kernel. Set NNUNET_ALLUKAN_COMPILE=0 to silence this.")
    return _KERNELS[name](*args)


def basis_sum(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """Per-basis sums over dim 2, no autograd: ``[B, G, C, *sp] -> [B, G, n_bases, *sp]``.

    Computed in float32 for half-precision inputs (result in that compute dtype).
    """
    with torch.no_grad():
        # One canonical rank ([B*G, C, P]) keeps the number of compiled specialisations small.
        b, g, c = x.shape[:3]
        sp = x.shape[3:]
        xc = x.to(_compute_dtype(x)).reshape(b * g, c, -1).contiguous()
        out = _run_kernel("basis_sum", x.device.type, xc, grid.t0, grid.h, grid.n_bases, grid.spline_order)
        return out.reshape(b, g, grid.n_bases, *sp)


def basis_derivative_dot(x: torch.Tensor, g: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """``sum_k g[:, :, k] * B'_k(x)``: x ``[B, G, C, *sp]``, g ``[B, G, n_bases, *sp]`` -> ``[B, G, C, *sp]``."""
    with torch.no_grad():
        dt = _compute_dtype(x)
        b, gr, c = x.shape[:3]
        xc = x.to(dt).reshape(b * gr, c, -1).contiguous()
        gc = g.to(dt).reshape(b * gr, grid.n_bases, -1).contiguous()
        out = _run_kernel("basis_derivative_dot", x.device.type, xc, gc, grid.t0, grid.h, grid.n_bases,
                          grid.spline_order)
        return out.reshape(x.shape)


def differentiable_basis_sum(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """Like :func:`basis_sum` but through autograd (full spline gradients; the paper's non-grad-free path)."""
    b, g, c = x.shape[:3]
    out = _basis_sum_eager(x.to(_compute_dtype(x)).reshape(b * g, c, -1), grid.t0, grid.h, grid.n_bases,
                           grid.spline_order)
    return out.reshape(b, g, grid.n_bases, *x.shape[3:])

