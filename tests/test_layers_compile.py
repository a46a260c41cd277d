"""The torch.compile'd kernels agree with the eager ones (skipped where inductor cannot compile), compiling
them changes no process-wide dynamo setting, and the compile switch is read once."""
import pytest
import torch

from nnunet_allukan.layers import KAConv2d, KALinear
from nnunet_allukan.layers import native, splines


@pytest.fixture
def compile_mode():
    """Set the kernel compilation mode for one test; restore the previous one afterwards. The native kernels,
    which take precedence over compiled and eager tensor kernels on CPU, are off meanwhile."""
    before, native_before = splines._COMPILE_MODE, native.native_kernels_enabled()
    native.set_native_kernels(False)
    yield splines.set_kernel_compilation
    splines._COMPILE_MODE = before
    native.set_native_kernels(native_before)


def _kernel_calls(dtype):
    grid = splines.SplineGrid()
    x = torch.randn(2, 3, 5, 9, 9, dtype=dtype) * 1.5
    g = torch.randn(2, 3, 8, 9, 9, dtype=dtype)
    v = torch.randn(3, 8, dtype=dtype)
    g_silu = torch.randn(2, 3, 5, 9, 9, dtype=dtype)
    g_phi = torch.randn(2, 3, 9, 9, dtype=dtype)
    return {
        "basis_sum": lambda: splines.basis_sum(x, grid),
        "basis_derivative_dot": lambda: splines.basis_derivative_dot(x, g, grid),
        "silu_and_basis_sums": lambda: splines.silu_and_basis_sums(x, grid, True),
        "silu_and_basis_sums unpadded": lambda: splines.silu_and_basis_sums(x, grid, False),
        "silu_and_activation_sums": lambda: splines.silu_and_activation_sums(x, v, grid, True),
        "silu_and_activation_sums_backward": lambda: splines.silu_and_activation_sums_backward(
            x, g_silu, g_phi, v, grid, True, True),
        "silu_and_window_sums": lambda: splines.silu_and_window_sums(x, grid, (3, 3), (2, 1), (1, 1), (1, 2)),
    }


@pytest.mark.parametrize("dtype", [torch.float32])
def test_compiled_kernels_match_eager(compile_mode, dtype):
    calls = _kernel_calls(dtype)
    compile_mode("0")
    eager = {name: call() for name, call in calls.items()}
    compile_mode("1")
    try:
        compiled = {name: call() for name, call in calls.items()}
    except Exception as e:  # no C++ toolchain for inductor on this machine
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-12)
    for name in calls:
        torch.testing.assert_close(compiled[name], eager[name], **tol, msg=name)


@pytest.mark.parametrize("grad_free", [False])  # the full-gradient path runs every kernel
def test_compiled_layers_match_eager(compile_mode, grad_free):
    """Through the layers (dense, depthwise, linear), forward and every gradient, batch 1 and 2."""
    torch.manual_seed(0)
    layers = [KAConv2d(4, 6, 3, padding=1, grad_free=grad_free), KAConv2d(4, 4, 3, padding=1, groups=4,
                                                                           grad_free=grad_free),
              KALinear(4, 3, grad_free=grad_free)]
    results = {}
    for mode in ("0", "1"):
        compile_mode(mode)
        out = []
        for batch in (1, 2):
            for layer in layers:
                x = torch.randn(batch, 4, 10, 10, generator=torch.Generator().manual_seed(batch), requires_grad=True)
                xin = x.permute(0, 2, 3, 1) if isinstance(layer, KALinear) else x
                try:
                    y = layer(xin)
                except Exception as e:
                    if mode == "1":
                        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
                    raise
                grads = torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))
                out.append((y,) + grads)
        results[mode] = out
    for eager, compiled in zip(results["0"], results["1"]):
        for a, b in zip(compiled, eager):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_compiling_leaves_dynamo_config_alone(compile_mode):
    """The kernels get their own code objects instead of a raised process-wide recompile limit."""
    import torch._dynamo

    before = {k: getattr(torch._dynamo.config, k) for k in ("recompile_limit", "cache_size_limit")
              if hasattr(torch._dynamo.config, k)}
    compile_mode("1")
    try:
        for batch, c in [(1, 2), (2, 2), (1, 1), (3, 5)]:  # size-1 specialisations
            for dtype in (torch.float32, torch.float64):  # float64: a second compiled copy
                splines.basis_sum(torch.randn(batch, 1, c, 3, dtype=dtype), splines.SplineGrid())
    except Exception as e:
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    after = {k: getattr(torch._dynamo.config, k) for k in before}
    assert after == before
    # one compiled copy per (kernel, device, dtype)
    assert {key for key in splines._COMPILED if key[0] == "basis_sum"} >= {
        ("basis_sum", "cpu", torch.float32), ("basis_sum", "cpu", torch.float64)}
    assert not splines._COMPILE_FAILED


