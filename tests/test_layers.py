"""Properties of the KA / KAonv / KAN layers (paper Eq. 7, Sec. 3.2, KAonv closed form)."""
import itertools
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnunet_allukan.layers import (KAConv2d, KAConv3d, KALinear, KANConv2d, KANLinear, bspline_bases,
                                   bspline_bases_cox_de_boor)

TOL = dict(rtol=1e-10, atol=1e-10)


def _grads(module, x, seed=1):
    y = module(x)
    g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(seed))
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad((y * g).sum(), [x] + params)
    return y, dict(zip(["x"] + [n for n, _ in module.named_parameters()], grads))


def _pair(cls, **kw):
    torch.manual_seed(0)
    fast = cls(implementation="fast", **kw).double()
    ref = cls(implementation="reference", **kw).double()
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():  # make every parameter non-trivial (lambda starts at 1)
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _assert_same_outputs_and_grads(fast, ref, x):
    yf, gf = _grads(fast, x)
    yr, gr = _grads(ref, x)
    torch.testing.assert_close(yf, yr, **TOL)
    assert set(gf) == set(gr)
    for name in gr:
        torch.testing.assert_close(gf[name], gr[name], **TOL, msg=name)


# ------------------------------------------------------------------------------------------- bases
@pytest.mark.parametrize("grid_size,order,grid_range", [(5, 3, (-1.0, 1.0)), (7, 3, (-2.0, 0.5)), (4, 1, (0.0, 1.0)),
                                                        (6, 2, (-1.0, 1.0)), (3, 4, (-1.5, 1.5)), (5, 5, (-1.0, 1.0))])
def test_bases_match_cox_de_boor(grid_size, order, grid_range):
    h = (grid_range[1] - grid_range[0]) / grid_size
    lo, hi = grid_range[0] - (order + 1) * h, grid_range[1] + (order + 1) * h
    knots = grid_range[0] + (torch.arange(grid_size + 2 * order + 1, dtype=torch.float64) - order) * h
    x = torch.cat([torch.linspace(lo, hi, 2001, dtype=torch.float64), knots, torch.tensor([-1e6, 1e6, 0.0])])
    fast = bspline_bases(x, grid_size, order, grid_range)
    ref = bspline_bases_cox_de_boor(x, grid_size, order, grid_range)
    assert fast.shape == (x.numel(), grid_size + order)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)


def test_default_grid_facts():
    x = torch.linspace(-1, 1 - 1e-9, 501, dtype=torch.float64)
    b = bspline_bases(x)
    assert b.shape[-1] == 8
    torch.testing.assert_close(b.sum(-1), torch.ones_like(x))  # partition of unity on the grid range
    assert int((b > 0).sum(-1).max()) == 4  # cubic: at most 4 non-zero bases at any x
    b0 = bspline_bases(torch.zeros(1, dtype=torch.float64))[0]
    torch.testing.assert_close(b0, torch.tensor([0, 0, 1 / 48, 23 / 48, 23 / 48, 1 / 48, 0, 0], dtype=torch.float64))
    assert bspline_bases(torch.tensor([-2.2, 2.2, 5.0], dtype=torch.float64)).abs().max() < 1e-15


def test_bases_float32_and_bf16_inputs():
    x = torch.randn(1000)
    torch.testing.assert_close(bspline_bases(x), bspline_bases_cox_de_boor(x.double()).float(), atol=1e-6, rtol=0)
    assert bspline_bases(x.bfloat16()).dtype == torch.float32


# ------------------------------------------------------------------------------------------- KALinear
def _ka_linear_naive(x, u, v, lam=None, bias=None):
    b = bspline_bases_cox_de_boor(x)  # [N, in, 8]
    if lam is not None:
        b = b * lam[:, None]
    y = F.silu(x) @ u.T + b.sum(1) @ v.T
    return y if bias is None else y + bias


