"""The ``triton`` backend: the Triton kernels of ``triton_kernels.py`` as torch operators (CUDA; every basis
family, B-splines of order 1 to 3).

Each pass reads x once and reduces the bases over the channels in registers: no tensor with one value per basis
and channel (``[N, n_bases * C, ...]``) is written, forward or backward. The operators
(``torch.ops.nnunet_allukan.triton_*``) have fake implementations, so a whole-network ``torch.compile`` keeps
calling them, and registered autograd (the exact gradients, spline path included, by a second kernel). They take
float16/bfloat16/float32/float64 inputs and accumulate in float32 (float64 for float64); sums are returned in
that accumulation dtype, silu in x's dtype. The window sums of KAonv are the channel sums window-summed by
:func:`~.tensor.window_sums` (a depthwise convolution over n_bases maps, the size of the layer's output).

Triton is imported at the first use, never at import: CPU installs of torch have none, and then
:func:`unavailable_reason` says why and the seam uses the ``torch`` backend. With ``TRITON_INTERPRET=1`` set
before the first use, the kernels run in Triton's interpreter on CPU tensors (the tests' way to run them).
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch

from ..splines import SplineGrid, compute_dtype
from . import tensor

__all__ = ["available", "unavailable_reason", "interpreted", "reset", "covers"]

# The B-spline orders the kernels have a closed form for (every order of the other families).
ORDERS = (1, 2, 3)
READS_HALF = True  # half-precision inputs are read as they are and accumulated in float32
_KERNELS = None
_FAILURE: Optional[str] = None
_TRIED = False


def _load():
    global _KERNELS, _FAILURE, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            _KERNELS = importlib.import_module(".triton_kernels", __package__)
        except Exception as e:  # ImportError without Triton; a broken install raises what it raises
            _FAILURE = f"Triton does not import ({type(e).__name__}: {e})"
    return _KERNELS


def available() -> bool:
    """Whether Triton imports and the kernels are defined (imports Triton at the first call)."""
    return _load() is not None


# Called where torch.compile traces a layer: torch.compile runs it as it is and keeps its answer as a constant of the
# graph, so that the first compiled call may build or import the kernels without breaking the graph. This is what
# torch.compiler.assume_constant_result(available) sets; calling that here would import torch._dynamo (and with it
# Triton) with the layers.
available._dynamo_marked_constant = True


def unavailable_reason() -> Optional[str]:
    """Why :func:`available` is False after an attempt (None when it is True or was not tried)."""
    return None if _KERNELS is not None else _FAILURE


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` at their first use)."""
    return _load() is not None and _KERNELS.INTERPRETED


def reset() -> None:
    """Forget the outcome of loading the kernels: the next use imports them again (tests, after changing what
    imports). Kernels already imported stay in ``sys.modules``."""
    global _KERNELS, _FAILURE, _TRIED
    _KERNELS, _FAILURE, _TRIED = None, None, False


def covers(kernel: str, device_type: str, grid: SplineGrid, full_grad: bool = False) -> Optional[str]:
    """None when the Triton kernels compute this call, otherwise why not."""
    if grid.basis == "bspline" and grid.spline_order not in ORDERS:
        return f"spline order {grid.spline_order} (triton: B-splines of order {', '.join(map(str, ORDERS))})"
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not _TRIED:
        return f"{device_type} tensors (triton: CUDA)"  # decided without importing Triton
    if not available():
        return unavailable_reason()
    if device_type != "cuda" and not _KERNELS.INTERPRETED:
        return f"{device_type} tensors (triton: CUDA)"
    if grid.n_bases > _KERNELS.MAX_BASES:
        return f"{grid.n_bases} bases (triton: at most {_KERNELS.MAX_BASES})"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The operators. x: [N, C, P] (or [B, G, C, P]), any float dtype; the grid as (t0, h, n_bases, basis, order), the