def test_compile_switch_is_parsed_once_and_validated(monkeypatch, compile_mode):
    with pytest.raises(ValueError, match="NNUNET_ALLUKAN_COMPILE"):
        splines._parse_compile_mode("sometimes")
    compile_mode("0")
    monkeypatch.setenv("NNUNET_ALLUKAN_COMPILE", "1")  # read at import only: no effect now
    assert not splines.compiled_kernels_enabled("cpu")
    compile_mode("auto")
    assert splines.compiled_kernels_enabled("cpu")


def test_auto_mode_compiles_a_cpu_kernel_only_after_its_eager_calls_took_long_enough(compile_mode, monkeypatch):
    """auto on CPU: eager (timed) calls until the kernel has spent _EAGER_SECONDS_BEFORE_COMPILE, then compiled."""
    compile_mode("auto")
    key = ("basis_sum", "cpu", torch.float64)
    monkeypatch.setattr(splines, "_COMPILED", {})
    monkeypatch.setattr(splines, "_EAGER_SECONDS", {})
    monkeypatch.setattr(splines, "_EAGER_SECONDS_BEFORE_COMPILE", 3600.0)
    x = torch.randn(2, 1, 4, 5, dtype=torch.float64)
    for _ in range(3):
        eager = splines.basis_sum(x, splines.SplineGrid())
    assert key not in splines._COMPILED
    assert 0.0 < splines._EAGER_SECONDS[key] < 3600.0
    monkeypatch.setattr(splines, "_EAGER_SECONDS_BEFORE_COMPILE", 0.0)  # the time is spent: next call compiles
    try:
        compiled = splines.basis_sum(x, splines.SplineGrid())
    except Exception as e:
        pytest.skip(f"torch.compile unavailable here: {type(e).__name__}: {e}")
    if key in splines._COMPILE_FAILED:
        pytest.skip("torch.compile unavailable here")
    assert key in splines._COMPILED
    torch.testing.assert_close(compiled, eager, atol=1e-12, rtol=1e-12)
    compile_mode("1")  # required compilation: compiled at the first call, no eager time needed
    monkeypatch.setattr(splines, "_EAGER_SECONDS_BEFORE_COMPILE", 3600.0)
    splines.basis_derivative_dot(x, torch.randn(2, 1, 8, 5, dtype=torch.float64), splines.SplineGrid())
    assert ("basis_derivative_dot", "cpu", torch.float64) in splines._COMPILED


def test_training_processes_compile_the_kernels_at_their_first_call(monkeypatch):
    """The trainers (KATrainerBase.set_kernel_policy, called in initialize) ask for compilation at the first call: a
    training run wins the compilation back; nnUNetv2_predict and other short jobs keep auto's eager start."""
    from nnunet_allukan.training.base import KATrainerBase

    monkeypatch.setattr(splines, "_EAGER_SECONDS_BEFORE_COMPILE", 10.0)
    KATrainerBase.set_kernel_policy(None)
    assert splines._EAGER_SECONDS_BEFORE_COMPILE == 0.0
