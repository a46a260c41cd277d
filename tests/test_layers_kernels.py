"""The kernel seam (layers/kernels): every backend agrees with the reference on every pass it covers, the native
kernels are torch operators (opcheck, whole-network torch.compile), the policy is explicit, and the native
library is built and loaded only from a private folder and only when its checksum matches."""
import ctypes
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from nnunet_allukan.layers import KAConv2d, KAConv3d, KALinear, kernels
from nnunet_allukan.layers.kernels import native, triton_ops
from nnunet_allukan.layers.splines import SplineGrid, grid_bases
from kernel_passes import pass_calls

GRID = SplineGrid()
needs_native = pytest.mark.skipif(native._compiler() is None, reason="no C compiler: no native kernels")


@pytest.fixture
def policy():
    """Set the kernel policy within one test; the previous one is restored afterwards."""
    before = kernels.policy()
    yield kernels.use
    kernels.use(before)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """The native loader with nothing loaded yet, its cache under tmp_path; afterwards loaded again from the
    user's cache, with the test's patches undone."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.reset()
    yield tmp_path / "nnunet_allukan"
    monkeypatch.undo()
    native.reset()


def _with(policy_, call, use):
    use(policy_)
    return call()


def _assert_close(a, b, what):
    """Equal up to rounding: at most 1e-5 (float32) / 1e-12 (float64) of the largest value."""
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
    tol = 1e-12 if a.dtype == torch.float64 else 1e-5
    scale = max(1.0, b.abs().max().item())
    diff = (a - b).abs().max().item()
    assert diff <= tol * scale, f"{what}: max difference {diff:.3g} of max value {scale:.3g}"


def _tuple(out):
    return out if isinstance(out, tuple) else (out,)


# (kernel, stride, padding, dilation) of 2D and 3D convolutions; sizes not multiples of the native block
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3), (2, 1), (1, 1), (1, 2)),
    ((2, 5), (1, 3), (0, 2), (2, 1)),
    ((1, 1), (1, 1), (0, 0), (1, 1)),
    ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((3, 1, 3), (2, 1, 1), (1, 0, 2), (1, 1, 2)),
]


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}".format(*g))
def test_window_sums_match_the_reference(policy, backend, dtype, geometry):
    if backend == "native" and not native.available():
        pytest.skip(native.unavailable_reason())
    kernel, stride, padding, dilation = geometry
    sp = (11, 13) if len(kernel) == 2 else (5, 7, 9)
    x = torch.randn(2, 3, 5, *sp, dtype=dtype, generator=torch.Generator().manual_seed(1)) * 1.5
    x.view(-1)[:20] = torch.linspace(-2.2, 2.2, 12, dtype=dtype).repeat(2)[:20]  # on knots and grid ends
    call = lambda: kernels.silu_and_window_sums(x, GRID, kernel, stride, padding, dilation)  # noqa: E731
    for a, b in zip(_with(backend, call, policy), _with("reference", call, policy)):
        _assert_close(a, b, f"{backend} {geometry}")


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 2, 7, 10, 13), (4, 1, 300, 1), (2, 2, 9, 515), (5, 1, 1, 1)],
                         ids=["planes", "tokens", "block-edge", "single"])
def test_basis_and_activation_passes_match_the_reference(policy, backend, dtype, shape):
    if backend == "native" and not native.available():
        pytest.skip(native.unavailable_reason())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, dtype=dtype, generator=gen) * 1.3
    calls = pass_calls(x, GRID, gen)
    for name, call in calls.items():
        for a, b in zip(_tuple(_with(backend, call, policy)), _tuple(_with("reference", call, policy))):
            _assert_close(a, b, f"{backend} {name}")


@pytest.mark.parametrize("backend", ["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("basis, order", [("bspline", 1), ("bspline", 2), ("rbf", 3), ("chebyshev", 3), ("relu", 2)],
                         ids=["bspline1", "bspline2", "rbf", "chebyshev", "relu"])
def test_every_basis_family_passes_match_the_reference(policy, basis, order, dtype, backend):
    """The C kernels and the torch backend against the reference for the other families, every pass (a row of one
    position too: KALinear's path) and two geometries."""
    if backend == "native" and not native.available():
        pytest.skip(native.unavailable_reason())
    grid = SplineGrid(basis=basis, spline_order=order)
    if backend == "native":  # C runs every pass but the spline path's input gradient
        assert native.covers("basis_sums", "cpu", grid) is None
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 7, 37, dtype=dtype, generator=gen) * 1.5
    calls = pass_calls(x, grid, gen)
    rows = torch.randn(5, 1, 600, 1, dtype=dtype, generator=gen) * 1.5
    calls["silu_and_basis_sums rows"] = lambda: kernels.silu_and_basis_sums(rows, grid, True)
    for kernel, stride, padding, dilation in (GEOMETRIES[1], GEOMETRIES[5]):
        xs = torch.randn(2, 2, 3, *((9, 11) if len(kernel) == 2 else (5, 6, 7)), dtype=dtype, generator=gen)
        calls[f"window_sums {kernel}"] = (lambda xs=xs, k=kernel, s=stride, p=padding, d=dilation:
                                          kernels.silu_and_window_sums(xs, grid, k, s, p, d))
    for name, call in calls.items():
        for a, b in zip(_tuple(_with(backend, call, policy)), _tuple(_with("reference", call, policy))):
            _assert_close(a, b, f"{backend} {basis} {name}")


