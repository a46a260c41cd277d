"""The fast KAonv (one convolution of the augmented input) equals the unfold reference in float64, forward and
every gradient: the cases test_layers.py does not reach (groups with one output, 3D options)."""
import pytest
import torch

from nnunet_allukan.layers import KAConv2d, KAConv3d, KALinear
from test_layers import _assert_same_outputs_and_grads, _pair


@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("kw", [
    dict(in_channels=4, out_channels=1, kernel_size=1),                      # final 1x1 head, one class
    dict(in_channels=4, out_channels=1, kernel_size=3, padding=1),           # one output, padded
    dict(in_channels=4, out_channels=2, kernel_size=3, padding=1, groups=2),  # 2 inputs, 1 output per group
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=2, dilation=2, stride=2, groups=6),  # depthwise
    dict(in_channels=3, out_channels=5, kernel_size=(3, 1), padding=(1, 0)),  # anisotropic kernel
], ids=["1x1-one-output", "one-output-padded", "grouped-one-output", "depthwise-dilated-strided", "k3x1"])
def test_kaconv2d_one_output_groups_and_odd_shapes(grad_free, kw):
    fast, ref = _pair(KAConv2d, grad_free=grad_free, bias=True, **kw)
    x = torch.randn(2, kw["in_channels"], 9, 8, dtype=torch.float64, requires_grad=True)
    _assert_same_outputs_and_grads(fast, ref, x)


def test_kaconv2d_inputs_far_outside_the_grid():
    """Inputs beyond the grid (all bases 0) and exactly on knots, with padding (the B(0) shift)."""
    fast, ref = _pair(KAConv2d, in_channels=3, out_channels=4, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64) * 4
    x[0, 0, :3] = torch.tensor([-1.0, -0.6, 0.2, 1.0, 2.2, -2.2, 0.0], dtype=torch.float64)
    _assert_same_outputs_and_grads(fast, ref, x.requires_grad_())


CASES_3D = {
    "dilation": dict(kernel_size=3, padding=2, dilation=2),
    "anisotropic-dilation-stride": dict(kernel_size=(3, 1, 3), padding=(1, 0, 2), dilation=(1, 1, 2), stride=(2, 1, 1)),
    "lambda-groups": dict(kernel_size=3, padding=1, groups=2, use_lambda=True),
    "lambda-depthwise-stride": dict(kernel_size=3, padding=1, stride=2, groups="C", use_lambda=True),
    "depthwise-dilation": dict(kernel_size=3, padding=2, dilation=2, groups="C"),
    "bias-one-output": dict(kernel_size=3, padding=1, out_channels=1, bias=True),
    "same-padding": dict(kernel_size=3, padding="same", groups=2, bias=True),
}


@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("name", list(CASES_3D))
def test_kaconv3d_options_fast_equals_reference(name, grad_free):
    kw = dict(in_channels=4, out_channels=6, chunk_size=3)
    kw.update(CASES_3D[name])
    if kw.get("groups") == "C":
        kw["groups"] = kw["out_channels"] = kw["in_channels"]
    fast, ref = _pair(KAConv3d, grad_free=grad_free, **kw)
    x = torch.randn(2, 4, 6, 7, 5, dtype=torch.float64, requires_grad=True)
    _assert_same_outputs_and_grads(fast, ref, x)


