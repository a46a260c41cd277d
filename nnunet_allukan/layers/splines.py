"""B-spline bases on a uniform grid, in closed form (the mathematics every kernel backend shares).

The KA layers (paper Eq. 7) need, for every input value x, the ``n_bases = grid_size + spline_order``
B-spline bases B_k(x) of a uniform knot vector extended by ``spline_order`` knots on each side::

    h = (hi - lo) / grid_size,   t_i = lo + (i - spline_order) * h,   i = 0 .. grid_size + 2 * spline_order

On a uniform grid every basis is a shifted cardinal B-spline, B_k(x) = N_p((x - t_k) / h), and N_p has a
closed form, so no Cox-de Boor recursion is needed. For the default cubic case (p = 3) the centred form
``beta3(t) = (relu(2 - |t|)^3 - 4 relu(1 - |t|)^3) / 6`` with ``t = (x - t_k) / h - 2`` is used; other
orders use the truncated-power form ``N_p(u) = sum_i (-1)^i C(p+1, i) relu(u - i)^p / p!`` on the
clamped support. :func:`bspline_bases_cox_de_boor` is the textbook recursion, kept as the tests' oracle.

The closed form of the KA layers holds for any family of bases shared by all inputs, so the grid also names its
family (``basis``); every family has ``n_bases = grid_size + spline_order`` bases (the same parameter count):

- ``bspline``: the B-splines above (the paper's);
- ``rbf``: Gaussian bumps ``exp(-((x - c_k) / h)^2)`` centred where B_k is (``c_k = t_k + (p + 1) h / 2``), width
  the knot spacing h (FastKAN's choice: width = distance between centres);
- ``chebyshev``: ``T_k(tanh((x - m) / r))``, k = 0 .. n_bases - 1, m and r the grid range's centre and half-width
  (ChebyKAN's ``T_k(tanh x)`` on the default range (-1, 1));
- ``relu``: ReLU-KAN's ``(16 / (e - s)^4) (relu(e - x) relu(x - s))^2`` on B_k's support ``[s, e) =
  [t_k, t_{k+p+1})``, peak 1 at its centre.

:func:`basis_terms` and :func:`basis_derivative_terms` are the one Python definition of each family (values and
derivatives, one basis at a time, a constant factor applied after the caller's reduction); :func:`grid_bases`
stacks them, and the grid's ``zero_bases`` (B_k(0), what zero padding adds) come from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..paper import GRID_RANGE, GRID_SIZE, SPLINE_ORDER

__all__ = ["BASES", "SplineGrid", "basis_derivative_terms", "basis_terms", "bspline_bases",
           "bspline_bases_cox_de_boor", "cardinal", "cardinal_derivative", "compute_dtype", "cubic6", "grid_bases"]

# The basis families a grid can have (see the module docstring); "bspline" is the paper's.
BASES = ("bspline", "rbf", "chebyshev", "relu")


# SplineGrid.zero_bases_tensor's tensors, keyed on (grid, device, dtype): a few per process.
_ZERO_BASES: dict = {}


@dataclass(frozen=True)
class SplineGrid:
    """A uniform grid: ``grid_size`` intervals on ``[lo, hi]``, ``grid_size + spline_order`` bases of the family
    ``basis`` (B-splines of order ``spline_order`` by default; see the module docstring for the others)."""

    grid_size: int = GRID_SIZE
    spline_order: int = SPLINE_ORDER
    lo: float = GRID_RANGE[0]
    hi: float = GRID_RANGE[1]
    basis: str = "bspline"
    # B_k(0) for every basis: what one zero-padded input adds to the spline sums (computed once, a plain tuple).
    zero_bases: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if int(self.grid_size) != self.grid_size or self.grid_size < 1:
            raise ValueError(f"grid_size must be a positive integer, got {self.grid_size!r}")
        if int(self.spline_order) != self.spline_order or self.spline_order < 1:
            raise ValueError(f"spline_order must be an integer >= 1, got {self.spline_order!r}")
        if not float(self.hi) > float(self.lo):
            raise ValueError(f"grid_range must satisfy lo < hi, got ({self.lo}, {self.hi})")
        if self.basis not in BASES:
            raise ValueError(f"basis must be one of {', '.join(BASES)}, got {self.basis!r}")
        # On the CPU whatever the default device: a few float64 values, once per grid.
        with torch.no_grad():
            zero = grid_bases(torch.zeros((), dtype=torch.float64, device="cpu"), self)
        object.__setattr__(self, "zero_bases", tuple(float(b) for b in zero.tolist()))

    @classmethod
    def from_args(cls, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
                  grid_range: tuple[float, float] = GRID_RANGE, basis: str = "bspline") -> "SplineGrid":
        if len(grid_range) != 2:
            raise ValueError(f"grid_range must be (lo, hi), got {grid_range!r}")
        return cls(int(grid_size), int(spline_order), float(grid_range[0]), float(grid_range[1]), str(basis))

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

    def kernel_scaling(self) -> tuple[float, float]:
        """(offset, width) of the kernels' scaled input ``s = (x - offset) / width``, in which basis k of a local
        family is centred at ``s = k + (spline_order + 1) / 2``: the first knot and the knot spacing; for
        chebyshev the range's centre and half-width (its bases are ``T_k(tanh s)``)."""
        if self.basis == "chebyshev":
            return 0.5 * (self.lo + self.hi), 0.5 * (self.hi - self.lo)
        return self.t0, self.h

    def zero_bases_tensor(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """:attr:`zero_bases` as a tensor [n_bases], made once per (grid, dtype, device) and shared: a tensor made
        from Python values at every call is a blocking copy from pageable host memory, which waits for the device's
        queue to drain. Read-only for callers. Inside a compiled region it is computed on the device instead (no
        constant copied in at every call of the compiled graph, and no cache entry made of traced values)."""
        if torch.compiler.is_compiling():
            return grid_bases(torch.zeros((), dtype=dtype, device=device), self)
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


def basis_terms(x: torch.Tensor, grid: SplineGrid) -> tuple[Iterator[torch.Tensor], float]:
    """The bases of ``x`` one at a time: ``(terms, scale)`` with ``B_k(x) = scale * terms[k]``, k = 0 .. n_bases - 1
    (the constant scale is left to the caller, to apply once after a sum). ``x`` in the dtype to compute in; it
    may carry autograd. Each term is a new tensor of x's shape."""
    p = grid.spline_order
    if grid.basis == "chebyshev":
        m, r = grid.kernel_scaling()
        return _chebyshev(torch.tanh((x - m) * (1.0 / r)), grid.n_bases, False), 1.0
    s = (x - grid.t0) * (1.0 / grid.h)
    if grid.basis == "bspline":
        if p == 3:  # the centred cubic, 6 B_k
            return (cubic6(s - (k + 2.0)) for k in range(grid.n_bases)), 1.0 / 6.0
        return (cardinal(s - k, p) for k in range(grid.n_bases)), 1.0
    if grid.basis == "rbf":
        return (torch.exp(-(s - (k + 0.5 * (p + 1))).square()) for k in range(grid.n_bases)), 1.0
    # relu: (relu(e - x) relu(x - s))^2 with e - s = (p + 1) h, times 16 / (p + 1)^4, in units of h; with u = s - the
    # centre and c = (p + 1) / 2 the product relu(c - u) relu(c + u) is relu(c^2 - u^2): fewer tensor operations.
    c = 0.5 * (p + 1)
    return ((c * c - (s - (k + c)).square()).clamp_min(0.0).square() for k in range(grid.n_bases)), 1.0 / c ** 4


def basis_derivative_terms(x: torch.Tensor, grid: SplineGrid) -> tuple[Iterator[torch.Tensor], float]:
    """The derivatives dB_k/dx one at a time, as :func:`basis_terms`: ``(terms, scale)``,
    ``B'_k(x) = scale * terms[k]``."""
    p = grid.spline_order
    if grid.basis == "chebyshev":
        m, r = grid.kernel_scaling()
        z = torch.tanh((x - m) * (1.0 / r))
        dz = 1.0 - z.square()  # r dz/dx
        return (t * dz for t in _chebyshev(z, grid.n_bases, True)), 1.0 / r
    s = (x - grid.t0) * (1.0 / grid.h)
    if grid.basis == "bspline":
        return (cardinal_derivative(s - k, p) for k in range(grid.n_bases)), 1.0 / grid.h
    if grid.basis == "rbf":
        def rbf_derivative(d: torch.Tensor) -> torch.Tensor:
            return -2.0 * d * torch.exp(-d.square())
        return (rbf_derivative(s - (k + 0.5 * (p + 1))) for k in range(grid.n_bases)), 1.0 / grid.h

    def relu_derivative(k: int) -> torch.Tensor:  # d/ds (a b)^2 = 2 a b (a - b), a = relu(e - s), b = relu(s - k)
        a, b = ((k + p + 1.0) - s).clamp_min(0.0), (s - k).clamp_min(0.0)
        return 2.0 * a * b * (a - b)
    return (relu_derivative(k) for k in range(grid.n_bases)), 16.0 / (p + 1) ** 4 / grid.h


def _chebyshev(z: torch.Tensor, n: int, derivative: bool) -> Iterator[torch.Tensor]:
    """T_0(z) .. T_{n-1}(z) by the recurrence ``T_{k+1} = 2 z T_k - T_{k-1}``, or their derivatives dT_k/dz by the
    recurrence's derivative ``T'_{k+1} = 2 T_k + 2 z T'_k - T'_{k-1}`` (which needs the T_k too)."""
    t_prev, t = torch.ones_like(z), z
    if not derivative:
        yield t_prev
        for k in range(1, n):
            yield t
            if k + 1 < n:
                t_prev, t = t, 2.0 * z * t - t_prev
        return
    d_prev, d = torch.zeros_like(z), torch.ones_like(z)
    yield d_prev
    for k in range(1, n):
        yield d
        if k + 1 < n:
            t_prev, t, d_prev, d = t, 2.0 * z * t - t_prev, d, 2.0 * t + 2.0 * z * d - d_prev


def grid_bases(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """All bases of ``grid``'s family at ``x`` (any shape) -> ``[..., n_bases]`` in :func:`compute_dtype`
    (differentiable; the dense form the reference backend and the literal layers use)."""
    terms, scale = basis_terms(x.to(compute_dtype(x)), grid)
    return torch.stack(list(terms), -1) * scale


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
