"""The torch.compile'd basis kernels agree with the eager ones (skipped where inductor cannot compile)."""
import pytest
import torch

from nnunet_allukan.layers import KAConv2d
from nnunet_allukan.layers import splines


def test_compiled_kernels_match_eager(monkeypatch):
    x = torch.randn(2, 3, 5, 9, 9)
    g = torch.randn(2, 3, 8, 9, 9)
    grid = splines.SplineGrid()
    monkeypatch.setenv("NNUNET_ALLUKAN_COMPILE", "0")
    s_eager = splines.basis_sum(x, grid)
    d_eager = splines.basis_derivative_dot(x, g, grid)
    monkeypatch.setenv("NNUNET_ALLUKAN_COMPILE", "1")
    try:
        s_comp = splines.basis_sum(x, grid)
        d_comp = splines.basis_derivative_dot(x, g, grid)
    except Exception as e:  # no C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    torch.testing.assert_close(s_comp, s_eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d_comp, d_eager, atol=1e-5, rtol=1e-5)
    # and through a layer, forward + backward, full spline gradient
    torch.manual_seed(0)
    m = KAConv2d(4, 4, 3, padding=1, grad_free=False)
    xi = torch.randn(1, 4, 12, 12, requires_grad=True)
    y_c = m(xi)
    gx_c = torch.autograd.grad(y_c.sum(), xi)[0]
    monkeypatch.setenv("NNUNET_ALLUKAN_COMPILE", "0")
    y_e = m(xi)
    gx_e = torch.autograd.grad(y_e.sum(), xi)[0]
    torch.testing.assert_close(y_c, y_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx_c, gx_e, atol=1e-5, rtol=1e-5)


def test_compile_env_validation(monkeypatch):
    monkeypatch.setenv("NNUNET_ALLUKAN_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="NNUNET_ALLUKAN_COMPILE"):
        splines.compiled_kernels_enabled("cpu")


def test_compilation_raises_dynamo_recompile_limit(monkeypatch):
    """Each size-1 / dtype specialisation compiles anew; the default limit (8) would silently fall back to eager."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    monkeypatch.setattr(splines, "_COMPILED", {})
    monkeypatch.setenv("NNUNET_ALLUKAN_COMPILE", "1")
    try:
        splines.basis_sum(torch.randn(1, 1, 2, 3), splines.SplineGrid())
    except Exception as e:
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    assert torch._dynamo.config.recompile_limit >= 64
