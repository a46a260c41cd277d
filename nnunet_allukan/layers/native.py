"""Native CPU kernels for the basis passes of the KA / KAonv layers (cubic grids, float32 and float64).

``native_kernels.c`` holds one pass over the input per kernel: silu(x) and the per-group channel sums of the
eight cubic bases (``basis_sums``), their zero-padded window sums over a convolution's taps (``window_sums``), and
the depthwise activation map with its backward (``activation_sums``, ``activation_sums_backward``). They do what
the tensor kernels in splines.py do, without inductor (whose compiler alone keeps ~180 MiB of a training
process's memory) and without the eager kernels' per-basis temporaries.

The library is compiled with the system C compiler at first use (under a second) into a per-user cache,
keyed by the source, the compiler, its flags and the CPU, and loaded with ctypes. Where no compiler is found
or the build fails, :func:`available` says False and splines.py uses its tensor kernels; ``NNUNET_ALLUKAN_NATIVE``
(read once, at import) ``=0`` turns the native kernels off, :func:`set_native_kernels` switches at run time.
Threads: up to ``torch.get_num_threads()``, each on a contiguous share of the work.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

__all__ = ["available", "set_native_kernels", "native_kernels_enabled", "basis_sums", "window_sums",
           "activation_sums", "activation_sums_backward", "unavailable_reason", "covers", "supports"]

_SOURCE = Path(__file__).with_name("native_kernels.c")
# -ffast-math at compile time only: linked with it, gcc would add crtfastmath.o, which sets the process's
# flush-to-zero mode when the library loads.
_COMPILE_FLAGS = ("-O3", "-ffast-math", "-fPIC", "-std=c99", "-D_POSIX_C_SOURCE=200112L")
# Tried in order until one builds and loads: OpenMP (torch's own runtime, see native_kernels.c) and the CPU's
# instruction set first; plain C with POSIX threads last.
_ARCH_FLAGS = (("-fopenmp", "-march=native", "-mprefer-vector-width=256"), ("-fopenmp", "-march=native"),
               ("-march=native",), ())
_DTYPES = {torch.float32: "f", torch.float64: "d"}
MAX_BASES = 32  # MAX_BASES in native_kernels.c
_BLOCK = 512  # BLOCK in native_kernels.c
# Below this many input values a kernel runs on one thread: starting threads costs more than it saves.
_VALUES_PER_THREAD = 1 << 15

_NATIVE_MODES = {"auto": True, "1": True, "on": True, "true": True, "yes": True,
                 "0": False, "off": False, "false": False, "no": False}


def _parse_mode(value: str) -> bool:
    mode = _NATIVE_MODES.get(value.strip().lower())
    if mode is None:
        raise ValueError(f"NNUNET_ALLUKAN_NATIVE must be auto, 0 or 1, got {value!r}")
    return mode


_ENABLED = _parse_mode(os.environ.get("NNUNET_ALLUKAN_NATIVE", "auto"))  # read once, at import
_LIBRARY: Optional[ctypes.CDLL] = None
_FAILURE: Optional[str] = None
_TRIED = False


def set_native_kernels(enabled: bool) -> None:
    """Use (True) or bypass (False) the native kernels from now on in this process."""
    global _ENABLED
    _ENABLED = bool(enabled)


def native_kernels_enabled() -> bool:
    return _ENABLED


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


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nnunet_allukan`` (default ``~/.cache``); a per-user temporary folder if that is not
    writable (a read-only home on a cluster node)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache = Path(root) / "nnunet_allukan"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        if os.access(cache, os.W_OK | os.X_OK):
            return cache
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"nnunet_allukan-{uid}"


def _run(cmd: Sequence[str]) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, text=True)


def _build(cc: str, arch: Sequence[str], target: Path) -> None:
    """Compile both precisions and link them into ``target``, atomically (parallel processes may build too)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = []
        for precision, define in (("f", []), ("d", ["-DKA_DOUBLE"])):
            obj = os.path.join(tmp, f"kernels_{precision}.o")
            _run([*cc.split(), *_COMPILE_FLAGS, *arch, *define, "-c", str(_SOURCE), "-o", obj])
            objects.append(obj)
        lib = os.path.join(tmp, target.name)
        _run([*cc.split(), "-shared", *[f for f in arch if f == "-fopenmp"], *objects, "-o", lib, "-lm",
              "-lpthread"])
        os.replace(lib, target)


