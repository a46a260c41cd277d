"""The ``native`` backend: the C kernels of ``native_kernels.c`` as torch operators (CPU; B-splines of order 1, 2
and 3, rbf, chebyshev and relu grids).

One pass over the input per kernel, without inductor and without the tensor backend's per-basis temporaries.
Each kernel is a ``torch.library`` custom operator (``torch.ops.nnunet_allukan.*``) with a fake implementation,
so a whole-network ``torch.compile`` keeps calling it, and ``activation_sums`` has its autograd registered here.
The operators check shapes, dtypes and contiguity before any pointer reaches C; the library reports its own
constants (ABI version, largest number of bases, block size) and a library of another ABI is refused.

Build: the system C compiler, at first use (under a second), into a private cache: ``$XDG_CACHE_HOME`` or
``~/.cache``/``nnunet_allukan``, used only if it is a directory owned by this user that no one else can write
(created 0700), otherwise a fresh private temporary folder. The library's SHA-256 is recorded next to it at
build time and checked before every load; a library that does not match (cut short, replaced) is rebuilt.
If no library can be built, :func:`unavailable_reason` says why and the seam uses the ``torch`` backend.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import math
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..splines import SplineGrid

__all__ = ["available", "unavailable_reason", "library_path", "covers", "cache_dir", "reset"]

ABI = 4  # KA_ABI in native_kernels.c
READS_HALF = False  # float32/float64 kernels: the seam casts half precision to float32
_SOURCE = Path(__file__).with_name("native_kernels.c")
# -ffast-math at compile time only: linked with it, gcc would add crtfastmath.o, which sets the process's
# flush-to-zero mode when the library loads.
_COMPILE_FLAGS = ("-O3", "-ffast-math", "-fPIC", "-std=c99", "-D_POSIX_C_SOURCE=200112L")
# Tried in order until one builds and loads: OpenMP (torch's own runtime, see native_kernels.c) and the CPU's
# instruction set first; plain C with POSIX threads last.
_ARCH_FLAGS = (("-fopenmp", "-march=native", "-mprefer-vector-width=256"), ("-fopenmp", "-march=native"),
               ("-march=native",), ())
_DTYPES = {torch.float32: "f", torch.float64: "d"}
# Below this many input values a kernel runs on one thread: starting threads costs more than it saves.
_VALUES_PER_THREAD = 1 << 15


class _Library:
    """The loaded library and the constants it reports."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        constants = (ctypes.c_int64 * 3)()
        lib.ka_constants(constants)
        abi, self.max_bases, self.block = constants
        if abi != ABI:
            raise OSError(f"library ABI {abi}, expected {ABI}")
        p, i64, dbl, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
        signatures = {
            "ka_basis_sums": [p, p, p, i64, i64, i64, i64, i64, i32, i32, dbl, dbl, dbl, p, i64],
            "ka_window_sums": [p, p, p, i64, i64, p, p, p, p, p, p, i64],
            "ka_activation_sums": [p, p, p, p, i64, i64, i64, i64, i32, i32, dbl, dbl, dbl, p, i64],
            "ka_activation_sums_backward": [p, p, p, p, p, i64, i64, i64, i64, i32, i32, dbl, dbl, dbl, p, i64],
        }
        self.functions = {}
        for name, args in signatures.items():
            for dtype, suffix in _DTYPES.items():
                fn = getattr(lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = args, None
                self.functions[name, dtype] = fn
        self.lib = lib


_LIBRARY: Optional[_Library] = None
_FAILURE: Optional[str] = None
_TRIED = False


def _compiler() -> Optional[str]:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate.split()[0]):
            return candidate
    return None


def _cpu_signature() -> str:
    try:  # the instruction sets -march=native compiles for (a shared home directory may serve other CPUs)
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _is_private(path: Path) -> bool:
    """A real directory (no symbolic link), owned by this user, writable by no one else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cache_dir() -> Path:
    """Where the library is built and loaded from: ``$XDG_CACHE_HOME/nnunet_allukan`` (default ``~/.cache``) if
    it is private (:func:`_is_private`; created 0700), otherwise a fresh private temporary folder, removed at exit."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache = Path(root) / "nnunet_allukan"
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        pass
    if _is_private(cache):
        return cache
    private = tempfile.mkdtemp(prefix="nnunet_allukan-")  # mode 0700, unpredictable name
    atexit.register(shutil.rmtree, private, True)
    return Path(private)