def _layers():
    torch.manual_seed(0)
    return [
        (KAConv2d(6, 5, 3, padding=1, bias=True), (2, 6, 12, 9)),
        (KAConv2d(6, 6, 3, padding=1, groups=6), (2, 6, 12, 9)),  # depthwise
        (KAConv2d(6, 4, 3, stride=2, groups=2, grad_free=False), (2, 6, 12, 9)),
        (KAConv2d(40, 40, 3, padding=1), (1, 40, 6, 6)),  # wide: window sums kept for backward
        (KAConv3d(4, 3, 3, padding=1), (2, 4, 5, 6, 7)),
        (KALinear(7, 3), (4, 5, 7)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layers_give_the_same_results_on_every_backend(policy, dtype):
    """Forward and every gradient of the layers, each backend against the reference backend."""
    backends = ["torch"] + (["native"] if native.available() else [])
    for layer, shape in _layers():
        layer = layer.to(dtype)
        x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(3), requires_grad=True)

        def run():
            y = layer(x)
            return (y,) + torch.autograd.grad(y.square().sum(), [x] + list(layer.parameters()))

        expected = _with("reference", run, policy)
        for backend in backends:
            for a, b in zip(_with(backend, run, policy), expected):
                _assert_close(a, b, f"{backend} {layer!r}")


# ---- the native operators -------------------------------------------------------------------------------------
def _op_samples():
    gen = torch.Generator().manual_seed(6)
    x3 = torch.randn(2, 5, 7, dtype=torch.float64, generator=gen)
    x4 = torch.randn(2, 3, 4, 10, dtype=torch.float64, generator=gen)
    img = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=gen)
    v = torch.randn(3, 8, dtype=torch.float64, generator=gen)
    zero, grid = list(GRID.zero_bases), (GRID.t0, GRID.h)
    ops = torch.ops.nnunet_allukan
    return [
        (ops.basis_sums, (x3, *grid, 8, zero, True)),
        (ops.basis_sums, (x3.float(), *grid, 8, None, False)),
        (ops.silu_and_window_sums, (img, *grid, 8, zero, [3, 3], [2, 1], [1, 1], [1, 2])),
        (ops.activation_sums, (x4.clone().requires_grad_(), v.clone().requires_grad_(), *grid, zero)),
        (ops.activation_sums_backward, (x4, torch.randn_like(x4), torch.randn(2, 3, 1, 10, dtype=torch.float64),
                                        *grid, 8, zero)),
        # the other families (native.FAMILIES): chebyshev, rbf with its centre
        (ops.basis_sums, (x3, 0.0, 1.0, 8, None, True, 2, 0.0)),
        (ops.silu_and_window_sums, (img, *grid, 8, zero, [3, 3], [2, 1], [1, 1], [1, 2], 1, 2.0)),
        (ops.activation_sums, (x4.clone().requires_grad_(), v.clone().requires_grad_(), *grid, zero, 3, 2.0)),
    ]


