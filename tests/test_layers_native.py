"""The native CPU kernels (layers/native.py, native_kernels.c) agree with the tensor kernels they replace, for every
kernel, geometry and precision the layers use; the library is built once into the cache, falls back cleanly
where it cannot be built, and loading it changes nothing process-wide."""
import subprocess
import sys
import textwrap

import pytest
import torch

from nnunet_allukan.layers import KAConv2d, KAConv3d, KALinear, native, splines

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler: the native kernels cannot be built")

GRID = splines.SplineGrid()


@pytest.fixture
def native_state():
    """Restore the native kernels' module state (switch, loaded library, build attempt) after the test."""
    saved = {k: getattr(native, k) for k in ("_ENABLED", "_LIBRARY", "_FAILURE", "_TRIED")}
    yield native
    for k, value in saved.items():
        setattr(native, k, value)


def _fresh(monkeypatch, cache):
    """Forget the loaded library and build into ``cache``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    native._ENABLED, native._LIBRARY, native._FAILURE, native._TRIED = True, None, None, False


def _both(call):
    """``call()`` with the native kernels, then with the tensor (eager) kernels."""
    assert native.available(), native.unavailable_reason()
    before_mode, before_native = splines._COMPILE_MODE, native.native_kernels_enabled()
    try:
        native.set_native_kernels(True)
        fast = call()
        native.set_native_kernels(False)
        splines.set_kernel_compilation("0")
        slow = call()
    finally:
        splines._COMPILE_MODE = before_mode
        native.set_native_kernels(before_native)
    return fast, slow


def _assert_close(a, b, what):
    """Equal up to rounding: the largest difference at most 1e-5 (float32) / 1e-12 (float64) of the largest value
    (gradients summed over many terms have elements far smaller than their rounding error)."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    tol = 1e-12 if a.dtype == torch.float64 else 1e-5
    scale = max(1.0, b.abs().max().item())
    diff = (a - b).abs().max().item()
    assert diff <= tol * scale, f"{what}: max difference {diff:.3g} of max value {scale:.3g}"


# (kernel, stride, padding, dilation) of 2D and 3D convolutions; sizes not multiples of the 128-position block
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 1), (1, 1), (1, 2)),
    ((3, 3), (2, 2), (0, 0), (1, 1)),
    ((2, 5), (1, 3), (0, 2), (2, 1)),
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((3, 1, 3), (2, 1, 1), (1, 0, 2), (1, 1, 2)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}".format(*g))
def test_window_sums_match_tensor_kernel(dtype, geometry):
    kernel, stride, padding, dilation = geometry
    sp = (11, 13) if len(kernel) == 2 else (5, 7, 9)
    # inputs inside and outside the grid range, and exactly on knots
    x = torch.randn(2, 3, 5, *sp, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 1.5
    x.view(-1)[:20] = torch.linspace(-2.2, 2.2, 12, dtype=dtype).repeat(2)[:20]
    fast, slow = _both(lambda: splines.silu_and_window_sums(x, GRID, kernel, stride, padding, dilation))
    for a, b in zip(fast, slow):
        _assert_close(a, b, str(geometry))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 2, 7, 10, 13), (4, 1, 300, 1), (2, 2, 9, 130), (5, 1, 1, 1)],
                         ids=["planes", "tokens", "block-edge", "single"])
def test_basis_and_activation_sums_match_tensor_kernels(dtype, shape):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, dtype=dtype, generator=gen) * 1.3
    g = shape[1]
    v = torch.randn(g, GRID.n_bases, dtype=dtype, generator=gen)
    g_silu = torch.randn(*shape, dtype=dtype, generator=gen)
    g_phi = torch.randn(shape[0], g, *shape[3:], dtype=dtype, generator=gen)
    calls = {
        "basis_sum": lambda: splines.basis_sum(x, GRID),
        "silu_and_basis_sums padded": lambda: splines.silu_and_basis_sums(x, GRID, True),
        "silu_and_basis_sums": lambda: splines.silu_and_basis_sums(x, GRID, False),
        "activation_sums padded": lambda: splines.silu_and_activation_sums(x, v, GRID, True),
        "activation_sums": lambda: splines.silu_and_activation_sums(x, v, GRID, False),
        "activation_sums_backward": lambda: splines.silu_and_activation_sums_backward(
            x, g_silu, g_phi, v, GRID, True, False),
        "activation_sums_backward full": lambda: splines.silu_and_activation_sums_backward(
            x, g_silu, g_phi, v, GRID, False, True),  # not native: falls back
    }
    for name, call in calls.items():
        fast, slow = _both(call)
        fast, slow = (fast, slow) if isinstance(fast, tuple) else ((fast,), (slow,))
        for a, b in zip(fast, slow):
            _assert_close(a, b, name)