@pytest.mark.parametrize("use_lambda,bias", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("grad_free", [True, False])
def test_ka_linear_is_eq7(use_lambda, bias, grad_free):
    torch.manual_seed(0)
    m = KALinear(13, 7, bias=bias, use_lambda=use_lambda, grad_free=grad_free, chunk_size=4).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(5, 3, 13, dtype=torch.float64, requires_grad=True)
    y = m(x)
    assert y.shape == (5, 3, 7)
    ref = _ka_linear_naive(x.reshape(-1, 13), m.u, m.v, m.lam, m.bias).reshape(5, 3, 7)
    torch.testing.assert_close(y, ref, **TOL)
    g = torch.randn_like(y)
    gx, gv = torch.autograd.grad((y * g).sum(), [x, m.v])
    gx_ref, gv_ref = torch.autograd.grad((ref * g).sum(), [x, m.v])
    torch.testing.assert_close(gv, gv_ref, **TOL)  # Eq. 9: v's gradient is exact either way
    if grad_free:
        gx_silu = torch.autograd.grad((F.silu(x) @ m.u.T * g).sum(), x)[0]
        torch.testing.assert_close(gx, gx_silu, **TOL)  # only G_L of Eq. 11
    else:
        torch.testing.assert_close(gx, gx_ref, **TOL)


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (16, 32), (160, 160)])
def test_ka_linear_parameter_count(n_in, n_out):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(KALinear(n_in, n_out)) == n_in * n_out + 8 * n_out
    assert count(KALinear(n_in, n_out, bias=True)) == n_in * n_out + 8 * n_out + n_out
    assert count(KALinear(n_in, n_out, use_lambda=True)) == n_in * n_out + 8 * n_out + n_in
    assert count(KALinear(n_in, n_out, grid_size=7, spline_order=2)) == n_in * n_out + 9 * n_out


# ------------------------------------------------------------------------------------------- KAConv fast == reference
CASES_2D = [dict(kernel_size=k, stride=s, padding=p, groups=g, grad_free=gf)
            for k, s, p, g, gf in itertools.product([1, 3, 5], [1, 2], [0, 1, 2], ["1", "C", "other"], [True, False])]


def _resolve_groups(g, c_in, c_out):
    return {"1": 1, "C": c_in, "other": 2}[g]


@pytest.mark.parametrize("case", CASES_2D, ids=lambda c: "k{kernel_size}s{stride}p{padding}g{groups}gf{grad_free:d}".format(**c))
def test_kaconv2d_fast_equals_reference(case):
    case = dict(case)
    c_in = 4
    c_out = 4 if case["groups"] == "C" else 6  # depthwise keeps C; otherwise C_in != C_out
    case["groups"] = _resolve_groups(case["groups"], c_in, c_out)
    fast, ref = _pair(KAConv2d, in_channels=c_in, out_channels=c_out, chunk_size=3, **case)
    x = torch.randn(2, c_in, 9, 8, dtype=torch.float64, requires_grad=True)
    _assert_same_outputs_and_grads(fast, ref, x)
    assert fast(x).shape == nn.Conv2d(c_in, c_out, case["kernel_size"], case["stride"], case["padding"],
                                      groups=case["groups"])(x.float()).shape


CASES_3D = [dict(kernel_size=k, stride=s, padding=p, groups=g, grad_free=gf)
            for k, s, p, g, gf in [(3, 1, 1, "1", True), (3, 2, 0, "C", False), (1, 1, 0, "other", True),
                                   (3, 1, 2, "other", False), (5, 2, 2, "1", False), (3, 2, 1, "C", True)]]


@pytest.mark.parametrize("case", CASES_3D, ids=lambda c: "k{kernel_size}s{stride}p{padding}g{groups}gf{grad_free:d}".format(**c))
def test_kaconv3d_fast_equals_reference(case):
    case = dict(case)
    c_in = 4
    c_out = 4 if case["groups"] == "C" else 6
    case["groups"] = _resolve_groups(case["groups"], c_in, c_out)
    fast, ref = _pair(KAConv3d, in_channels=c_in, out_channels=c_out, chunk_size=3, **case)
    x = torch.randn(2, c_in, 6, 7, 6, dtype=torch.float64, requires_grad=True)
    _assert_same_outputs_and_grads(fast, ref, x)


@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("extras", [dict(use_lambda=True, bias=True), dict(dilation=2, padding=2),
                                    dict(use_lambda=True, dilation=(1, 2), padding=(1, 2), groups=2)])
def test_kaconv2d_options_fast_equals_reference(grad_free, extras):
    kw = dict(in_channels=4, out_channels=6, kernel_size=3, stride=1, padding=1, chunk_size=1)
    kw.update(extras)
    fast, ref = _pair(KAConv2d, grad_free=grad_free, **kw)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    _assert_same_outputs_and_grads(fast, ref, x)


