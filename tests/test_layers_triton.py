"""The Triton kernels (layers/kernels/triton_ops.py, triton_kernels.py) run in Triton's interpreter on CPU: every
pass, forward and every gradient, against the reference backend in float64 and float32 (every other basis family's
passes in float64); half-precision inputs accumulate in float32; the operators pass opcheck and gradcheck, and
their fake implementations trace under torch.compile(fullgraph=True). Skipped where Triton is not installed.

Triton decides interpreted or compiled when a function is decorated (its own language's functions at its import,
ours at theirs), reading TRITON_INTERPRET then (and again when it imports more of itself): conftest.py sets it
before any test module is collected (another module may import Triton first), this module sets it again before
its own import of Triton, and within each of its tests."""
import importlib
import os
import sys

import pytest
import torch

TRITON_IMPORTED_UNINTERPRETED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
finally:
    if _BEFORE is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _BEFORE

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from nnunet_allukan.layers import KAConv2d, KAConv3d, KALinear, kernels  # noqa: E402
from nnunet_allukan.layers.kernels import reference, triton_ops  # noqa: E402
from nnunet_allukan.layers.splines import SplineGrid  # noqa: E402
from kernel_passes import pass_calls  # noqa: E402


def _interpreted_kernels() -> bool:
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        name = "nnunet_allukan.layers.kernels.triton_kernels"
        if name in sys.modules and not sys.modules[name].INTERPRETED:
            importlib.reload(sys.modules[name])
        triton_ops.reset()
        return triton_ops.interpreted()
    finally:
        if _BEFORE is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _BEFORE


INTERPRETED = _interpreted_kernels()
GRID = SplineGrid()
# Every other family the kernels have, on grids that move the scaled input's offset (chebyshev: a range not centred
# at 0) and leave padded bases (n_bases below a power of two: 6, 7, 7, 7 -> 8).
FAMILY_GRIDS = [SplineGrid(5, 1), SplineGrid(6, 2, -2.0, 1.5), SplineGrid(4, 3, -1.5, 0.5, "rbf"),
                SplineGrid(4, 3, -0.5, 1.5, "chebyshev"), SplineGrid(5, 2, basis="relu")]
FAMILY_IDS = ["bspline1", "bspline2", "rbf", "chebyshev", "relu"]


@pytest.fixture(autouse=True)
def triton_policy(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton reads it again when it imports more of itself
    assert INTERPRETED and not TRITON_IMPORTED_UNINTERPRETED, (
        f"Triton kernels not interpreted (imported before without TRITON_INTERPRET: "
        f"{TRITON_IMPORTED_UNINTERPRETED}; "
        f"{triton_ops.unavailable_reason()})")
    before = kernels.policy()
    kernels.use("triton")
    yield
    kernels.use(before)


def _assert_close(a, b, what, tol=None):
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
    tol = tol or (1e-12 if a.dtype == torch.float64 else 2e-5)
    scale = max(1.0, b.abs().max().item())
    diff = (a - b).abs().max().item()
    assert diff <= tol * scale, f"{what}: max difference {diff:.3g} of max value {scale:.3g}"


def _reference(call):
    kernels.use("reference")
    try:
        return call()
    finally:
        kernels.use("triton")


def _tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("grid", [GRID] + FAMILY_GRIDS, ids=["cubic"] + FAMILY_IDS)
def test_every_pass_is_served_by_triton_in_the_interpreter(grid):
    assert {c.backend for c in kernels.active("cpu", grid)} == {"triton"}, kernels.describe("cpu", grid)


# shapes [B, G, C, P]: positions across a block edge (64), channels across a tile (tokens: a tile of channels)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 2, 5, 67), (3, 1, 300, 1)], ids=["planes", "tokens"])
def test_basis_and_activation_passes_match_the_reference(dtype, shape):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, dtype=dtype, generator=gen) * 1.3
    x.view(-1)[:12] = torch.linspace(-2.2, 2.2, 12, dtype=dtype)  # on knots and beyond the grid
    calls = pass_calls(x, GRID, gen)
    for name, call in calls.items():
        for a, b in zip(_tuple(call()), _tuple(_reference(call))):
            _assert_close(a, b, name)