@pytest.mark.parametrize("grad_free", [True, False])
def test_ka_linear_fast_path_gradients_of_every_parameter(grad_free):
    """KALinear without lambda (one GEMM of [silu(x), S(x)]) against the literal grouped KA layer."""
    torch.manual_seed(0)
    m = KALinear(11, 5, bias=True, grad_free=grad_free).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 3, 11, dtype=torch.float64, requires_grad=True)
    from nnunet_allukan.layers.ka_grouped import ka_grouped
    y = m(x)
    ref = ka_grouped(x.reshape(-1, 1, 11), m.u[None], m.v[None], None, m.grid, grad_free, None,
                     literal=True).reshape(4, 3, 5) + m.bias
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), [x, m.u, m.v, m.bias])
    want = torch.autograd.grad((ref * g).sum(), [x, m.u, m.v, m.bias])
    for a, b, name in zip(got, want, ["x", "u", "v", "bias"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def _saved_tensor_count(layer, x):
    """How many tensors autograd keeps for backward during one forward of ``layer``."""
    count = [0]

    def pack(t):
        count[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return out, count[0]


@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("kw, keeps", [
    (dict(in_channels=32, out_channels=6, kernel_size=3, padding=1), True),              # P = 8/32 of x: kept
    (dict(in_channels=64, out_channels=4, kernel_size=3, padding=1, groups=2), True),     # 32 per group: kept
    (dict(in_channels=32, out_channels=6, kernel_size=3, stride=2, padding=1), True),     # strided: P smaller still
    (dict(in_channels=16, out_channels=6, kernel_size=3, padding=1), False),              # 8/16 of x: recomputed
], ids=["wide-kept", "grouped-kept", "strided-kept", "narrow-recomputed"])
def test_kaconv2d_window_sums_kept_for_backward_when_small(grad_free, kw, keeps):
    """Wide layers keep the window sums P from forward (backward skips the basis pass); both paths equal the
    unfold reference in float64."""
    fast, ref = _pair(KAConv2d, grad_free=grad_free, **kw)
    x = torch.randn(2, kw["in_channels"], 6, 5, dtype=torch.float64, requires_grad=True)
    _, saved = _saved_tensor_count(fast, x)
    assert saved == (4 if keeps else 3)  # x, u, v (+ P)
    _assert_same_outputs_and_grads(fast, ref, x)
    with torch.no_grad():
        _, saved = _saved_tensor_count(fast, x)
    assert saved == 0
    fast.v.requires_grad_(False)  # frozen v: P is not needed in backward, so not kept
    _, saved = _saved_tensor_count(fast, x)
    assert saved == 3


# Every family outside the paper's B-splines (bspline is every test above), through the same closed form:
# grouped/strided/dilated/padded, depthwise and one-output groups (activation sums), 3D, lambda, KALinear.
FAMILY_CASES = {
    "2d-grouped-strided-dilated": (KAConv2d, dict(in_channels=4, out_channels=6, kernel_size=3, padding=2,
                                                  dilation=2, stride=(2, 1), groups=2, bias=True)),
    "2d-depthwise": (KAConv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4)),
    "3d-anisotropic": (KAConv3d, dict(in_channels=3, out_channels=4, kernel_size=(3, 1, 3), padding=(1, 0, 2),
                                      dilation=(1, 1, 2))),
    "3d-depthwise-lambda": (KAConv3d, dict(in_channels=3, out_channels=3, kernel_size=3, padding=1, groups=3,
                                           use_lambda=True)),
}


@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("name", list(FAMILY_CASES))
@pytest.mark.parametrize("basis", ["rbf", "chebyshev", "relu"])
def test_every_basis_family_fast_equals_reference(basis, name, grad_free):
    cls, kw = FAMILY_CASES[name]
    fast, ref = _pair(cls, grad_free=grad_free, basis=basis, **kw)
    sp = (9, 8) if cls is KAConv2d else (4, 5, 6)
    x = (1.5 * torch.randn(2, kw["in_channels"], *sp, dtype=torch.float64)).requires_grad_()
    _assert_same_outputs_and_grads(fast, ref, x)


@pytest.mark.parametrize("grad_free", [True, False])
@pytest.mark.parametrize("basis", ["rbf", "chebyshev", "relu"])
def test_every_basis_family_ka_linear_equals_the_literal_layer(basis, grad_free):
    torch.manual_seed(0)
    m = KALinear(7, 3, basis=basis, grad_free=grad_free).double()
    x = (1.5 * torch.randn(5, 7, dtype=torch.float64)).requires_grad_()
    from nnunet_allukan.layers.ka_grouped import ka_grouped
    y = m(x)
    ref = ka_grouped(x.reshape(-1, 1, 7), m.u[None], m.v[None], None, m.grid, grad_free, None, literal=True)[:, 0]
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad((y * g).sum(), [x, m.u, m.v]), torch.autograd.grad((ref * g).sum(),
                                                                                           [x, m.u, m.v])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