def _load() -> Optional[ctypes.CDLL]:
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
    cache = _cache_dir()
    errors = []
    for arch in _ARCH_FLAGS:
        key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(_COMPILE_FLAGS + arch).encode(),
                                         _cpu_signature().encode()])).hexdigest()[:16]
        target = cache / f"ka_kernels_{key}.so"
        try:
            if not target.exists():
                _build(cc, arch, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, subprocess.CalledProcessError) as e:
            detail = e.stderr.strip().splitlines()[-1] if isinstance(e, subprocess.CalledProcessError) and e.stderr \
                else str(e)
            errors.append(f"{' '.join(arch) or 'default flags'}: {detail}")
            continue
        _declare(lib)
        _LIBRARY = lib
        return lib
    _FAILURE = "building the native kernels failed (" + "; ".join(errors) + ")"
    warnings.warn(f"nnunet_allukan: {_FAILURE}; using the tensor kernels. Set NNUNET_ALLUKAN_NATIVE=0 to silence "
                  f"this.")
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, dbl, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    signatures = {
        "ka_basis_sums": [p, p, p, i64, i64, i64, i64, i64, i32, dbl, dbl, p, i64],
        "ka_window_sums": [p, p, p, i64, i64, p, p, p, p, p, p, i64],
        "ka_activation_sums": [p, p, p, p, i64, i64, i64, i64, i32, dbl, dbl, p, i64],
        "ka_activation_sums_backward": [p, p, p, p, p, i64, i64, i64, i64, i32, dbl, dbl, p, i64],
    }
    for name, args in signatures.items():
        for precision in _DTYPES.values():
            fn = getattr(lib, f"{name}_{precision}")
            fn.argtypes, fn.restype = args, None


def available() -> bool:
    """Whether the native kernels are on and built (builds them at the first call)."""
    return _ENABLED and _load() is not None


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False after a build attempt (None when it is True or was not tried)."""
    return None if _LIBRARY is not None else ("NNUNET_ALLUKAN_NATIVE=0" if not _ENABLED else _FAILURE)


def covers(order: int, n_bases: int) -> bool:
    """Whether the native kernels compute bases of this grid: cubic, at most MAX_BASES (native_kernels.c)."""
    return order == 3 and n_bases <= MAX_BASES


def supports(x: torch.Tensor) -> bool:
    """Whether a kernel call on ``x`` can run natively: CPU, float32/float64 (the kernels themselves cover cubic
    grids of at most 32 bases; the caller keeps traced code, a whole-network torch.compile, on tensor kernels)."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and available()


def _fn(name: str, dtype: torch.dtype):
    return getattr(_LIBRARY, f"{name}_{_DTYPES[dtype]}")


