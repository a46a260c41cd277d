"""Under autocast the spline path of every KA layer is its float32 value rounded once to the half type.

The window sums P (and KALinear's S, the depthwise activation sums) are large: inside the grid the bases of each
input sum to 1, so P_k is of the order of taps x channels, and v's entries of both signs cancel most of it in
``v P``. Rounded to half before that sum, P would carry an absolute error of P's size times the half type's
rounding, which the cancellation does not reduce: the sum is taken in float32 and rounded once instead. The layers
here have their silu path off (u = 0) and spline weights whose rows sum to 0, the part of v that cancels."""
import pytest
import torch

from nnunet_allukan.layers import KAConv2d, KAConvTranspose2d, KALinear

LAYERS = {
    "dense": (lambda: KAConv2d(128, 8, 3, padding=1), (2, 128, 8, 8)),
    "lambda": (lambda: KAConv2d(128, 8, 3, padding=1, use_lambda=True), (2, 128, 8, 8)),
    "depthwise": (lambda: KAConv2d(8, 8, 5, padding=2, groups=8), (2, 8, 8, 8)),
    "linear": (lambda: KALinear(1024, 8), (64, 1024)),
    "transposed": (lambda: KAConvTranspose2d(512, 8, 2, 2), (2, 512, 4, 4)),
    # the other basis families (torch backend): chebyshev's T_0 = 1 makes its S_0 the largest of all
    **{f"dense-{basis}": (lambda basis=basis: KAConv2d(128, 8, 3, padding=1, basis=basis), (2, 128, 8, 8))
       for basis in ("rbf", "chebyshev", "relu")},
    "depthwise-chebyshev": (lambda: KAConv2d(8, 8, 5, padding=2, groups=8, basis="chebyshev"), (2, 8, 8, 8)),
}


def _rel(a, b):
    return ((a.float() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_spline_path_under_autocast_is_float32_rounded_once(name, dtype):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    x = torch.rand(shape) * 2 - 1  # inside the grid
    with torch.no_grad():
        layer.u.zero_()
        layer.v.normal_()
        layer.v.sub_(layer.v.mean(1, keepdim=True))
        y32 = layer(x)
        with torch.autocast("cpu", dtype=dtype):
            y = layer(x)
    assert y.dtype == dtype
    rounding = _rel(y32.to(dtype), y32)  # the least any half-precision output differs by
    assert _rel(y, y32) < 1.5 * rounding, (_rel(y, y32), rounding)