def _run(cmd: Sequence[str]) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, text=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(cc: str, arch: Sequence[str], target: Path) -> None:
    """Compile both precisions, link them into ``target`` and record its checksum next to it, each file moved in
    whole (parallel processes may build too)."""
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = []
        for precision, define in (("f", []), ("d", ["-DKA_DOUBLE"])):
            obj = os.path.join(tmp, f"kernels_{precision}.o")
            _run([*cc.split(), *_COMPILE_FLAGS, *arch, *define, "-c", str(_SOURCE), "-o", obj])
            objects.append(obj)
        lib = Path(tmp) / target.name
        _run([*cc.split(), "-shared", *[f for f in arch if f == "-fopenmp"], *objects, "-o", str(lib), "-lm",
              "-lpthread"])
        checksum = Path(tmp) / "checksum"
        checksum.write_text(_sha256(lib))
        os.replace(checksum, target.with_suffix(".sha256"))
        os.replace(lib, target)


def _verified(target: Path) -> bool:
    try:
        return target.with_suffix(".sha256").read_text().strip() == _sha256(target)
    except OSError:
        return False


def _load() -> Optional[_Library]:
    global _LIBRARY, _FAILURE, _TRIED
    if _TRIED:
        return _LIBRARY
    _TRIED = True
    if sys.platform == "win32":
        _FAILURE = "native kernels are built on Linux and macOS only"
        return None
    cc = _compiler()
    if cc is None:
        _FAILURE = "no C compiler found (set CC)"
        return None
    source = _SOURCE.read_bytes()
    cache = cache_dir()
    errors = []
    for arch in _ARCH_FLAGS:
        key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(_COMPILE_FLAGS + arch).encode(),
                                         _cpu_signature().encode()])).hexdigest()[:16]
        target = cache / f"ka_kernels_{key}.so"
        try:
            if not _verified(target):  # missing, cut short or replaced: never loaded, built afresh
                _build(cc, arch, target)
            _LIBRARY = _Library(ctypes.CDLL(str(target)))
            return _LIBRARY
        except (OSError, AttributeError, subprocess.CalledProcessError) as e:
            detail = e.stderr.strip().splitlines()[-1] if isinstance(e, subprocess.CalledProcessError) and e.stderr \
                else str(e)
            errors.append(f"{' '.join(arch) or 'default flags'}: {detail}")
    _FAILURE = "building the native kernels failed (" + "; ".join(errors) + ")"
    warnings.warn(f"nnunet_allukan: {_FAILURE}; using the torch kernels. Set NNUNET_ALLUKAN_KERNELS=torch to "
                  f"silence this.")
    return None


def reset() -> None:
    """Forget the loaded library and any failure: the next use builds or loads it again (tests, after changing
    the cache folder or the compiler)."""
    global _LIBRARY, _FAILURE, _TRIED
    _LIBRARY, _FAILURE, _TRIED = None, None, False


def available() -> bool:
    """Whether the library is built and loaded (builds it at the first call)."""
    return _load() is not None


# Called where torch.compile traces a layer: torch.compile runs it as it is and keeps its answer as a constant of the
# graph, so that the first compiled call may build or import the kernels without breaking the graph. This is what
# torch.compiler.assume_constant_result(available) sets; calling that here would import torch._dynamo (and with it
# Triton) with the layers.
available._dynamo_marked_constant = True