@needs_native
def test_native_operators_pass_opcheck():
    assert native.available(), native.unavailable_reason()
    for op, args in _op_samples():
        torch.library.opcheck(op, args)


@needs_native
def test_native_operators_check_their_arguments_before_calling_c():
    assert native.available(), native.unavailable_reason()
    ops = torch.ops.nnunet_allukan
    x = torch.randn(2, 5, 7)
    v64 = torch.randn(1, 8, dtype=torch.float64)
    x4 = x.reshape(2, 1, 5, 7)
    bad = {  # each bad argument, the message that names it
        "contiguous, got strides": lambda: ops.basis_sums(x.transpose(1, 2), GRID.t0, GRID.h, 8, None, False),
        "x must be float32 or float64, got torch.int32": lambda: ops.basis_sums(x.int(), GRID.t0, GRID.h, 8, None,
                                                                              False),
        r"x must be 3-d, got shape \(5, 7\)": lambda: ops.basis_sums(x[0], GRID.t0, GRID.h, 8, None, False),
        "1000 bases, the library's limit is": lambda: ops.basis_sums(x, GRID.t0, GRID.h, 1000, None, False),
        r"B\(0\) must have one value per basis \(8\), got 3": lambda: ops.basis_sums(x, GRID.t0, GRID.h, 8,
                                                                                   [0.0] * 3, False),
        "v must have x's dtype torch.float32, got torch.float64": lambda: ops.activation_sums(x4, v64, GRID.t0,
                                                                                            GRID.h, None),
        r"gradients of shapes \(2, 1, 5, 7\) and \(2, 1, 1, 7\)": lambda: ops.activation_sums_backward(
            x4, x4, x4, GRID.t0, GRID.h, 8, None),
        "a 2D or 3D geometry": lambda: ops.silu_and_window_sums(x.reshape(1, 2, 5, 7), GRID.t0, GRID.h, 8, None,
                                                                [3], [1], [0], [1]),
    }
    for message, call in bad.items():
        with pytest.raises(ValueError, match=message):
            call()


