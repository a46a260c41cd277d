"""The kernel seam: the basis passes the KA layers need, served by one of four backends.

Passes (no autograd unless said; x in the compute dtype, float32 for half precision, except on a backend that
reads half-precision inputs itself, ``READS_HALF``, and accumulates in float32):

- ``basis_sums``: x [N, C, P] -> ``S_k = sum_c B_k(x_c)`` [N, n_bases, P] (minus ``C B_k(0)`` when padded);
- ``silu_and_basis_sums``: x [N, C, P] -> ``[silu(x), S]`` [N, C + n_bases, P] (KALinear's augmented input);
- ``silu_and_window_sums``: x [N, C, *sp] -> silu(x) and the window sums ``P_k`` of S over a convolution's
  receptive fields [N, n_bases, *sp_out], padded taps counted (KAonv);
- ``activation_sums`` (+ ``activation_sums_backward``): x [B, G, C, P], v [G, n_bases] -> silu(x) and
  ``sum_c phi_g(x_c)`` [B, G, 1, P], ``phi_g = sum_k v[g, k] B_k`` (groups with one output: depthwise KAonv);
- ``basis_derivative_dot``: x [N, C, P], g [N, n_bases, P] -> ``sum_k g_k B'_k(x)`` (only ``grad_free=False``).

Backends, each a module with every one of these functions: ``reference`` (the definitions: dense bases, unfold,
autograd), ``torch`` (one vectorised tensor form per pass, uncompiled, any device, grid and basis family),
``native`` (C kernels as torch operators: CPU) and ``triton`` (Triton kernels as torch operators: CUDA; Triton
is imported at its first use), both for every family, B-splines of order 1 to 3. The two kernel backends also say per call whether they run it
(``covers(kernel, device_type, grid, full_grad)``: None, or why not).

Policy: ``NNUNET_ALLUKAN_KERNELS`` (read once, at import) or :func:`use`: ``auto`` (default) runs every call on
the kernel backend of its device (``native`` on CPU, ``triton`` on CUDA) where that covers it, the rest on
``torch``; ``native`` and ``triton`` run every call that backend covers on it and the rest on ``torch``, and raise
where it cannot be built or imported instead of falling back; ``torch`` and ``reference`` run everything on that
backend. Nothing is compiled: a first training step starts at once on every device. :func:`active` says which
backend serves each pass and why, :func:`describe` says it in a few lines for a log.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..splines import SplineGrid, compute_dtype, grid_bases
from . import native, reference, tensor, triton_ops

__all__ = ["KERNELS", "POLICIES", "Choice", "use", "policy", "active", "describe", "basis_sum",
           "differentiable_basis_sum", "silu_and_basis_sums", "silu_and_window_sums", "silu_and_activation_sums",
           "silu_and_activation_sums_backward", "basis_derivative_dot"]

KERNELS = ("basis_sums", "silu_and_basis_sums", "silu_and_window_sums", "activation_sums",
           "activation_sums_backward", "basis_derivative_dot")
POLICIES = ("auto", "native", "triton", "torch", "reference")
ENVIRONMENT_VARIABLE = "NNUNET_ALLUKAN_KERNELS"
_BACKENDS = {"native": native, "triton": triton_ops, "torch": tensor, "reference": reference}
# The kernel backend of each device type under ``auto``, and what it needs to serve a call.
_KERNEL_BACKEND = {"cpu": "native", "cuda": "triton"}
_SERVES = {"native": "CPU, B-spline (order 1-3) / rbf / chebyshev / relu grid, library built",
           "triton": "CUDA (or Triton's interpreter), B-spline (order 1-3) / rbf / chebyshev / relu grid, Triton "
                     "imports"}


def _parse(value: str) -> str:
    policy_ = value.strip().lower()
    if policy_ not in POLICIES:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be one of {', '.join(POLICIES)}; got {value!r}")
    return policy_


_POLICY = _parse(os.environ.get(ENVIRONMENT_VARIABLE, "auto"))


def use(policy_: str) -> None:
    """Set the kernel policy for this process: ``auto``, ``native``, ``triton``, ``torch`` or ``reference``."""
    global _POLICY
    _POLICY = _parse(policy_)


def policy() -> str:
    return _POLICY


@dataclass(frozen=True)
class Choice:
    kernel: str
    backend: str
    reason: str


def _kernel_backend(device_type: str) -> str | None:
    """The kernel backend the policy asks for on this device (None: the policy names a tensor backend, or the
    device has no kernel backend)."""
    if _POLICY in ("native", "triton"):
        return _POLICY
    return _KERNEL_BACKEND.get(device_type) if _POLICY == "auto" else None


def _backend(kernel: str, device_type: str, grid: SplineGrid, full_grad: bool) -> str:
    """The backend that runs this call."""
    if _POLICY in ("torch", "reference"):
        return _POLICY
    wanted = _kernel_backend(device_type)
    if wanted is None:
        return "torch"
    if _BACKENDS[wanted].covers(kernel, device_type, grid, full_grad) is None:
        return wanted
    if _POLICY == wanted and not _BACKENDS[wanted].available():
        raise RuntimeError(f"{ENVIRONMENT_VARIABLE}={_POLICY}, but the {_POLICY} kernels are unavailable: "
                           f"{_BACKENDS[wanted].unavailable_reason()}")
    return "torch"


def active(device_type: str = "cpu", grid: SplineGrid = SplineGrid()) -> list[Choice]:
    """Which backend serves each pass on ``device_type`` for ``grid`` under the current policy, and why (the
    kernel backend of the device is built or imported at this call if it was not yet)."""
    choices = []
    for kernel in KERNELS:
        full_grad = kernel == "basis_derivative_dot"
        backend = _backend(kernel, device_type, grid, full_grad)
        wanted = _kernel_backend(device_type)
        if backend == wanted:
            reason = f"policy {_POLICY}: {_SERVES[wanted]}"
        elif wanted is not None:
            why_not = _BACKENDS[wanted].covers(kernel, device_type, grid, full_grad)
            reason = f"policy {_POLICY}; not {wanted}: {why_not}"
        elif _POLICY == "auto":
            reason = f"policy auto: no kernel backend for {device_type} tensors"
        else:
            reason = f"policy {_POLICY}"
        choices.append(Choice(kernel, backend, reason + (", uncompiled" if backend == "torch" else "")))
    return choices


def describe(device_type: str = "cpu", grid: SplineGrid = SplineGrid()) -> str:
    """:func:`active` as a few lines for a log."""
    lines = [f"nnunet_allukan kernels on {device_type} ({ENVIRONMENT_VARIABLE}={_POLICY}):"]
    lines += [f"  {c.kernel:<26} {c.backend:<9} {c.reason}" for c in active(device_type, grid)]
    if native.library_path() is not None:
        lines.append(f"  native library: {native.library_path()}")
    return "\n".join(lines)


def _call(kernel: str, x: torch.Tensor, grid: SplineGrid, *args, full_grad: bool = False):
    backend = _BACKENDS[_backend(kernel, x.device.type, grid, full_grad)]
    if not backend.READS_HALF:  # it computes in the dtype it is given: the compute dtype
        dtype = compute_dtype(x)
        x, args = x.to(dtype), [a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args]
    return getattr(backend, kernel)(x, grid, *args)


# ---------------------------------------------------------------------------------------------------------------
# What the layers call: grouped shapes [B, G, C, *sp] in, reshapes to the passes' shapes, no autograd.
# ---------------------------------------------------------------------------------------------------------------
def _flat(x: torch.Tensor, *shape: int) -> torch.Tensor:
    return x.reshape(*shape).contiguous()


@torch.no_grad()
def basis_sum(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """``[B, G, C, *sp] -> [B, G, n_bases, *sp]``: per-basis sums over dim 2, in the compute dtype."""
    b, g, c = x.shape[:3]
    if c == 1 and math.prod(x.shape[3:]) == 1:
        # One value per (b, g) (a vanilla KAN layer's edges): a single row of b * g positions, not b * g rows of one
        # value each, which a kernel backend would run as one program (GPU) or task (CPU) per value.
        s = _call("basis_sums", _flat(x, 1, 1, b * g), grid, False)  # [1, n_bases, b * g]
        return s.reshape(grid.n_bases, b * g).t().reshape(b, g, grid.n_bases, *x.shape[3:])
    return _call("basis_sums", _flat(x, b * g, c, -1), grid, False).reshape(b, g, grid.n_bases, *x.shape[3:])


def differentiable_basis_sum(x: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """:func:`basis_sum` through autograd (full spline gradients: the paper's path without Grad-Free Spline)."""
    return grid_bases(x, grid).sum(2).movedim(-1, 2)


@torch.no_grad()
def silu_and_basis_sums(x: torch.Tensor, grid: SplineGrid, zero_padded: bool) -> torch.Tensor:
    """``[B, G, C, *sp] -> [B, G, C + n_bases, *sp]``: ``silu(x)`` and the channel sums S (minus ``C B(0)`` when
    ``zero_padded``), in the compute dtype (float32 for half-precision x: S is large)."""
    b, g, c = x.shape[:3]
    out = _call("silu_and_basis_sums", _flat(x, b * g, c, -1), grid, zero_padded)
    return out.reshape(b, g, c + grid.n_bases, *x.shape[3:])


@torch.no_grad()
def silu_and_window_sums(x: torch.Tensor, grid: SplineGrid, kernel: tuple[int, ...], stride: tuple[int, ...],
                         padding: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[B, G, C, *sp]`` -> ``silu(x)`` (x's shape and dtype) and the window sums ``P_k(p) = sum_{taps} S_k``
    ``[B, G, n_bases, *sp_out]`` (compute dtype) of a convolution of that geometry; a padded tap adds ``C B(0)``."""
    b, g, c, sp = x.shape[0], x.shape[1], x.shape[2], x.shape[3:]
    silu, p = _call("silu_and_window_sums", _flat(x, b * g, c, *sp), grid, tuple(kernel), tuple(stride),
                    tuple(padding), tuple(dilation))
    return silu.to(x.dtype).reshape(x.shape), p.reshape(b, g, grid.n_bases, *p.shape[2:])


@torch.no_grad()
def silu_and_activation_sums(x: torch.Tensor, v: torch.Tensor, grid: SplineGrid,
                             zero_padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups with one output: x ``[B, G, C, *sp]`` -> ``silu(x)`` and ``sum_c phi_g(x_c)`` ``[B, G, *sp]`` (minus
    ``C phi_g(0)`` when ``zero_padded``): silu in x's dtype, the sums in the compute dtype."""
    b, g, c = x.shape[:3]
    xc = _flat(x, b, g, c, -1)
    silu, phi = _call("activation_sums", xc, grid, _flat(v, g, -1), zero_padded)
    return silu.to(x.dtype).reshape(x.shape), phi.reshape(b, g, *x.shape[3:])


@torch.no_grad()
def silu_and_activation_sums_backward(x: torch.Tensor, grad_silu: torch.Tensor, grad_phi: torch.Tensor,
                                      v: torch.Tensor, grid: SplineGrid, zero_padded: bool,
                                      full_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`silu_and_activation_sums` given those of its outputs: dL/dx (x's shape and dtype; the
    silu path only unless ``full_grad``) and dL/dv ``[G, n_bases]`` (compute dtype)."""
    b, g, c = x.shape[:3]
    xc = _flat(x, b, g, c, -1)
    gx, gv = _call("activation_sums_backward", xc, grid, _flat(grad_silu, b, g, c, -1), _flat(grad_phi, b, g, 1, -1),
                   _flat(v, g, -1), zero_padded, bool(full_grad), full_grad=bool(full_grad))
    return gx.to(x.dtype).reshape(x.shape), gv


@torch.no_grad()
def basis_derivative_dot(x: torch.Tensor, g: torch.Tensor, grid: SplineGrid) -> torch.Tensor:
    """``sum_k g[:, :, k] * B'_k(x)``: x ``[B, G, C, *sp]``, g ``[B, G, n_bases, *sp]`` -> ``[B, G, C, *sp]``."""
    b, gr, c = x.shape[:3]
    xc = _flat(x, b * gr, c, -1)
    return _call("basis_derivative_dot", xc, grid, _flat(g, b * gr, grid.n_bases, -1)).reshape(x.shape)
