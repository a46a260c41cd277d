"""The basis families of the KA layers (splines.py): each family's definition against an independent form of it
(its source's formula), derivatives against autograd, B(0) for padding, parameter count and state_dict per
family, and the kernel backends' choice (C and Triton kernels for every family, B-splines of order 1 to 3)."""
import math

import pytest
import torch

from nnunet_allukan.layers import KAConv2d, KAConvTranspose2d, KALinear, kernels
from nnunet_allukan.layers.kernels import native, triton_ops
from nnunet_allukan.layers.splines import (BASES, SplineGrid, basis_derivative_terms, bspline_bases_cox_de_boor,
                                           grid_bases)

X = torch.cat([torch.linspace(-3.0, 3.0, 1201, dtype=torch.float64), torch.tensor([-1e4, 0.0, 1e4]).double()])


def _independent(grid: SplineGrid, x: torch.Tensor) -> torch.Tensor:
    """Each family as its source writes it, from the grid's knots (no code shared with splines.py's forms)."""
    n, p, h = grid.n_bases, grid.spline_order, grid.h
    knots = grid.knots()
    if grid.basis == "bspline":
        return bspline_bases_cox_de_boor(x, grid.grid_size, p, (grid.lo, grid.hi))
    if grid.basis == "rbf":  # FastKAN: exp(-((x - c) / d)^2), d = the distance between centres
        centres = knots[:n] + (p + 1) * h / 2
        return torch.exp(-((x[:, None] - centres) / h) ** 2)
    if grid.basis == "chebyshev":  # ChebyKAN: cos(k arccos(tanh x)) on the range mapped to (-1, 1)
        z = torch.tanh((x - (grid.lo + grid.hi) / 2) / ((grid.hi - grid.lo) / 2)).clamp(-1.0, 1.0)
        return torch.cos(torch.arange(n, dtype=x.dtype) * torch.arccos(z)[:, None])
    # ReLU-KAN: r * (relu(e - x) * relu(x - s))^2, r = 16 / (e - s)^4, on the B-spline's support [t_k, t_{k+p+1}]
    s, e = knots[:n], knots[p + 1: p + 1 + n]
    return 16 / (e - s) ** 4 * (torch.relu(e - x[:, None]) * torch.relu(x[:, None] - s)) ** 2


@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("grid_args", [(5, 3, -1.0, 1.0), (4, 1, 0.0, 2.0), (6, 2, -2.0, 0.5)],
                         ids=["default", "order1", "order2"])
def test_family_definitions_match_their_sources_and_autograd(basis, grid_args):
    grid = SplineGrid(*grid_args, basis=basis)
    x = X.clone().requires_grad_()
    bases = grid_bases(x, grid)
    assert bases.shape == (X.numel(), grid.grid_size + grid.spline_order)
    torch.testing.assert_close(bases, _independent(grid, X), rtol=0, atol=1e-12)
    terms, scale = basis_derivative_terms(X, grid)
    derivative = torch.stack(list(terms), -1) * scale
    inside = X.abs() < 100  # autograd of tanh / exp far out is 0 or nan-free but not informative
    autograd = torch.stack([torch.autograd.grad(bases[:, k].sum(), x, retain_graph=True)[0]
                            for k in range(grid.n_bases)], -1)
    torch.testing.assert_close(derivative[inside], autograd[inside], rtol=0, atol=1e-11)
    assert torch.isfinite(derivative).all()
    torch.testing.assert_close(torch.tensor(grid.zero_bases, dtype=torch.float64),
                               _independent(grid, torch.zeros(1, dtype=torch.float64))[0], rtol=0, atol=1e-15)


def test_grids_are_keyed_by_their_family():
    grids = {SplineGrid(basis=b) for b in BASES} | {SplineGrid()}
    assert len(grids) == len(BASES) and SplineGrid() == SplineGrid(basis="bspline")
    assert SplineGrid(basis="rbf").zero_bases != SplineGrid().zero_bases
    with pytest.raises(ValueError, match="basis must be one of bspline, rbf, chebyshev, relu, got 'gauss'"):
        SplineGrid(basis="gauss")


@pytest.mark.parametrize("make", [lambda b: KAConv2d(4, 6, 3, padding=1, basis=b),
                                  lambda b: KALinear(5, 3, basis=b), lambda b: KAConvTranspose2d(4, 3, 2, basis=b)],
                         ids=["KAConv2d", "KALinear", "KAConvTranspose2d"])
def test_every_family_has_the_state_dict_and_parameter_count_of_the_bspline_layer(make):
    shapes = {name: t.shape for name, t in make("bspline").state_dict().items()}
    for basis in BASES[1:]:
        layer = make(basis)
        assert layer.basis == basis and f"basis='{basis}'" in repr(layer)
        assert {name: t.shape for name, t in layer.state_dict().items()} == shapes
        layer.load_state_dict(make("bspline").state_dict())
    assert "basis" not in repr(make("bspline"))


@pytest.mark.parametrize("grid", [SplineGrid(basis=b) for b in BASES[1:]] + [SplineGrid(5, 1), SplineGrid(5, 2)],
                         ids=list(BASES[1:]) + ["bspline1", "bspline2"])
def test_both_kernel_backends_serve_every_family(grid):
    triton = triton_ops.available()
    assert triton_ops.covers("basis_sums", "cuda", grid) == (None if triton else triton_ops.unavailable_reason())
    if native.available():
        assert native.covers("basis_sums", "cpu", grid) is None
    for backend in (native, triton_ops):  # B-splines of higher orders: the torch backend
        assert backend.covers("basis_sums", "cpu", SplineGrid(5, 4)).startswith("spline order 4 (")
    before = kernels.policy()
    try:
        kernels.use("auto")
        on_cpu = {c.kernel: c.backend for c in kernels.active("cpu", grid)}
        assert on_cpu.pop("basis_derivative_dot") == "torch"
        assert set(on_cpu.values()) == {"native" if native.available() else "torch"}
        assert {c.backend for c in kernels.active("cuda", grid)} == {"triton" if triton else "torch"}
    finally:
        kernels.use(before)


@pytest.mark.parametrize("basis", BASES[1:])
def test_padding_adds_each_familys_value_at_zero(basis):
    """A zero-padded border sees B(0) of its family (nonzero for every family here), as the reference does."""
    torch.manual_seed(0)
    fast = KAConv2d(2, 3, 3, padding=2, basis=basis).double()
    ref = KAConv2d(2, 3, 3, padding=2, basis=basis, implementation="reference").double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    assert any(abs(b) > 0.1 for b in fast.grid.zero_bases)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-10, atol=1e-12)
    assert math.isfinite(fast(x * 1e4).abs().max().item())


def test_native_operators_refuse_an_unknown_family():
    if not native.available():
        pytest.skip(native.unavailable_reason())
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"family must be one of \[0, 1, 2, 3, 4, 5\] \(bspline3, rbf, chebyshev, "
                                         r"relu, bspline1, bspline2\)"):
        torch.ops.nnunet_allukan.basis_sums(x, 0.0, 1.0, 8, None, False, 7, 0.0)
