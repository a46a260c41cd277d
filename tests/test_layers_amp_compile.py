"""What nnU-Net's CUDA training adds, on CPU: mixed precision (autocast + GradScaler) and a torch.compile of
the whole network around the KA layers."""
import pytest
import torch
import torch.nn as nn

from nnunet_allukan.layers import KAConv2d, KAConv3d, KAConvTranspose2d, KALinear

# Relative error (norm of the difference / norm of the float32 result) of outputs and of every gradient: a few
# units of the half type's rounding (float16: 10 mantissa bits, bfloat16: 7).
AMP_TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}

LAYERS = {
    "dense": (lambda: KAConv2d(8, 16, 3, padding=1), (2, 8, 16, 16)),
    "dense-wide": (lambda: KAConv2d(64, 8, 3, padding=1), (2, 64, 8, 8)),  # keeps P for backward, in float32
    "depthwise": (lambda: KAConv2d(8, 8, 3, padding=1, groups=8), (2, 8, 16, 16)),
    "strided-full-grad": (lambda: KAConv2d(8, 16, 3, stride=2, padding=1, grad_free=False), (2, 8, 16, 16)),
    "lambda": (lambda: KAConv2d(8, 16, 3, padding=1, use_lambda=True), (2, 8, 16, 16)),
    "3d": (lambda: KAConv3d(4, 8, 3, padding=1), (2, 4, 8, 8, 8)),
    "linear": (lambda: KALinear(16, 8, bias=True), (4, 10, 16)),
    "transposed": (lambda: KAConvTranspose2d(8, 4, 2, 2, bias=True), (2, 8, 8, 8)),
}


def _rel(a, b):
    return ((a.float() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_autocast_outputs_and_gradients_close_to_float32(name, dtype):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(shape, requires_grad=True)

    def run():
        y = layer(x)
        return y, torch.autograd.grad(y.float().square().sum(), [x] + list(layer.parameters()))

    y32, g32 = run()
    with torch.autocast("cpu", dtype=dtype):
        y, grads = run()
    assert y.dtype == dtype  # runs in the autocast dtype, like nn.Conv2d / nn.Linear
    assert _rel(y, y32) < AMP_TOLERANCE[dtype]
    names = ["x"] + [n for n, _ in layer.named_parameters()]
    for n, g, ref in zip(names, grads, g32):
        assert g.dtype == ref.dtype  # parameters' gradients in the parameters' dtype
        assert _rel(g, ref) < AMP_TOLERANCE[dtype], n


def test_spline_weight_gradient_does_not_overflow_in_float16():
    """v's gradient sums dL/dy * P over every position, P up to C*k^3: float32 inside, finite in float16 AMP."""
    torch.manual_seed(0)
    layer = KAConv3d(16, 16, 3, padding=1)
    x = torch.rand(2, 16, 16, 16, 16) * 0.1  # inputs near 0: every basis sum large
    with torch.autocast("cpu", dtype=torch.float16):
        y = layer(x)
    (y.float() * 64).sum().backward()
    assert torch.isfinite(layer.v.grad).all() and layer.v.grad.abs().max() > 65504


def _small_network():
    return nn.Sequential(KAConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         KAConv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         KAConv2d(8, 1, 1))


def test_grad_scaler_skips_an_overflowing_step_and_recovers():
    """nnU-Net's AMP loop (autocast float16 + GradScaler, clipping at norm 12) with the KA layers."""
    torch.manual_seed(0)
    net = _small_network()
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)  # overflows float16 gradients at once
    x = torch.randn(4, 3, 16, 16)
    target = (x[:, :1] > 0).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.binary_cross_entropy_with_logits(net(x), target)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        scaler.step(opt)
        scaler.update()
        return loss.item()

    before = [p.detach().clone() for p in net.parameters()]
    step()
    assert scaler.get_scale() < 2.0 ** 40  # overflow found ...
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))  # ... and the step skipped
    losses = [step() for _ in range(40)]
    assert scaler.get_scale() <= 2.0 ** 30  # halved on every overflowing step until steps succeed
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert not all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    assert min(losses[-5:]) < losses[0]


def test_whole_network_compile_traces_every_ka_layer_without_graph_breaks():
    """dynamo traces the custom autograd functions (forward and backward) into one graph, as
    ``nnUNet_compile`` does with the whole network; compiled (AOT autograd, eager kernels) equals eager."""
    import torch._dynamo
    from compile_check import EveryKALayer, outputs_and_grads

    torch.manual_seed(0)
    net = EveryKALayer()
    x = torch.randn(2, 3, 12, 12)
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    eager = outputs_and_grads(net, x)
    torch._dynamo.reset()
    compiled = outputs_and_grads(torch.compile(net, backend="aot_eager"), x)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_whole_network_inductor_compile_equals_eager():
    """The same with inductor's code generation (what nnU-Net's torch.compile uses), dense and depthwise."""
    from compile_check import outputs_and_grads

    torch.manual_seed(0)
    net = _small_network()
    x = torch.randn(2, 3, 16, 16)
    eager = outputs_and_grads(net, x)
    try:
        compiled = outputs_and_grads(torch.compile(net), x)
    except Exception as e:  # no C++ toolchain for inductor here
        pytest.skip(f"inductor unavailable: {type(e).__name__}: {e}")
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