# input scaled as (x - t0) / h (SplineGrid.kernel_scaling); ``padded``: the channel sums are shifted by -C B(0) (a
# zero-padding convolution follows).
# ---------------------------------------------------------------------------------------------------------------
def _check(name: str, t: torch.Tensor, dims: int) -> None:
    if t.dim() != dims or not t.dtype.is_floating_point:
        raise ValueError(f"nnunet_allukan triton kernel: {name} must be a {dims}-d floating-point tensor, got "
                         f"{t.dtype} {tuple(t.shape)}")


def _kernels(n_bases: int):
    if _load() is None:
        raise RuntimeError(f"nnunet_allukan triton kernels unavailable: {_FAILURE}")
    if not 1 <= n_bases <= _KERNELS.MAX_BASES:
        raise ValueError(f"nnunet_allukan triton kernel: {n_bases} bases, the kernels' limit is {_KERNELS.MAX_BASES}")
    return _KERNELS


@torch.library.custom_op("nnunet_allukan::triton_basis_sums", mutates_args=())
def _basis_sums_op(x: torch.Tensor, t0: float, h: float, n_bases: int, padded: bool,
                   with_silu: bool, basis: str = "bspline", order: int = 3) -> torch.Tensor:
    """x [N, C, P] -> ``S_k = sum_c B_k(x_c) (- C B_k(0))`` [N, n_bases, P], or with ``with_silu``
    ``[silu(x), S]`` [N, C + n_bases, P] (KALinear's augmented input), in the accumulation dtype."""
    _check("x", x, 3)
    k = _kernels(n_bases)
    x = x.contiguous()
    n, c, p = x.shape
    c_out = c * int(with_silu)
    out = x.new_empty((n, c_out + n_bases, p), dtype=compute_dtype(x))
    k.sums(x, t0, h, n_bases, padded, out if with_silu else None, out[:, c_out:], family=basis, order=order)
    return out


@_basis_sums_op.register_fake
def _(x, t0, h, n_bases, padded, with_silu, basis="bspline", order=3):
    return x.new_empty((x.shape[0], x.shape[1] * int(with_silu) + n_bases, x.shape[2]), dtype=compute_dtype(x))