def _threads(values: int) -> int:
    return max(1, min(torch.get_num_threads(), values // _VALUES_PER_THREAD))


def _doubles(values: Sequence[float]) -> ctypes.Array:
    return (ctypes.c_double * len(values))(*values)


def basis_sums(x: torch.Tensor, t0: float, h: float, n_bases: int, shift: Optional[Sequence[float]],
               with_silu: bool, out: Optional[torch.Tensor] = None) -> tuple[Optional[torch.Tensor], torch.Tensor]:
    """x ``[N, C, P]`` (contiguous) -> (``silu(x)`` or None, ``S_k - shift_k`` ``[N, n_bases, P]``).

    With ``out`` ``[N, C + n_bases, P]`` both are written into it (silu in the first C channels)."""
    n, c, p = x.shape
    if out is None:
        silu = torch.empty_like(x) if with_silu else None
        sums = x.new_empty((n, n_bases, p))
        silu_stride, sums_stride = c * p, n_bases * p
        silu_ptr, sums_ptr = None if silu is None else silu.data_ptr(), sums.data_ptr()
    else:
        silu, sums = out[:, :c], out[:, c:]
        silu_stride = sums_stride = (c + n_bases) * p
        silu_ptr = out.data_ptr() if with_silu else None
        sums_ptr = out.data_ptr() + c * p * out.element_size()
    _fn("ka_basis_sums", x.dtype)(x.data_ptr(), silu_ptr, sums_ptr, n, c, p, silu_stride, sums_stride, n_bases,
                                  t0, h, _doubles(shift or [0.0] * n_bases), _threads(x.numel()))
    return silu, sums


def window_sums(s: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], start: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Zero-padded sums over every receptive field: ``[N, M, *sp] -> [N, M, *sp_out]`` (2D or 3D, contiguous),
    plus ``start[m]`` on map m when given."""
    nd = len(kernel)
    lift = (1,) * (3 - nd)  # 2D as 3D with one plane
    size = lift + tuple(s.shape[2:])
    k, st = lift + tuple(kernel), lift + tuple(stride)
    pad, dil = (0,) * (3 - nd) + tuple(padding), lift + tuple(dilation)
    out_size = [(size[d] + 2 * pad[d] - dil[d] * (k[d] - 1) - 1) // st[d] + 1 for d in range(3)]
    out = s.new_empty(tuple(s.shape[:2]) + tuple(out_size[3 - nd:]))
    arr = ctypes.c_int64 * 3
    _fn("ka_window_sums", s.dtype)(s.data_ptr(), out.data_ptr(), None if start is None else _doubles(start),
                                   s.shape[1], s.shape[0] * s.shape[1], arr(*size), arr(*out_size), arr(*k),
                                   arr(*st), arr(*pad), arr(*dil), _threads(out.numel() * math.prod(k)))
    return out


def activation_sums(x: torch.Tensor, v: torch.Tensor, t0: float, h: float, shift: Optional[Sequence[float]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[B, G, C, P]``, v ``[G, n_bases]`` -> (``silu(x)``, ``sum_c phi_g(x_c) - sum_k v_k shift_k``
    ``[B, G, 1, P]``) with ``phi_g = sum_k v[g, k] B_k``."""
    b, g, c, p = x.shape
    n_bases = v.shape[1]
    v = v.to(x.dtype).contiguous()
    silu = torch.empty_like(x)
    phi = x.new_empty((b, g, 1, p))
    _fn("ka_activation_sums", x.dtype)(x.data_ptr(), v.data_ptr(), silu.data_ptr(), phi.data_ptr(), b, g, c, p,
                                       n_bases, t0, h, _doubles(shift or [0.0] * n_bases), _threads(x.numel()))
    return silu, phi


def activation_sums_backward(x: torch.Tensor, grad_silu: torch.Tensor, grad_phi: torch.Tensor, n_bases: int,
                             t0: float, h: float, shift: Optional[Sequence[float]]
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-free backward of :func:`activation_sums`: (``grad_silu * silu'(x)`` ``[B, G, C, P]``,
    dL/dv ``[G, n_bases]`` in float64)."""
    b, g, c, p = x.shape
    blocks = -(-p // _BLOCK)  # one partial sum of dL/dv per block of positions
    grad_x = torch.empty_like(x)
    parts = torch.empty((b, g, blocks, n_bases), dtype=torch.float64)
    _fn("ka_activation_sums_backward", x.dtype)(x.data_ptr(), grad_silu.data_ptr(), grad_phi.data_ptr(),
                                                grad_x.data_ptr(), parts.data_ptr(), b, g, c, p, n_bases, t0, h,
                                                _doubles(shift or [0.0] * n_bases), _threads(x.numel()))
    return grad_x, parts.sum((0, 2))