def _layers():
    torch.manual_seed(0)
    return [
        (KAConv2d(6, 5, 3, padding=1, bias=True), (2, 6, 12, 9)),
        (KAConv2d(6, 6, 3, padding=1, groups=6), (2, 6, 12, 9)),  # depthwise
        (KAConv2d(6, 4, 3, stride=2, groups=2), (2, 6, 12, 9)),
        (KAConv2d(40, 40, 3, padding=1), (1, 40, 6, 6)),  # wide: window sums kept for backward
        (KAConv3d(4, 3, 3, padding=1), (2, 4, 5, 6, 7)),
        (KALinear(7, 3), (4, 5, 7)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layers_match_with_and_without_native_kernels(dtype):
    """Forward and every gradient of the layers, native kernels against the tensor kernels."""
    for layer, shape in _layers():
        layer = layer.to(dtype)
        x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(3), requires_grad=True)

        def run():
            y = layer(x)
            return (y,) + torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))

        fast, slow = _both(run)
        for a, b in zip(fast, slow):
            _assert_close(a, b, repr(layer))


def test_results_do_not_depend_on_the_thread_count():
    x = torch.randn(2, 1, 16, 200, 200, generator=torch.Generator().manual_seed(4))
    v = torch.randn(1, GRID.n_bases)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(splines.silu_and_window_sums(x, GRID, (3, 3), (1, 1), (1, 1), (1, 1))
                           + splines.silu_and_activation_sums_backward(x, x, x[:, :, 0], v, GRID, True, False))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_library_is_built_once_into_the_cache(native_state, monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    assert native.available(), native.unavailable_reason()
    built = list((tmp_path / "nnunet_allukan").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary build folder left behind
    stamp = built[0].stat().st_mtime_ns
    _fresh(monkeypatch, tmp_path)
    assert native.available()
    assert [p.stat().st_mtime_ns for p in (tmp_path / "nnunet_allukan").iterdir()] == [stamp]


def test_without_a_compiler_the_tensor_kernels_run(native_state, monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert not native.available()
    assert "no C compiler" in native.unavailable_reason()
    layer = KAConv2d(3, 4, 3, padding=1).double()
    reference = KAConv2d(3, 4, 3, padding=1, implementation="reference").double()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x), atol=1e-12, rtol=1e-12)


def test_failed_build_warns_once_and_falls_back(native_state, monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "_COMPILE_FLAGS", native._COMPILE_FLAGS + ("-fno-such-option-anywhere",))
    with pytest.warns(UserWarning, match="building the native kernels failed"):
        assert not native.available()
    assert not native.available()  # no second attempt, no second warning
    assert "-fno-such-option-anywhere" in native.unavailable_reason()
    assert not any((tmp_path / "nnunet_allukan").iterdir())


def test_switch_is_validated():
    with pytest.raises(ValueError, match="NNUNET_ALLUKAN_NATIVE"):
        native._parse_mode("sometimes")
    assert native._parse_mode("0") is False and native._parse_mode("auto") is True


def test_loading_changes_no_process_wide_state():
    """No flush-to-zero (what -ffast-math at link time would set), torch's thread count unchanged."""
    code = textwrap.dedent("""
        import torch
        from nnunet_allukan.layers import native, KAConv2d
        threads = torch.get_num_threads()
        tiny = torch.tensor([1e-310], dtype=torch.float64)
        assert native.available(), native.unavailable_reason()
        KAConv2d(2, 2, 3, padding=1)(torch.randn(1, 2, 5, 5)).sum().backward()
        assert (tiny * 1.0).item() != 0.0 and 5e-324 * 1.0 != 0.0, "subnormals flushed"
        assert torch.get_num_threads() == threads
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_build_without_openmp_uses_posix_threads_and_agrees(native_state, monkeypatch, tmp_path):
    """The last-resort flags (no OpenMP, no -march=native): the POSIX-threads build gives the same results."""
    x = torch.randn(2, 1, 16, 70, 90, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    call = lambda: splines.silu_and_window_sums(x, GRID, (3, 3), (1, 2), (1, 1), (1, 1))  # noqa: E731
    with_openmp = _both(call)[0]
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "_ARCH_FLAGS", ((),))
    assert native.available(), native.unavailable_reason()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two threads of its own
        portable, slow = _both(call)
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(portable, slow, with_openmp):
        _assert_close(a, b, "portable build vs tensor kernels")
        _assert_close(a, c, "portable build vs OpenMP build")