def library_path() -> Optional[str]:
    """The loaded library's file (None before a successful build)."""
    return None if _LIBRARY is None else _LIBRARY.lib._name


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False after a build attempt (None when it is True or was not tried)."""
    return None if _LIBRARY is not None else _FAILURE


def covers(kernel: str, device_type: str, grid: SplineGrid, full_grad: bool = False) -> Optional[str]:
    """None when the native kernels compute this call, otherwise why not."""
    if kernel == "basis_derivative_dot" or full_grad:
        return "no native kernel for the spline path's input gradient (grad_free=False)"
    if device_type != "cpu":
        return f"{device_type} tensors (native: CPU)"
    if _family_name(grid) not in FAMILIES:
        return f"spline order {grid.spline_order} (native: B-splines of order 1, 2, 3, rbf, chebyshev, relu)"
    if not available():
        return unavailable_reason()
    if grid.n_bases > _LIBRARY.max_bases:
        return f"{grid.n_bases} bases (native: at most {_LIBRARY.max_bases})"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The operators. Arguments: x in float32/float64 (the seam casts half precision), the grid as (t0, h, n_bases) and
# ``zero`` = B(0) when the convolution pads (then C B(0) is subtracted from the channel sums), else None.
# ---------------------------------------------------------------------------------------------------------------
def _check(name: str, t: torch.Tensor, dims: int, dtype: Optional[torch.dtype] = None) -> None:
    what = f"nnunet_allukan native kernel: {name} must"
    if t.device.type != "cpu":
        raise ValueError(f"{what} be a CPU tensor, got one on {t.device}")
    if t.dtype not in _DTYPES:
        raise ValueError(f"{what} be float32 or float64, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{what} have x's dtype {dtype}, got {t.dtype}")
    if t.dim() != dims:
        raise ValueError(f"{what} be {dims}-d, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{what} be contiguous, got strides {t.stride()} for shape {tuple(t.shape)}")


def _shift(n_bases: int, zero: Optional[Sequence[float]], c: int) -> ctypes.Array:
    if n_bases > _LIBRARY.max_bases:
        raise ValueError(f"nnunet_allukan native kernel: {n_bases} bases, the library's limit is {_LIBRARY.max_bases}")
    if zero is not None and len(zero) != n_bases:
        raise ValueError(f"nnunet_allukan native kernel: B(0) must have one value per basis ({n_bases}), "
                         f"got {len(zero)}")
    return (ctypes.c_double * n_bases)(*([0.0] * n_bases if zero is None else [c * z for z in zero]))


# The basis families of the C kernels and their ids there (KA_CUBIC ... in native_kernels.c); B-splines by order.
FAMILIES = {"bspline3": 0, "rbf": 1, "chebyshev": 2, "relu": 3, "bspline1": 4, "bspline2": 5}


def _family_name(grid: SplineGrid) -> str:
    return f"bspline{grid.spline_order}" if grid.basis == "bspline" else grid.basis


def _family(family: int) -> int:
    if family not in FAMILIES.values():
        raise ValueError(f"nnunet_allukan native kernel: family must be one of {sorted(FAMILIES.values())} "
                         f"({', '.join(FAMILIES)}), got {family!r}")
    return int(family)


def _threads(values: int) -> int:
    return max(1, min(torch.get_num_threads(), values // _VALUES_PER_THREAD))


def _library() -> _Library:
    if _LIBRARY is None and _load() is None:
        raise RuntimeError(f"nnunet_allukan native kernels unavailable: {_FAILURE}")
    return _LIBRARY


def _basis_sums_into(x, silu: Optional[torch.Tensor], sums: torch.Tensor, silu_stride: int, sums_stride: int,
                     t0: float, h: float, n_bases: int, zero, family: int, centre: float) -> None:
    n, c, p = x.shape
    _library().functions["ka_basis_sums", x.dtype](
        x.data_ptr(), None if silu is None else silu.data_ptr(), sums.data_ptr(), n, c, p, silu_stride, sums_stride,
        n_bases, _family(family), t0, h, centre, _shift(n_bases, zero, c), _threads(x.numel()))


@torch.library.custom_op("nnunet_allukan::basis_sums", mutates_args=())
def _basis_sums_op(x: torch.Tensor, t0: float, h: float, n_bases: int, zero: Optional[list[float]],
                   with_silu: bool, family: int = 0, centre: float = 2.0) -> torch.Tensor:
    """x [N, C, P] -> ``S_k = sum_c B_k(x_c) (- C B_k(0))`` [N, n_bases, P], or with ``with_silu``
    ``[silu(x), S]`` [N, C + n_bases, P] (KALinear's augmented input)."""
    _check("x", x, 3)
    _library()
    n, c, p = x.shape
    c_out = c * int(with_silu)  # silu(x) in the first C channels, then S
    out = x.new_empty((n, c_out + n_bases, p))
    stride = (c_out + n_bases) * p
    _basis_sums_into(x, out if with_silu else None, out[:, c_out:], stride, stride, t0, h, n_bases, zero, family,
                     centre)
    return out


@_basis_sums_op.register_fake
def _(x, t0, h, n_bases, zero, with_silu, family=0, centre=2.0):
    return x.new_empty((x.shape[0], x.shape[1] * int(with_silu) + n_bases, x.shape[2]))


def _window_output(size: Sequence[int], kernel, stride, padding, dilation) -> list:
    return [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)]