def test_reference_is_the_unfolded_ka_layer():
    """The reference KAonv is literally a KA layer on each zero-padded receptive field."""
    torch.manual_seed(0)
    conv = KAConv2d(3, 5, 3, stride=2, padding=1, implementation="reference").double()
    lin = KALinear(27, 5).double()
    lin.u.data.copy_(conv.u.data.reshape(5, 27))
    lin.v.data.copy_(conv.v.data)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    cols = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2)  # [B, L, 27], zero padding included
    ref = lin(cols).transpose(1, 2).reshape(2, 5, 4, 4)
    torch.testing.assert_close(conv(x), ref, **TOL)


# ------------------------------------------------------------------------------------------- grad-free properties
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_grad_free_input_gradient_is_silu_path(impl):
    torch.manual_seed(0)
    m = KAConv2d(4, 6, 3, stride=2, padding=1, groups=2, implementation=impl).double()
    x = torch.randn(2, 4, 10, 9, dtype=torch.float64, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    gx = torch.autograd.grad((y * g).sum(), x)[0]
    silu_only = F.conv2d(F.silu(F.pad(x, (1, 1, 1, 1))), m.u, stride=2, groups=2)
    gx_silu = torch.autograd.grad((silu_only * g).sum(), x)[0]
    torch.testing.assert_close(gx, gx_silu, **TOL)


def test_grad_free_keeps_exact_parameter_gradients():
    """Eq. 9: detaching the bases changes neither u's nor v's gradient, only x's."""
    torch.manual_seed(0)
    a = KAConv2d(4, 6, 3, padding=1, grad_free=True).double()
    b = KAConv2d(4, 6, 3, padding=1, grad_free=False).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    _, ga = _grads(a, x)
    _, gb = _grads(b, x)
    torch.testing.assert_close(ga["u"], gb["u"], **TOL)
    torch.testing.assert_close(ga["v"], gb["v"], **TOL)
    assert (ga["x"] - gb["x"]).abs().max() > 1e-6  # the spline-path input gradient G_S is really dropped


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("grad_free", [True, False])
def test_results_do_not_depend_on_chunk_size(impl, grad_free):
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    results = []
    for chunk in [None, 1, 3, 4, 8, 100]:
        torch.manual_seed(0)
        m = KAConv2d(8, 8, 3, padding=1, groups=2, implementation=impl, grad_free=grad_free,
                     chunk_size=chunk).double()
        results.append(_grads(m, x))
    for y, g in results[1:]:
        torch.testing.assert_close(y, results[0][0], **TOL)
        for name in g:
            torch.testing.assert_close(g[name], results[0][1][name], **TOL)


def test_state_dict_round_trip_between_implementations():
    torch.manual_seed(0)
    fast = KAConv2d(4, 6, 3, padding=1, use_lambda=True, bias=True)
    ref = KAConv2d(4, 6, 3, padding=1, use_lambda=True, bias=True, implementation="reference")
    ref.load_state_dict(fast.state_dict(), strict=True)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    back = KAConv2d(4, 6, 3, padding=1, use_lambda=True, bias=True)
    back.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(back(x), fast(x))
    torch.testing.assert_close(ref(x), fast(x), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("c_in,c_out,k,groups", [(3, 16, 3, 1), (128, 128, 3, 128), (12, 8, 5, 4), (16, 1, 1, 1)])
def test_conv_parameter_counts(c_in, c_out, k, groups):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    edges = c_out * (c_in // groups) * k * k
    assert count(KAConv2d(c_in, c_out, k, groups=groups)) == edges + 8 * c_out
    assert count(KAConv2d(c_in, c_out, k, groups=groups, bias=True)) == edges + 9 * c_out
    assert count(KAConv2d(c_in, c_out, k, groups=groups, use_lambda=True)) == edges + 8 * c_out + c_in * k * k
    assert count(KAConv3d(c_in, c_out, k, groups=groups)) == edges * k + 8 * c_out
    assert count(KANConv2d(c_in, c_out, k, groups=groups)) == 10 * edges


def test_kan_linear_parameter_count():
    assert sum(p.numel() for p in KANLinear(160, 256).parameters()) == 10 * 160 * 256


# ------------------------------------------------------------------------------------------- vanilla KAN
@pytest.mark.parametrize("grad_free", [False, True])
def test_kan_linear_is_per_edge_kan(grad_free):
    torch.manual_seed(0)
    m = KANLinear(6, 4, grad_free=grad_free).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = bspline_bases_cox_de_boor(x)  # [N, in, 8]
    ref = F.silu(x) @ m.base_weight.T + torch.einsum("njk,ijk,ij->ni", b, m.spline_weight, m.spline_scaler)
    y = m(x)
    torch.testing.assert_close(y, ref, **TOL)
    gx = torch.autograd.grad(y.sum(), x)[0]
    if grad_free:
        torch.testing.assert_close(gx, torch.autograd.grad((F.silu(x) @ m.base_weight.T).sum(), x)[0], **TOL)
    else:
        torch.testing.assert_close(gx, torch.autograd.grad(ref.sum(), x)[0], **TOL)


@pytest.mark.parametrize("grad_free", [False, True])
@pytest.mark.parametrize("k,s,p,g", [(3, 1, 1, 1), (3, 2, 1, 2), (1, 1, 0, 1), (3, 1, 0, 4)])
def test_kanconv2d_fast_equals_reference(grad_free, k, s, p, g):
    fast, ref = _pair(KANConv2d, in_channels=4, out_channels=8, kernel_size=k, stride=s, padding=p, groups=g,
                      grad_free=grad_free)
    x = torch.randn(2, 4, 7, 8, dtype=torch.float64, requires_grad=True)
    _assert_same_outputs_and_grads(fast, ref, x)


# ------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("cls", [KAConv2d, KANConv2d])
def test_float32_matches_float64(cls):
    torch.manual_seed(0)
    m = cls(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 16, 16)
    y32 = m(x)
    y64 = m.double()(x.double())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_autocast_bfloat16_runs(impl):
    torch.manual_seed(0)
    conv = KAConv2d(8, 8, 3, padding=1, implementation=impl)
    lin = KALinear(8, 4)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    ref = lin(conv(x).permute(0, 2, 3, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(conv(x).permute(0, 2, 3, 1))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all() and conv.u.grad.dtype == torch.float32 and torch.isfinite(conv.v.grad).all()
    rel = (y.float() - ref).norm() / ref.norm()
    assert rel < 0.05


# ------------------------------------------------------------------------------------------- drop-in shape rules / errors
@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=(3, 5), padding=(1, 2)),
                                dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, dilation=2, padding=2),
                                dict(kernel_size=3, padding="same"), dict(kernel_size=4, stride=3, padding="valid")])
def test_same_output_shape_as_nn_conv2d(kw):
    x = torch.randn(1, 4, 17, 12)
    assert KAConv2d(4, 6, **kw)(x).shape == nn.Conv2d(4, 6, **kw)(x).shape


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="divisible by groups"):
        KAConv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="chunk_size"):
        KAConv2d(4, 4, 3, chunk_size=0)
    with pytest.raises(ValueError, match="implementation"):
        KAConv2d(4, 4, 3, implementation="slow")
    with pytest.raises(ValueError, match="spline_order"):
        KALinear(4, 4, spline_order=0)
    with pytest.raises(ValueError, match="lo < hi"):
        KALinear(4, 4, grid_range=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"expects input \[B, 4"):
        KAConv2d(4, 4, 3)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="last dimension 4"):
        KALinear(4, 4)(torch.randn(2, 5))


def test_fast_backward_keeps_only_the_input():
    """The fast KAonv's autograd node saves x, u, v (like nn.Conv2d), never silu(x) or the bases."""
    m = KAConv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    y = m(x)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()
    assert math.prod(y.shape) == x.numel()


@pytest.mark.parametrize("order,grid_size", [(1, 4), (2, 6), (4, 3)])
def test_non_cubic_grids_fast_equals_reference(order, grid_size):
    """The non-cubic kernel path (truncated powers) through the fast and the reference KAonv."""
    kw = dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, spline_order=order, grid_size=grid_size,
              grid_range=(-1.5, 1.0), chunk_size=2)
    fast, ref = _pair(KAConv2d, **kw)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    _assert_same_outputs_and_grads(fast, ref, x)