@pytest.mark.parametrize("grid", FAMILY_GRIDS, ids=FAMILY_IDS)
def test_every_family_passes_match_the_reference(grid):
    """Each family's value and derivative definitions in the kernels, float64: every pass (padded and not, the
    depthwise layers' activation sums with their gradients, grad-free and full, B' weighted by coefficients: the
    input gradient of full spline gradients), planes and tokens, and a padded 2D and a 3D convolution's window
    sums. The layers' own code is the cubic B-spline's whatever the family (the grid travels to the passes)."""
    assert {c.backend for c in kernels.active("cpu", grid)} == {"triton"}, kernels.describe("cpu", grid)
    gen = torch.Generator().manual_seed(2)
    calls = {}
    for shape in [(2, 2, 3, 67), (2, 1, 20, 1)]:
        x = torch.randn(*shape, dtype=torch.float64, generator=gen) * 1.3
        x.view(-1)[:12] = torch.linspace(-2.2, 2.2, 12, dtype=torch.float64)  # on knots and beyond the grid
        calls.update({f"{shape} {name}": call for name, call in pass_calls(x, grid, gen).items()})
    for kernel, stride, padding, dilation in [((3, 3), (2, 1), (1, 1), (1, 2)), ((3, 1, 3), (2, 1, 1), (1, 0, 2),
                                                                               (1, 1, 2))]:
        xs = torch.randn(2, 2, 3, *((9, 11) if len(kernel) == 2 else (4, 5, 7)), dtype=torch.float64, generator=gen)
        calls[f"window_sums {kernel}"] = (lambda xs=xs, k=kernel, s=stride, p=padding, d=dilation:
                                          kernels.silu_and_window_sums(xs, grid, k, s, p, d))
    for name, call in calls.items():
        for a, b in zip(_tuple(call()), _tuple(_reference(call))):
            _assert_close(a, b, f"{grid.basis} {grid.spline_order} {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("geometry", [((3, 3), (2, 1), (1, 1), (1, 2)), ((2, 3), (1, 2), (0, 1), (1, 1)),
                                      ((3, 1, 3), (2, 1, 1), (1, 0, 2), (1, 1, 2))],
                         ids=lambda g: "k{}s{}p{}d{}".format(*g))
def test_window_sums_match_the_reference(dtype, geometry):
    kernel, stride, padding, dilation = geometry
    sp = (9, 11) if len(kernel) == 2 else (4, 5, 7)
    x = torch.randn(2, 2, 3, *sp, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 1.5
    call = lambda: kernels.silu_and_window_sums(x, GRID, kernel, stride, padding, dilation)  # noqa: E731
    for a, b in zip(call(), _reference(call)):
        _assert_close(a, b, str(geometry))


def _layers():
    torch.manual_seed(0)
    return [
        (KAConv2d(6, 4, 3, padding=1, bias=True), (2, 6, 7, 5)),
        (KAConv2d(6, 6, 3, padding=1, groups=6), (2, 6, 7, 5)),  # depthwise: activation sums
        (KAConv2d(6, 6, 3, padding=1, groups=6, grad_free=False), (1, 6, 5, 4)),
        (KAConv2d(6, 4, 3, stride=2, groups=2, grad_free=False), (2, 6, 7, 5)),
        (KAConv3d(3, 2, 3, padding=1, dilation=(1, 2, 1)), (1, 3, 4, 6, 3)),
        (KALinear(7, 3), (4, 5, 7)),
        (KALinear(7, 3, grad_free=False), (3, 7)),
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layers_forward_and_every_gradient_match_the_reference(dtype):
    for layer, shape in _layers():
        layer = layer.to(dtype)
        x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(3), requires_grad=True)

        def run():
            y = layer(x)
            return (y,) + torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))

        for a, b in zip(run(), _reference(run)):
            _assert_close(a, b, repr(layer))