@torch.library.custom_op("nnunet_allukan::silu_and_window_sums", mutates_args=())
def _silu_and_window_sums_op(x: torch.Tensor, t0: float, h: float, n_bases: int, zero: Optional[list[float]],
                             kernel: list[int], stride: list[int], padding: list[int], dilation: list[int],
                             family: int = 0, centre: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C, *sp] (2D or 3D) -> (silu(x), window sums P [N, n_bases, *sp_out] of a convolution with that
    geometry; with ``zero`` every padded tap adds its C B(0))."""
    nd = len(kernel)
    if nd not in (2, 3) or not len(stride) == len(padding) == len(dilation) == nd:
        raise ValueError(f"nnunet_allukan native kernel: a 2D or 3D geometry, got {kernel}, {stride}, {padding}, "
                         f"{dilation}")
    _check("x", x, nd + 2)
    lib = _library()
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    silu, s = torch.empty_like(x), x.new_empty((n, n_bases, *sp))
    _basis_sums_into(x.view(n, c, -1), silu, s, c * math.prod(sp), n_bases * math.prod(sp), t0, h, n_bases, zero,
                     family, centre)
    if all(k == 1 for k in kernel) and all(st == 1 for st in stride) and not any(padding):
        return silu, s
    lift = (1,) * (3 - nd)  # 2D as 3D with one plane
    size, k, st = lift + tuple(sp), lift + tuple(kernel), lift + tuple(stride)
    pad, dil = (0,) * (3 - nd) + tuple(padding), lift + tuple(dilation)
    out_size = _window_output(size, k, st, pad, dil)
    out = s.new_empty((n, n_bases, *out_size[3 - nd:]))
    start = None if zero is None else _shift(n_bases, zero, c * math.prod(kernel))  # the padded taps' C B(0)
    arr = ctypes.c_int64 * 3
    lib.functions["ka_window_sums", x.dtype](s.data_ptr(), out.data_ptr(), start, n_bases, n * n_bases, arr(*size),
                                             arr(*out_size), arr(*k), arr(*st), arr(*pad), arr(*dil),
                                             _threads(out.numel() * math.prod(k)))
    return silu, out


@_silu_and_window_sums_op.register_fake
def _(x, t0, h, n_bases, zero, kernel, stride, padding, dilation, family=0, centre=2.0):
    out_size = _window_output(x.shape[2:], kernel, stride, padding, dilation)
    return torch.empty_like(x), x.new_empty((x.shape[0], n_bases, *out_size))


@torch.library.custom_op("nnunet_allukan::activation_sums", mutates_args=())
def _activation_sums_op(x: torch.Tensor, v: torch.Tensor, t0: float, h: float, zero: Optional[list[float]],
                        family: int = 0, centre: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, G, C, P], v [G, n_bases] -> (silu(x), ``sum_c phi_g(x_c) (- C phi_g(0))`` [B, G, 1, P]) with
    ``phi_g = sum_k v[g, k] B_k``. Autograd: bases constant (grad-free), see :func:`_activation_sums_backward_op`."""
    _check("x", x, 4)
    _check("v", v, 2, x.dtype)
    b, g, c, p = x.shape
    if v.shape[0] != g:
        raise ValueError(f"nnunet_allukan native kernel: v must be [{g}, n_bases], got {tuple(v.shape)}")
    lib = _library()
    shift = _shift(v.shape[1], zero, c)
    silu, phi = torch.empty_like(x), x.new_empty((b, g, 1, p))
    lib.functions["ka_activation_sums", x.dtype](x.data_ptr(), v.data_ptr(), silu.data_ptr(), phi.data_ptr(), b, g, c,
                                                 p, v.shape[1], _family(family), t0, h, centre, shift,
                                                 _threads(x.numel()))
    return silu, phi


@_activation_sums_op.register_fake
def _(x, v, t0, h, zero, family=0, centre=2.0):
    return torch.empty_like(x), x.new_empty((x.shape[0], x.shape[1], 1, x.shape[3]))