@torch.library.custom_op("nnunet_allukan::triton_silu_and_basis_sums", mutates_args=())
def _silu_and_basis_sums_op(x: torch.Tensor, t0: float, h: float, n_bases: int, padded: bool,
                            basis: str = "bspline", order: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, C, P] -> (silu(x) in x's dtype, S [N, n_bases, P] in the accumulation dtype), one pass."""
    _check("x", x, 3)
    k = _kernels(n_bases)
    x = x.contiguous()
    silu, s = torch.empty_like(x), x.new_empty((x.shape[0], n_bases, x.shape[2]), dtype=compute_dtype(x))
    k.sums(x, t0, h, n_bases, padded, silu, s, family=basis, order=order)
    return silu, s


@_silu_and_basis_sums_op.register_fake
def _(x, t0, h, n_bases, padded, basis="bspline", order=3):
    return torch.empty_like(x), x.new_empty((x.shape[0], n_bases, x.shape[2]), dtype=compute_dtype(x))


@torch.library.custom_op("nnunet_allukan::triton_basis_sums_backward", mutates_args=())
def _basis_sums_backward_op(x: torch.Tensor, grad_silu: Optional[torch.Tensor], grad_sums: torch.Tensor,
                            t0: float, h: float, basis: str = "bspline", order: int = 3) -> torch.Tensor:
    """dL/dx of (silu(x), S) given dL/dsilu (or None) and dL/dS [N, n_bases, P]:
    ``grad_silu * silu'(x) + sum_k grad_sums_k B'_k(x)``, in x's dtype."""
    _check("x", x, 3)
    _check("grad_sums", grad_sums, 3)
    if grad_sums.shape[::2] != x.shape[::2] or (grad_silu is not None and grad_silu.shape != x.shape):
        raise ValueError(f"nnunet_allukan triton kernel: gradients of shapes {tuple(x.shape)} and [N, n_bases, P], "
                         f"got {None if grad_silu is None else tuple(grad_silu.shape)} and {tuple(grad_sums.shape)}")
    k = _kernels(grad_sums.shape[1])
    x = x.contiguous()
    grad_x = torch.empty_like(x)
    k.grads(x, t0, h, grad_sums.shape[1], None if grad_silu is None else grad_silu.contiguous(),
            grad_sums.contiguous(), None, None, 1, True, False, grad_x, family=basis, order=order)
    return grad_x


@_basis_sums_backward_op.register_fake
def _(x, grad_silu, grad_sums, t0, h, basis="bspline", order=3):
    return torch.empty_like(x)


def _basis_sums_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.t0, ctx.h = inputs[1], inputs[2]
    ctx.basis, ctx.order = inputs[-2:]  # the last two arguments of both operators (defaults filled in)


def _basis_sums_grad(ctx, grad):
    (x,) = ctx.saved_tensors
    c = grad.shape[1] - ctx.n_bases
    grad_silu = grad[:, :c] if c else None
    return (_basis_sums_backward_op(x, grad_silu, grad[:, c:], ctx.t0, ctx.h, ctx.basis, ctx.order),
            None, None, None, None, None, None, None)


def _basis_sums_setup_nb(ctx, inputs, output) -> None:
    _basis_sums_setup(ctx, inputs, output)
    ctx.n_bases = inputs[3]


def _silu_and_basis_sums_grad(ctx, grad_silu, grad_sums):
    (x,) = ctx.saved_tensors
    return (_basis_sums_backward_op(x, grad_silu, grad_sums, ctx.t0, ctx.h, ctx.basis, ctx.order),
            None, None, None, None, None, None)


_basis_sums_op.register_autograd(_basis_sums_grad, setup_context=_basis_sums_setup_nb)
_silu_and_basis_sums_op.register_autograd(_silu_and_basis_sums_grad, setup_context=_basis_sums_setup)


@torch.library.custom_op("nnunet_allukan::triton_activation_sums", mutates_args=())
def _activation_sums_op(x: torch.Tensor, v: torch.Tensor, t0: float, h: float, padded: bool, basis: str = "bspline",
                        order: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, G, C, P], v [G, n_bases] -> (silu(x) in x's dtype, ``sum_c phi_g(x_c) (- C phi_g(0))`` [B, G, 1, P]
    in the accumulation dtype), ``phi_g = sum_k v[g, k] B_k``."""
    _check("x", x, 4)
    _check("v", v, 2)
    b, g, c, p = x.shape
    if v.shape[0] != g:
        raise ValueError(f"nnunet_allukan triton kernel: v must be [{g}, n_bases], got {tuple(v.shape)}")
    k = _kernels(v.shape[1])
    x = x.contiguous()
    silu, phi = torch.empty_like(x), x.new_empty((b, g, 1, p), dtype=compute_dtype(x))
    k.sums(x.view(b * g, c, p), t0, h, v.shape[1], padded, silu.view(b * g, c, p), phi.view(b * g, 1, p),
           v.contiguous(), g, family=basis, order=order)
    return silu, phi


@_activation_sums_op.register_fake
def _(x, v, t0, h, padded, basis="bspline", order=3):
    return torch.empty_like(x), x.new_empty((x.shape[0], x.shape[1], 1, x.shape[3]), dtype=compute_dtype(x))


@torch.library.custom_op("nnunet_allukan::triton_activation_sums_backward", mutates_args=())
def _activation_sums_backward_op(x: torch.Tensor, grad_silu: torch.Tensor, grad_phi: torch.Tensor, v: torch.Tensor,
                                 t0: float, h: float, padded: bool, spline_grad: bool, basis: str = "bspline",
                                 order: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`activation_sums`: (dL/dx in x's dtype: the silu path's, plus the spline path's
    ``grad_phi * phi'(x)`` with ``spline_grad``; dL/dv [G, n_bases] in the accumulation dtype)."""
    _check("x", x, 4)
    b, g, c, p = x.shape
    if grad_silu.shape != x.shape or grad_phi.shape != (b, g, 1, p) or v.shape[0] != g:
        raise ValueError(f"nnunet_allukan triton kernel: gradients of shapes {tuple(x.shape)} and {(b, g, 1, p)} "
                         f"and v [{g}, n_bases], got {tuple(grad_silu.shape)}, {tuple(grad_phi.shape)}, "
                         f"{tuple(v.shape)}")
    k = _kernels(v.shape[1])
    x = x.contiguous()
    grad_x = torch.empty_like(x)
    parts = k.grads(x.view(b * g, c, p), t0, h, v.shape[1], grad_silu.contiguous().view(b * g, c, p), None,
                    grad_phi.contiguous().view(b * g, 1, p), v.contiguous(), g, spline_grad, padded,
                    grad_x.view(b * g, c, p), family=basis, order=order)
    return grad_x, parts.view(b, g, -1, v.shape[1]).sum((0, 2))


@_activation_sums_backward_op.register_fake
def _(x, grad_silu, grad_phi, v, t0, h, padded, spline_grad, basis="bspline", order=3):
    return torch.empty_like(x), x.new_empty((x.shape[1], v.shape[1]), dtype=compute_dtype(x))


def _activation_sums_setup(ctx, inputs, output) -> None:
    x, v, ctx.t0, ctx.h, ctx.padded, ctx.basis, ctx.order = inputs
    ctx.save_for_backward(x, v)


def _activation_sums_grad(ctx, grad_silu, grad_phi):
    x, v = ctx.saved_tensors
    grad_x, grad_v = _activation_sums_backward_op(x, grad_silu, grad_phi, v, ctx.t0, ctx.h, ctx.padded, True,
                                                  ctx.basis, ctx.order)
    return grad_x, grad_v.to(v.dtype), None, None, None, None, None


_activation_sums_op.register_autograd(_activation_sums_grad, setup_context=_activation_sums_setup)


# ---------------------------------------------------------------------------------------------------------------
# The seam's protocol (see kernels/__init__.py), on the operators.
# ---------------------------------------------------------------------------------------------------------------
def _grid(grid: SplineGrid) -> tuple[float, float, int, str, int]:
    """The operators' grid arguments (t0, h, n_bases, basis, order)."""
    t0, h = grid.kernel_scaling()
    return t0, h, grid.n_bases, grid.basis, grid.spline_order


def basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    t0, h, n_bases, basis, order = _grid(grid)
    return _basis_sums_op(x, t0, h, n_bases, padded, False, basis, order)


def silu_and_basis_sums(x: torch.Tensor, grid: SplineGrid, padded: bool) -> torch.Tensor:
    t0, h, n_bases, basis, order = _grid(grid)
    return _basis_sums_op(x, t0, h, n_bases, padded, True, basis, order)


def silu_and_window_sums(x: torch.Tensor, grid: SplineGrid, kernel, stride, padding, dilation):
    n, c, sp = x.shape[0], x.shape[1], x.shape[2:]
    t0, h, n_bases, basis, order = _grid(grid)
    silu, s = _silu_and_basis_sums_op(x.reshape(n, c, -1), t0, h, n_bases, any(padding), basis, order)
    return silu.view(x.shape), tensor.window_sums(s.view(n, n_bases, *sp), grid, c, kernel, stride, padding,
                                                  dilation)


def activation_sums(x: torch.Tensor, grid: SplineGrid, v: torch.Tensor, padded: bool):
    t0, h, _, basis, order = _grid(grid)
    return _activation_sums_op(x, v, t0, h, padded, basis, order)


def activation_sums_backward(x, grid: SplineGrid, grad_silu, grad_phi, v, padded: bool, full_grad: bool):
    t0, h, _, basis, order = _grid(grid)
    return _activation_sums_backward_op(x, grad_silu, grad_phi, v, t0, h, padded, full_grad, basis, order)


def basis_derivative_dot(x: torch.Tensor, grid: SplineGrid, g: torch.Tensor) -> torch.Tensor:
    t0, h, _, basis, order = _grid(grid)
    return _basis_sums_backward_op(x, None, g, t0, h, basis, order)