class _InputDtypes(TorchDispatchMode):
    """The dtype of x at every call of a Triton operator."""

    def __enter__(self):
        super().__enter__()
        return self.seen

    def __init__(self):
        super().__init__()
        self.seen = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "nnunet_allukan.triton" in str(func):
            self.seen[str(func)] = args[0].dtype
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_layers_under_autocast_match_float32(dtype, tolerance):
    """Autocast (nnU-Net's AMP): the layers hand their half-precision inputs to the Triton kernels as they are;
    forward and every gradient within the AMP tolerances of tests/test_layers_amp_compile.py (relative norm)."""
    for layer, shape in _layers():
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(5), requires_grad=True)

        def run():
            y = layer(x)
            return (y,) + torch.autograd.grad(y.float().square().sum(), [x] + list(layer.parameters()))

        want = _reference(run)
        with torch.autocast("cpu", dtype=dtype), _InputDtypes() as seen:
            got = run()
        assert got[0].dtype == dtype
        assert seen and all(d == dtype for d in seen.values()), seen  # no float32 copy of x on the way
        for a, b in zip(got, want):
            err = ((a.float() - b).norm() / b.norm()).item()
            assert err <= tolerance, f"{layer!r}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_read_as_they_are_and_summed_in_float32(dtype):
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(2, 3, 40, 33, generator=gen) * 1.3).to(dtype)
    v = torch.randn(3, GRID.n_bases, generator=gen)
    ops = torch.ops.nnunet_allukan
    silu, s = ops.triton_silu_and_basis_sums(x.view(6, 40, 33), GRID.t0, GRID.h, GRID.n_bases, True)
    assert silu.dtype == dtype and s.dtype == torch.float32
    _assert_close(s, reference.basis_sums(x.view(6, 40, 33).float(), GRID, True), "sums")
    _assert_close(silu, torch.nn.functional.silu(x.view(6, 40, 33)), "silu", tol=1e-2)
    silu, phi = ops.triton_activation_sums(x, v, GRID.t0, GRID.h, False)
    assert silu.dtype == dtype and phi.dtype == torch.float32
    _assert_close(phi, reference.activation_sums(x.float(), GRID, v, False)[1], "phi")


def _op_samples():
    gen = torch.Generator().manual_seed(6)
    x3 = torch.randn(2, 5, 7, dtype=torch.float64, generator=gen)
    x4 = torch.randn(2, 3, 4, 10, dtype=torch.float64, generator=gen)
    v = torch.randn(3, 8, dtype=torch.float64, generator=gen)
    grid = (GRID.t0, GRID.h)
    ops = torch.ops.nnunet_allukan
    return [
        (ops.triton_basis_sums, (x3.clone().requires_grad_(), *grid, 8, True, True)),
        (ops.triton_basis_sums, (x3.float().requires_grad_(), *grid, 8, False, False)),
        (ops.triton_silu_and_basis_sums, (x3.clone().requires_grad_(), *grid, 8, True)),
        (ops.triton_silu_and_basis_sums, (x3.half(), *grid, 8, False)),
        (ops.triton_basis_sums_backward, (x3, torch.randn_like(x3), torch.randn(2, 8, 7, dtype=torch.float64),
                                          *grid)),
        (ops.triton_basis_sums_backward, (x3, None, torch.randn(2, 8, 7, dtype=torch.float64), *grid)),
        (ops.triton_activation_sums, (x4.clone().requires_grad_(), v.clone().requires_grad_(), *grid, True)),
        (ops.triton_activation_sums_backward, (x4, torch.randn_like(x4), torch.randn(2, 3, 1, 10, dtype=torch.float64),
                                               v, *grid, True, True)),
        (ops.triton_activation_sums, (x4.clone().requires_grad_(), v.clone().requires_grad_(), *grid, True,
                                      "chebyshev", 3)),
    ]


def test_operators_pass_opcheck():
    for op, args in _op_samples():
        torch.library.opcheck(op, args)