@torch.library.custom_op("nnunet_allukan::activation_sums_backward", mutates_args=())
def _activation_sums_backward_op(x: torch.Tensor, grad_silu: torch.Tensor, grad_phi: torch.Tensor, t0: float,
                                 h: float, n_bases: int, zero: Optional[list[float]], family: int = 0,
                                 centre: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`activation_sums` with constant bases: (``grad_silu * silu'(x)``, dL/dv [G, n_bases])."""
    _check("x", x, 4)
    _check("grad_silu", grad_silu, 4, x.dtype)
    _check("grad_phi", grad_phi, 4, x.dtype)
    b, g, c, p = x.shape
    if grad_silu.shape != x.shape or grad_phi.shape != (b, g, 1, p):
        raise ValueError(f"nnunet_allukan native kernel: gradients of shapes {tuple(x.shape)} and {(b, g, 1, p)}, "
                         f"got {tuple(grad_silu.shape)} and {tuple(grad_phi.shape)}")
    lib = _library()
    shift = _shift(n_bases, zero, c)
    grad_x = torch.empty_like(x)
    parts = torch.empty((b, g, -(-p // lib.block), n_bases), dtype=torch.float64)  # per block of positions
    lib.functions["ka_activation_sums_backward", x.dtype](
        x.data_ptr(), grad_silu.data_ptr(), grad_phi.data_ptr(), grad_x.data_ptr(), parts.data_ptr(), b, g, c, p,
        n_bases, _family(family), t0, h, centre, shift, _threads(x.numel()))
    return grad_x, parts.sum((0, 2)).to(x.dtype)


@_activation_sums_backward_op.register_fake
def _(x, grad_silu, grad_phi, t0, h, n_bases, zero, family=0, centre=2.0):
    return torch.empty_like(x), x.new_empty((x.shape[1], n_bases))


def _activation_sums_setup(ctx, inputs, output) -> None:
    x, v, ctx.t0, ctx.h, ctx.zero, ctx.family, ctx.centre = inputs
    ctx.save_for_backward(x)
    ctx.n_bases = v.shape[1]


def _activation_sums_grad(ctx, grad_silu, grad_phi):
    (x,) = ctx.saved_tensors
    grad_x, grad_v = _activation_sums_backward_op(x, grad_silu.contiguous(), grad_phi.contiguous(), ctx.t0, ctx.h,
                                              ctx.n_bases, ctx.zero, ctx.family, ctx.centre)
    return grad_x, grad_v, None, None, None, None, None


_activation_sums_op.register_autograd(_activation_sums_grad, setup_context=_activation_sums_setup)


# ---------------------------------------------------------------------------------------------------------------
# The seam's protocol (see kernels/__init__.py), on the operators.
# ---------------------------------------------------------------------------------------------------------------
def _zero(grid: SplineGrid, padded: bool) -> Optional[list[float]]:
    return list(grid.zero_bases) if padded else None


def _kernel_grid(grid: SplineGrid) -> tuple[float, float, int, float]:
    """(t0, h, family, centre) of the C kernels (native_kernels.c): the input is scaled as (x - t0) / h
    (:meth:`SplineGrid.kernel_scaling`) and basis k centred at k + centre (chebyshev: no centre, tanh)."""
    t0, h = grid.kernel_scaling()
    centre = 0.0 if grid.basis == "chebyshev" else 0.5 * (grid.spline_order + 1)
    return t0, h, FAMILIES[_family_name(grid)], centre


def basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    t0, h, family, centre = _kernel_grid(grid)
    return _basis_sums_op(x, t0, h, grid.n_bases, _zero(grid, padded), False, family, centre)


def silu_and_basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    t0, h, family, centre = _kernel_grid(grid)
    return _basis_sums_op(x, t0, h, grid.n_bases, _zero(grid, padded), True, family, centre)


def silu_and_window_sums(x: torch.Tensor, grid: SplineGrid, kernel, stride, padding, dilation):
    t0, h, family, centre = _kernel_grid(grid)
    return _silu_and_window_sums_op(x, t0, h, grid.n_bases, _zero(grid, any(padding)), list(kernel),
                                    list(stride), list(padding), list(dilation), family, centre)


def activation_sums(x: torch.Tensor, grid: SplineGrid, v: torch.Tensor, padded: bool):
    t0, h, family, centre = _kernel_grid(grid)
    return _activation_sums_op(x, v, t0, h, _zero(grid, padded), family, centre)


def activation_sums_backward(x, grid: SplineGrid, grad_silu, grad_phi, v, padded: bool, full_grad: bool):
    t0, h, family, centre = _kernel_grid(grid)
    return _activation_sums_backward_op(x, grad_silu, grad_phi, t0, h, grid.n_bases, _zero(grid, padded), family,
                                        centre)
