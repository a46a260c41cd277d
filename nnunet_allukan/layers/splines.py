"""B-spline bases on a uniform grid, in closed form (the mathematics every kernel backend shares).

The KA layers (paper Eq. 7) need, for every input value x, the ``n_bases = grid_size + spline_order``
B-spline bases B_k(x) of a uniform knot vector extended by ``spline_order`` knots on each side::

    h = (hi - lo) / grid_size,   t_i = lo + (i - spline_order) * h,   i = 0 .. grid_size + 2 * spline_order

On a uniform grid every basis is a shifted cardinal B-spline, B_k(x) = N_p((x - t_k) / h), and N_p has a
closed form, so no Cox-de Boor recursion is needed. For the default cubic case (p = 3) the centred form
``beta3(t) = (relu(2 - |t|)^3 - 4 relu(1 - |t|)^3) / 6`` with ``t = (x - t_k) / h - 2`` is used; other
orders use the truncated-power form ``N_p(u) = sum_i (-1)^i C(p+1, i) relu(u - i)^p / p!`` on the
clamped support. :func:`bspline_bases_cox_de_boor` is the textbook recursion, kept as the tests' oracle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..paper import GRID_RANGE, GRID_SIZE, SPLINE_ORDER

__all__ = ["SplineGrid", "bspline_bases", "bspline_bases_cox_de_boor", "cardinal", "cardinal_derivative",
           "compute_dtype", "cubic6"]


# SplineGrid.zero_bases_tensor's tensors, keyed on (grid, device, dtype): a few per process.
_ZERO_BASES: dict = {}


@dataclass(frozen=True)
class SplineGrid:
    """A uniform B-spline grid: ``grid_size`` intervals on ``[lo, hi]``, bases of order ``spline_order``."""

    grid_size: int = GRID_SIZE
    spline_order: int = SPLINE_ORDER
    lo: float = GRID_RANGE[0]
    hi: float = GRID_RANGE[1]
    # B_k(0) for every basis: what one zero-padded input adds to the spline sums (computed once, a plain tuple).
    zero_bases: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if int(self.grid_size) != self.grid_size or self.grid_size < 1:
            raise ValueError(f"grid_size must be a positive integer, got {self.grid_size!r}")
        if int(self.spline_order) != self.spline_order or self.spline_order < 1:
            raise ValueError(f"spline_order must be an integer >= 1, got {self.spline_order!r}")
        if not float(self.hi) > float(self.lo):
            raise ValueError(f"grid_range must satisfy lo < hi, got ({self.lo}, {self.hi})")
        u0, p = -self.t0 / self.h, self.spline_order
        zero = tuple(sum((-1) ** i * math.comb(p + 1, i) * max(u0 - k - i, 0.0) ** p for i in range(p + 2))
                     / math.factorial(p) if 0.0 <= u0 - k < p + 1 else 0.0 for k in range(self.n_bases))
        object.__setattr__(self, "zero_bases", zero)

    @classmethod
    def from_args(cls, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
                  grid_range: tuple[float, float] = GRID_RANGE) -> "SplineGrid":
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

    def zero_bases_tensor(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """:attr:`zero_bases` as a tensor [n_bases], made once per (grid, dtype, device) and shared: a tensor made
        from Python values at every call is a blocking copy from pageable host memory, which waits for the device's
        queue to drain. Read-only for callers. Inside a compiled region it is computed on the device instead (no
        constant copied in at every call of the compiled graph, and no cache entry made of traced values)."""
        if torch.compiler.is_compiling():
            offsets = torch.arange(self.n_bases, dtype=dtype, device=device)
            return cardinal(-self.t0 / self.h - offsets, self.spline_order)
        key = (self, torch.device(device), dtype)
        cached = _ZERO_BASES.get(key)
        if cached is None:
            with torch.inference_mode(False):  # usable later by autograd, whoever made it first
                cached = _ZERO_BASES[key] = torch.tensor(self.zero_bases, dtype=dtype, device=device)
        return cached

    def knots(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """[grid_size + 2 * spline_order + 1] knot positions."""
        idx = torch.arange(self.grid_size + 2 * self.spline_order + 1, dtype=dtype, device=device)
        return self.lo + (idx - self.spline_order) * self.h


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype bases of ``x`` are computed in: float32 for half precision (cubic terms lose too much there)."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def cubic6(t: torch.Tensor) -> torch.Tensor:
    """Six times the centred cubic B-spline, ``relu(2 - |t|)^3 - 4 relu(1 - |t|)^3`` (support (-2, 2)): the one
    Python form of the cubic (the C and Triton kernels have their own). ``t`` may carry autograd."""
    a = t.abs()
    return (2.0 - a).clamp_min(0.0).pow(3) - 4.0 * (1.0 - a).clamp_min(0.0).pow(3)


def cardinal(u: torch.Tensor, order: int) -> torch.Tensor:
    """Cardinal B-spline N_p(u), support [0, p + 1). ``u`` may carry autograd."""
    if order == 3:
        return cubic6(u - 2.0) * (1.0 / 6.0)
    # Truncated powers on the clamped support; outside it N_p is exactly 0 (masked).
    inside = (u >= 0) & (u < order + 1)
    uc = u.clamp(0.0, float(order + 1))
    acc = torch.zeros_like(uc)
    for i in range(order + 2):
        acc = acc + ((-1) ** i * math.comb(order + 1, i)) * (uc - i).clamp_min(0.0).pow(order)
    return torch.where(inside, acc / math.factorial(order), torch.zeros_like(acc))


def cardinal_derivative(u: torch.Tensor, order: int) -> torch.Tensor:
    """dN_p/du; N_p'(u) = N_{p-1}(u) - N_{p-1}(u - 1)."""
    if order == 3:
        d = u - 2.0
        t = d.abs()
        mag = 0.5 * (2.0 - t).clamp_min(0.0).pow(2) - 2.0 * (1.0 - t).clamp_min(0.0).pow(2)
        return -torch.sign(d) * mag
    if order == 1:
        return torch.where((u >= 0) & (u < 1), torch.ones_like(u),
                           torch.where((u >= 1) & (u < 2), -torch.ones_like(u), torch.zeros_like(u)))
    return cardinal(u, order - 1) - cardinal(u - 1.0, order - 1)


def bspline_bases(x: torch.Tensor, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
                  grid_range: tuple[float, float] = GRID_RANGE) -> torch.Tensor:
    """All B-spline bases of ``x``, closed form (differentiable).

    Args:
        x: any shape ``[...]``.
    Returns:
        ``[..., grid_size + spline_order]`` in :func:`compute_dtype`; zero outside ``[t_0, t_last)``.
    """
    grid = SplineGrid.from_args(grid_size, spline_order, grid_range)
    s = (x.to(compute_dtype(x)) - grid.t0) / grid.h
    offsets = torch.arange(grid.n_bases, dtype=s.dtype, device=s.device)
    return cardinal(s.unsqueeze(-1) - offsets, grid.spline_order)


def bspline_bases_cox_de_boor(x: torch.Tensor, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
                              grid_range: tuple[float, float] = GRID_RANGE) -> torch.Tensor:
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