def test_operators_name_a_bad_argument():
    ops, grid = torch.ops.nnunet_allukan, (GRID.t0, GRID.h)
    x = torch.randn(2, 5, 7)
    x4, v = x.reshape(2, 1, 5, 7), torch.randn(1, 8)
    bad = {
        r"x must be a 3-d floating-point tensor, got torch.float32 \(5, 7\)":
            lambda: ops.triton_basis_sums(x[0], *grid, 8, False, False),
        "x must be a 3-d floating-point tensor, got torch.int64":
            lambda: ops.triton_silu_and_basis_sums(x.long(), *grid, 8, False),
        "65 bases, the kernels' limit is 64": lambda: ops.triton_basis_sums(x, *grid, 65, False, False),
        r"v must be \[1, n_bases\], got \(2, 8\)":
            lambda: ops.triton_activation_sums(x4, torch.randn(2, 8), *grid, False),
        r"gradients of shapes \(2, 1, 5, 7\) and \(2, 1, 1, 7\)":
            lambda: ops.triton_activation_sums_backward(x4, x4, x4, v, *grid, False, False),
        r"gradients of shapes \(2, 5, 7\) and \[N, n_bases, P\], got None and \(2, 8, 6\)":
            lambda: ops.triton_basis_sums_backward(x, None, torch.randn(2, 8, 6), *grid),
    }
    for message, call in bad.items():
        with pytest.raises(ValueError, match=message):
            call()


def test_registered_autograd_is_the_exact_gradient():
    """gradcheck in float64: the spline path's gradient (B') included, v's exact."""
    gen = torch.Generator().manual_seed(8)
    x3 = (torch.randn(1, 3, 4, dtype=torch.float64, generator=gen) * 1.2).requires_grad_()
    x4 = (torch.randn(2, 2, 2, 3, dtype=torch.float64, generator=gen) * 1.2).requires_grad_()
    v = torch.randn(2, 8, dtype=torch.float64, generator=gen).requires_grad_()
    ops, grid = torch.ops.nnunet_allukan, (GRID.t0, GRID.h)
    assert torch.autograd.gradcheck(lambda x: ops.triton_basis_sums(x, *grid, 8, True, True), (x3,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: ops.triton_silu_and_basis_sums(x, *grid, 8, False), (x3,),
                                    fast_mode=True)
    assert torch.autograd.gradcheck(lambda x, w: ops.triton_activation_sums(x, w, *grid, True), (x4, v),
                                    fast_mode=True)
    # another family reaches the backward kernels
    assert torch.autograd.gradcheck(lambda x: ops.triton_basis_sums(x, *grid, 8, True, True, "rbf", 2), (x3,),
                                    fast_mode=True)
    assert torch.autograd.gradcheck(lambda x, w: ops.triton_activation_sums(x, w, *grid, True, "chebyshev", 3),
                                    (x4, v), fast_mode=True)


def test_fake_implementations_trace_a_whole_network_without_graph_breaks():
    """torch.compile(fullgraph=True) of layers on every Triton pass: the graph calls the operators (traced by
    their fake implementations, forward and backward) and gives eager's results."""
    import torch._dynamo

    torch.manual_seed(0)
    net = torch.nn.Sequential(KAConv2d(3, 4, 3, padding=1), KAConv2d(4, 4, 3, padding=1, groups=4),
                              torch.nn.Flatten(2), KALinear(20, 3))
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    expected = net(x)
    expected_grad = torch.autograd.grad(expected.sum(), x)[0]
    targets = []

    def backend(gm, example_inputs):
        for module in gm.modules():  # the autograd functions' forward and backward are subgraphs
            if isinstance(module, torch.fx.GraphModule):
                targets.extend(str(n.target) for n in module.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    try:
        y = torch.compile(net, backend=backend, fullgraph=True)(x)
        grad = torch.autograd.grad(y.sum(), x)[0]
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(grad, expected_grad)
    used = {t.split(".")[-2] for t in targets if "nnunet_allukan" in t}
    assert used >= {"triton_silu_and_basis_sums", "triton_activation_sums", "triton_basis_sums"}, targets