@needs_native
def test_native_kernels_stay_in_a_whole_network_compile_and_it_is_quiet(policy):
    """torch.compile of a network around the layers (nnUNet_compile=1 on CPU): the graph calls the native
    operators, and tracing the layers makes torch warn about nothing."""
    policy("auto")
    assert native.available(), native.unavailable_reason()
    targets = []

    def backend(gm, example_inputs):
        for module in gm.modules():  # the autograd functions' forward and backward are subgraphs
            if isinstance(module, torch.fx.GraphModule):
                targets.extend(str(node.target) for node in module.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    net = torch.nn.Sequential(KAConv2d(4, 8, 3, padding=1), KAConv2d(8, 8, 3, padding=1, groups=8),
                              torch.nn.Flatten(2), KALinear(36, 5))
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    expected = net(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = torch.compile(net, backend=backend, fullgraph=True)(x)
        y.sum().backward()
    torch._dynamo.reset()
    assert [str(w.message) for w in caught] == []
    torch.testing.assert_close(y, expected)
    used = {t.split(".")[-2] for t in targets if "nnunet_allukan" in t}
    assert used >= {"silu_and_window_sums", "activation_sums", "basis_sums"}, targets


# ---- policy -----------------------------------------------------------------------------------------------------
def test_policy_is_explicit_and_reported(policy):
    with pytest.raises(ValueError, match="NNUNET_ALLUKAN_KERNELS"):
        policy("sometimes")
    policy("reference")
    assert {c.backend for c in kernels.active()} == {"reference"}
    policy("torch")
    assert {c.backend for c in kernels.active("cuda")} == {"torch"}
    policy("auto")
    choices = {c.kernel: c for c in kernels.active()}
    assert set(choices) == set(kernels.KERNELS)
    assert choices["basis_derivative_dot"].backend == "torch"  # no native kernel: says why
    assert "grad_free=False" in choices["basis_derivative_dot"].reason
    expected = "native" if native.available() else "torch"
    assert choices["silu_and_window_sums"].backend == expected
    quintic = {c.kernel: c for c in kernels.active(grid=SplineGrid(5, 5))}
    assert quintic["basis_sums"].backend == "torch" and "order 5" in quintic["basis_sums"].reason
    text = kernels.describe()
    assert "NNUNET_ALLUKAN_KERNELS=auto" in text and all(k in text for k in kernels.KERNELS)


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton not installed")


@pytest.fixture
def fresh_triton():
    """The Triton loader with nothing loaded yet; loaded again afterwards, as it was."""
    triton_ops.reset()
    yield
    triton_ops.reset()


@needs_triton
def test_cuda_runs_the_triton_kernels_where_triton_imports(policy, fresh_triton):
    policy("auto")
    choices = kernels.active("cuda")
    assert [c.backend for c in choices] == ["triton"] * len(kernels.KERNELS), choices
    assert all("Triton imports" in c.reason for c in choices)
    quintic = {c.kernel: c for c in kernels.active("cuda", SplineGrid(5, 5))}
    assert quintic["silu_and_window_sums"].backend == "torch"
    assert "order 5" in quintic["silu_and_window_sums"].reason and "uncompiled" in quintic["basis_sums"].reason
    policy("torch")
    assert {(c.backend, c.reason) for c in kernels.active("cuda")} == {("torch", "policy torch, uncompiled")}
    policy("triton")
    if not triton_ops.interpreted():  # Triton's kernels run on CUDA tensors (or in its interpreter)
        assert {c.backend for c in kernels.active("cpu")} == {"torch"}
        assert "cpu tensors (triton: CUDA)" in kernels.describe("cpu")


def test_cuda_runs_the_uncompiled_torch_form_without_triton(policy, fresh_triton, monkeypatch):
    """Where Triton does not import (CPU builds of torch), CUDA calls run on the torch backend and say why; the
    triton policy refuses to fall back; the layers still import and run."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "triton", None)  # import triton raises ImportError
        m.delitem(sys.modules, "nnunet_allukan.layers.kernels.triton_kernels", raising=False)
        policy("auto")
        choices = kernels.active("cuda")
        assert {c.backend for c in choices} == {"torch"}
        assert all("not triton: Triton does not import" in c.reason and c.reason.endswith("uncompiled")
                   for c in choices), choices
        assert kernels.active("cpu")[0].backend == ("native" if native.available() else "torch")
        policy("triton")
        with pytest.raises(RuntimeError, match="NNUNET_ALLUKAN_KERNELS=triton, but the triton kernels are "
                                               "unavailable: Triton does not import"):
            kernels.active("cuda")
        policy("auto")
        KAConv2d(2, 2, 3, padding=1)(torch.randn(1, 2, 5, 5)).sum().backward()
    triton_ops.reset()


def test_importing_the_layers_imports_no_triton():
    code = "import sys, nnunet_allukan.layers, nnunet_allukan.networks; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False"], out.stderr


def test_the_environment_variable_is_read_once_at_import():
    code = ("import os; from nnunet_allukan.layers import kernels; p = kernels.policy(); "
            "os.environ['NNUNET_ALLUKAN_KERNELS'] = 'torch'; print(p, kernels.policy())")
    env = dict(os.environ, NNUNET_ALLUKAN_KERNELS="reference")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split() == ["reference", "reference"], out.stderr


def test_native_policy_raises_where_the_library_cannot_be_built(policy, fresh_native, monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    policy("native")
    with pytest.raises(RuntimeError, match="no C compiler"):
        kernels.basis_sum(torch.randn(1, 1, 3, 4), GRID)
    policy("auto")  # auto: the torch backend (inside the grid range the bases sum to 1)
    torch.testing.assert_close(kernels.basis_sum(torch.rand(1, 1, 3, 4, dtype=torch.float64) * 2 - 1, GRID).sum(),
                               torch.tensor(12.0, dtype=torch.float64))


# ---- build and cache --------------------------------------------------------------------------------------------
@needs_native
def test_library_is_built_once_into_a_private_cache(fresh_native):
    assert native.available(), native.unavailable_reason()
    assert fresh_native.stat().st_mode & 0o777 == 0o700
    built = sorted(p.suffix for p in fresh_native.iterdir())
    assert built == [".sha256", ".so"]  # no temporary build folder left behind
    stamps = [p.stat().st_mtime_ns for p in sorted(fresh_native.iterdir())]
    native.reset()
    assert native.available()
    assert [p.stat().st_mtime_ns for p in sorted(fresh_native.iterdir())] == stamps


@pytest.fixture
def process_library():
    """The library this process loaded (taken before ``fresh_native`` forgets it: list this fixture first)."""
    assert native.available(), native.unavailable_reason()
    return native.library_path()


@needs_native
@pytest.mark.parametrize("how", ["mode 0777", "owned by someone else"])
def test_a_library_in_a_folder_others_can_write_is_not_loaded(process_library, fresh_native, how):
    """A library with a matching checksum, under the name the loader looks for, in a folder others can write."""
    fresh_native.mkdir(parents=True)
    planted = fresh_native / os.path.basename(process_library)
    planted.write_bytes(open(process_library, "rb").read())
    planted.with_suffix(".sha256").write_text(native._sha256(planted))
    if how == "mode 0777":
        os.chmod(fresh_native, 0o777)
    else:
        if os.getuid() != 0:
            pytest.skip("changing a folder's owner needs root")
        os.chown(fresh_native, 12345, 12345)
    assert native.cache_dir() != fresh_native
    assert native.available(), native.unavailable_reason()
    loaded = native.library_path()
    assert os.path.dirname(loaded) != str(fresh_native) and os.path.basename(loaded) == planted.name
    assert oct(os.stat(os.path.dirname(loaded)).st_mode & 0o777) == "0o700"


@needs_native
def test_a_cached_library_cut_short_is_rebuilt_not_loaded(tmp_path):
    """A library cut to its first 1,000 bytes (a partial copy, a full disk) would kill the process with a bus
    error when loaded; its checksum no longer matches, so the next process rebuilds it. (Child processes: a
    library this process has mapped must not be cut.)"""
    code = ("from nnunet_allukan.layers import KAConv2d, kernels; import torch; "
            "print(kernels.active()[2].backend); KAConv2d(2, 2, 3, padding=1)(torch.randn(1, 2, 5, 5))")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), NNUNET_ALLUKAN_KERNELS="auto")

    def child():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0 and out.stdout.strip() == "native", out.stderr

    child()
    library = next((tmp_path / "nnunet_allukan").glob("*.so"))
    size = library.stat().st_size
    with open(library, "r+b") as f:
        f.truncate(1000)
    child()
    assert library.stat().st_size == size


@needs_native
def test_a_library_of_another_abi_is_refused(fresh_native, monkeypatch):
    monkeypatch.setattr(native, "ABI", native.ABI + 1)
    with pytest.warns(UserWarning, match="library ABI"):
        assert not native.available()


def test_without_a_compiler_the_torch_kernels_run(policy, fresh_native, monkeypatch):
    policy("auto")
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert not native.available()
    assert "no C compiler" in native.unavailable_reason()
    assert kernels.active()[0].backend == "torch"
    layer = KAConv2d(3, 4, 3, padding=1).double()
    reference = KAConv2d(3, 4, 3, padding=1, implementation="reference").double()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(x), atol=1e-12, rtol=1e-12)


@needs_native
def test_failed_build_warns_once_and_falls_back(fresh_native, monkeypatch):
    monkeypatch.setattr(native, "_COMPILE_FLAGS", native._COMPILE_FLAGS + ("-fno-such-option-anywhere",))
    with pytest.warns(UserWarning, match="building the native kernels failed"):
        assert not native.available()
    assert not native.available()  # no second attempt, no second warning
    assert "-fno-such-option-anywhere" in native.unavailable_reason()
    assert not any(fresh_native.iterdir())


@needs_native
def test_results_do_not_depend_on_the_thread_count(policy):
    policy("auto")
    x = torch.randn(2, 1, 16, 200, 200, generator=torch.Generator().manual_seed(4))
    v = torch.randn(1, GRID.n_bases)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(kernels.silu_and_window_sums(x, GRID, (3, 3), (1, 1), (1, 1), (1, 1))
                           + kernels.silu_and_activation_sums_backward(x, x, x[:, :, 0], v, GRID, True, False))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_native
def test_passes_the_helper_threads_did_not_share_make_the_next_ones_run_alone(policy):
    """After a two-thread pass whose helper claimed no chunk, the next 2 (then 4, ... 64) passes run on the calling
    thread alone, counted down; a shared pass resets the count. Results are the same either way."""
    policy("auto")
    assert native.available(), native.unavailable_reason()
    library = ctypes.CDLL(native.library_path())  # the same handle: dlopen of a loaded path
    left, run = (ctypes.c_int64.in_dll(library, name) for name in ("ka_solo_left", "ka_solo_run"))
    x = torch.randn(4, 8, 256, 256, generator=torch.Generator().manual_seed(6))  # 2M values: two threads
    call = lambda: native.basis_sums(x.view(4, 8, -1), GRID, True)  # noqa: E731  (one parallel pass)
    saved, threads = (left.value, run.value), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        expected = call()
        torch.set_num_threads(2)
        left.value, run.value = 3, 4
        assert torch.equal(call(), expected)
        assert (left.value, run.value) == (2, 4)  # this pass ran alone: one fewer to go, nothing learnt
        shared = False
        for _ in range(50):  # a pass of ~10 ms: the helper claims a chunk unless it gets no core for that long
            left.value, run.value = 0, 8
            assert torch.equal(call(), expected)
            assert (left.value, run.value) in ((0, 0), (16, 16))
            shared = run.value == 0
            if shared:
                break
        assert shared or os.cpu_count() < 2, "the helper thread never shared a pass of 2M values"
    finally:
        left.value, run.value = saved
        torch.set_num_threads(threads)


@needs_native
def test_loading_changes_no_process_wide_state():
    """No flush-to-zero (what -ffast-math at link time would set), torch's thread count unchanged."""
    code = textwrap.dedent("""
        import torch
        from nnunet_allukan.layers import KAConv2d
        from nnunet_allukan.layers.kernels import native, triton_ops
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


@needs_native
def test_build_without_openmp_uses_posix_threads_and_agrees(policy, fresh_native, monkeypatch):
    """The last-resort flags (no OpenMP, no -march=native): the POSIX-threads build gives the same results."""
    policy("auto")
    x = torch.randn(2, 1, 16, 70, 90, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    call = lambda: kernels.silu_and_window_sums(x, GRID, (3, 3), (1, 2), (1, 1), (1, 1))  # noqa: E731
    monkeypatch.setattr(native, "_ARCH_FLAGS", ((),))
    assert native.available(), native.unavailable_reason()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two threads of its own
        portable = call()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(portable, _with("reference", call, policy)):
        _assert_close(a, b, "portable build vs reference")


def test_a_basis_sum_of_one_value_per_row_reaches_the_backend_as_one_long_row(monkeypatch):
    """A vanilla KAN layer's edges (one value per (b, g), no positions) must not become b * g rows of one value (one
    GPU program per value); the sums still equal the reference's bases, in their [b, g, n_bases] layout."""
    from nnunet_allukan.layers.kernels import reference, tensor

    seen = []

    def recording(basis_sums):
        def record(x, grid, padded):
            seen.append(tuple(x.shape))
            return basis_sums(x, grid, padded)
        return record

    for module in (native, reference, tensor):
        monkeypatch.setattr(module, "basis_sums", recording(module.basis_sums))
    x = torch.randn(6, 5, 1, dtype=torch.float64) * 1.5
    out = kernels.basis_sum(x, GRID)
    assert seen == [(1, 1, 30)]
    torch.testing.assert_close(out, grid_bases(x[:, :, 0], GRID), rtol=1e-12, atol=1e-12)
