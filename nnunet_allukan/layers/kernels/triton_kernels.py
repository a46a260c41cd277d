"""The Triton kernels of the ``triton`` backend (imported only by ``triton_ops``, and only when Triton imports).

Two kernels, each one pass over an input ``x [N, C, P]`` (P positions per row, contiguous) on a 1-D launch grid
of (row n, block of positions): tiles ``[BLOCK_P, BLOCK_C, NB_PAD]`` of (position, channel, basis) are reduced
over the channels in registers, so no tensor with one value per basis and channel is ever written.

- :func:`sums`: ``S_k = sum_c B_k(x_c)`` [N, n_bases, P] (minus ``C B_k(0)`` when padded), optionally
  ``silu(x)`` written on the way and, with per-row spline weights v, ``phi = sum_k v[n % G, k] S_k`` [N, 1, P]
  instead of S (the activation sums of groups with one output).
- :func:`grads`: the gradient with respect to x, ``grad_silu * silu'(x) + sum_k w_k B'_k(x)`` with w either a
  per-basis gradient ``[N, n_bases, P]`` or ``grad_phi * v[n % G]``, and, for v's gradient, per-block partial
  sums of ``grad_phi * S_k`` [N, n_blocks, n_bases] (the caller sums them).

Inputs of any float dtype are read as they are and computed in float32 (float64 for float64 inputs); sums and
partials are written in that dtype, silu and the x gradient in the output tensors' dtype. The grid constants
arrive as a tensor of that dtype ([t0, 1/h]): a Python float would reach the kernel as float32.
Every basis family of :mod:`~nnunet_allukan.layers.splines` (the constexpr FAMILY, a name of ``BASES``, and
ORDER, the spline order) is defined once here, its values and derivatives as functions of the scaled input
``s = (x - t0) / h`` (``SplineGrid.kernel_scaling``): the local families (B-splines of order 1 to 3, rbf, relu) in
the centred form of basis k, ``u = s - k - (p + 1) / 2`` (:func:`_local_terms`; cubic:
``6 B_k = relu(2 - |u|)^3 - 4 relu(1 - |u|)^3``), chebyshev as ``T_k(tanh s)`` by its recurrence
(:func:`_term_sums`, :func:`_derivative_dot`). Constant factors (1/6, ...) are applied after the reductions.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

# Decided when the kernels below are decorated: TRITON_INTERPRET=1 runs them on CPU tensors, in numpy.
INTERPRETED = bool(triton.knobs.runtime.interpret)
MAX_BASES = 64
# Launch configuration, chosen from the compiled code for sm_80 / sm_90 (benchmarks/benchmark_triton_kernels.py,
# docs/performance.md): a pass issues ~120-270 thread-instructions per input value against 3-12 bytes, so it is
# bound by instruction issue rather than memory, and needs enough resident warps to hide the loads' latency.
# Tiles of at most _TILE (position, channel, basis) values on 4 warps keep every variant the networks launch at
# or below 72 registers per thread on sm_90 (occupancy >= 44 %, no spills); 64 x 8 x 8 tiles took 117 (25 %).
# Few channel and position blocks, so that a network compiles few variants before its first step.
_TILE = 2048
NUM_WARPS = 4


@triton.jit
def _tanh(s):
    # From exp (triton.language has no tanh), of a non-positive argument: no overflow.
    e = tl.exp(-2.0 * tl.abs(s))
    z = (1.0 - e) / (1.0 + e)
    return tl.where(s < 0.0, -z, z)


@triton.jit
def _local_terms(u, FAMILY: tl.constexpr, ORDER: tl.constexpr):
    """The terms ``B_k / scale`` (:func:`_scaled`) of a local family at ``u = s - k - (p + 1) / 2`` (basis k's
    centre at 0)."""
    if FAMILY == "rbf":
        return tl.exp(-u * u)
    elif FAMILY == "relu":  # relu(c^2 - u^2)^2, c = (p + 1) / 2
        b = tl.maximum(0.25 * (ORDER + 1) * (ORDER + 1) - u * u, 0.0)
        return b * b
    else:
        a = tl.abs(u)
        if ORDER == 1:  # B_k = relu(1 - |u|)
            return tl.maximum(1.0 - a, 0.0)
        elif ORDER == 2:  # 2 B_k = relu(3/2 - |u|)^2 - 3 relu(1/2 - |u|)^2
            outer = tl.maximum(1.5 - a, 0.0)
            inner = tl.maximum(0.5 - a, 0.0)
            return outer * outer - 3.0 * inner * inner
        else:  # 6 B_k = relu(2 - |u|)^3 - 4 relu(1 - |u|)^3
            tl.static_assert(ORDER == 3, "B-splines of order 1, 2 or 3")
            outer = tl.maximum(2.0 - a, 0.0)
            inner = tl.maximum(1.0 - a, 0.0)
            return outer * outer * outer - 4.0 * inner * inner * inner


@triton.jit
def _local_derivative_terms(u, FAMILY: tl.constexpr, ORDER: tl.constexpr):
    """d/du of :func:`_local_terms`."""
    if FAMILY == "rbf":
        return -2.0 * u * tl.exp(-u * u)
    elif FAMILY == "relu":
        return -4.0 * u * tl.maximum(0.25 * (ORDER + 1) * (ORDER + 1) - u * u, 0.0)
    else:
        a = tl.abs(u)
        if ORDER == 1:  # +1 on [-1, 0), -1 on [0, 1): the reference's one-sided values at the knots
            return tl.where((u >= -1.0) & (u < 1.0), tl.where(u < 0.0, 1.0, -1.0), 0.0).to(u.dtype)
        elif ORDER == 2:
            magnitude = 2.0 * tl.maximum(1.5 - a, 0.0) - 6.0 * tl.maximum(0.5 - a, 0.0)
            return tl.where(u < 0.0, magnitude, -magnitude)
        else:
            outer = tl.maximum(2.0 - a, 0.0)
            inner = tl.maximum(1.0 - a, 0.0)
            magnitude = 3.0 * outer * outer - 12.0 * inner * inner
            return tl.where(u < 0.0, magnitude, -magnitude)


@triton.jit
def _term_sums(s, mask, k, FAMILY: tl.constexpr, ORDER: tl.constexpr, NB_PAD: tl.constexpr):
    """``sum_c B_k(x_c) / scale`` over the masked columns of the scaled input s [R, C] -> [R, NB_PAD] (k: the
    bases, [NB_PAD]). Chebyshev's ``T_k(tanh s)`` by the recurrence ``T_{j+1} = 2 z T_j - T_{j-1}``, each T_j
    reduced over the columns before it is placed in column j (a [R, C, NB_PAD] tile of selects would take too
    many registers)."""
    if FAMILY == "chebyshev":
        z = _tanh(s)
        t_prev = tl.where(mask, 1.0, 0.0).to(s.dtype)
        t = tl.where(mask, z, 0.0)  # masked columns stay 0 through the recurrence
        out = tl.where(k[None, :] == 0, tl.sum(t_prev, axis=1)[:, None], tl.sum(t, axis=1)[:, None])
        for j in tl.static_range(2, NB_PAD):
            t_next = 2.0 * z * t - t_prev
            t_prev = t
            t = t_next
            out = tl.where(k[None, :] == j, tl.sum(t, axis=1)[:, None], out)
        return out
    else:
        u = s[:, :, None] - (k.to(s.dtype) + 0.5 * (ORDER + 1))[None, None, :]
        return tl.sum(tl.where(mask[:, :, None], _local_terms(u, FAMILY, ORDER), 0.0), axis=1)


@triton.jit
def _derivative_dot(s, w, k, FAMILY: tl.constexpr, ORDER: tl.constexpr, NB_PAD: tl.constexpr):
    """``sum_k w[:, k] d(B_k / scale)/ds`` at the scaled input s [R, C] -> [R, C] (w: [R, NB_PAD]). Chebyshev:
    ``T'_{j+1} = 2 T_j + 2 z T'_j - T'_{j-1}`` (T'_0 = 0, T'_1 = 1), times dz/ds = 1 - z^2."""
    if FAMILY == "chebyshev":
        z = _tanh(s)
        t_prev = tl.zeros_like(z) + 1.0
        t = z
        d_prev = tl.zeros_like(z)
        d = d_prev + 1.0
        out = tl.sum(tl.where(k[None, :] == 1, w, 0.0), axis=1)[:, None] * d
        for j in tl.static_range(2, NB_PAD):
            d_next = 2.0 * t + 2.0 * z * d - d_prev
            t_next = 2.0 * z * t - t_prev
            d_prev = d
            d = d_next
            t_prev = t
            t = t_next
            out += tl.sum(tl.where(k[None, :] == j, w, 0.0), axis=1)[:, None] * d
        return out * (1.0 - z * z)
    else:
        u = s[:, :, None] - (k.to(s.dtype) + 0.5 * (ORDER + 1))[None, None, :]
        return tl.sum(_local_derivative_terms(u, FAMILY, ORDER) * w[:, None, :], axis=2)


@triton.jit
def _scaled(v, FAMILY: tl.constexpr, ORDER: tl.constexpr):
    """v (sums of :func:`_terms` or :func:`_derivative_terms`) times the family's constant factor, as a division by
    an integer (exact in any precision: a fractional constant would enter as float32)."""
    if FAMILY == "relu":  # 1 / c^4 = 16 / (p + 1)^4
        return v * 16.0 / ((ORDER + 1) * (ORDER + 1) * (ORDER + 1) * (ORDER + 1))
    elif FAMILY == "bspline":  # 1 / p!
        return v / (ORDER * (ORDER - 1 if ORDER > 1 else 1))
    else:
        return v


# Sizes are not specialised on (Triton would compile a variant per divisibility of each): a network's layers then
# share a few compiled variants, told apart only by the constexpr arguments.
@triton.jit(do_not_specialize=["C", "P", "G", "silu_stride", "out_stride"])
def _sums_kernel(x_ptr, silu_ptr, out_ptr, v_ptr, params_ptr, C, P, G, silu_stride, out_stride,
                 NB: tl.constexpr, NB_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                 ACC: tl.constexpr, WITH_SILU: tl.constexpr, WITH_V: tl.constexpr, PADDED: tl.constexpr,
                 FAMILY: tl.constexpr, ORDER: tl.constexpr):
    # The same block and grid set-up opens _grads_kernel (deliberately repeated: kept inline, each kernel reads
    # in one piece).
    pid = tl.program_id(0)
    n_blocks = (P + BLOCK_P - 1) // BLOCK_P
    n = (pid // n_blocks).to(tl.int64)
    p = (pid % n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.arange(0, NB_PAD)
    t0 = tl.load(params_ptr)
    inv_h = tl.load(params_ptr + 1)
    p_in = p < P
    acc = tl.zeros((BLOCK_P, NB_PAD), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        inside = p_in[:, None] & (c[None, :] < C)
        offset = c[None, :].to(tl.int64) * P + p[:, None]
        x = tl.load(x_ptr + n * C * P + offset, mask=inside, other=0.0).to(ACC)
        if WITH_SILU:
            silu = x / (1.0 + tl.exp(-x))
            tl.store(silu_ptr + n * silu_stride + offset, silu.to(silu_ptr.dtype.element_ty), mask=inside)
        acc += _term_sums((x - t0) * inv_h, inside, k, FAMILY, ORDER, NB_PAD)
    if PADDED:  # zero padding is exact for S - C B(0)
        acc -= C * _term_sums(tl.zeros((1, 1), ACC) - t0 * inv_h, tl.full((1, 1), 1, tl.int1), k, FAMILY, ORDER,
                              NB_PAD)
    acc = _scaled(acc, FAMILY, ORDER)
    if WITH_V:
        v = tl.load(v_ptr + (n % G) * NB + k, mask=k < NB, other=0.0).to(ACC)
        phi = tl.sum(acc * v[None, :], axis=1)
        tl.store(out_ptr + n * out_stride + p, phi.to(out_ptr.dtype.element_ty), mask=p_in)
    else:
        tl.store(out_ptr + n * out_stride + k[None, :] * P + p[:, None], acc.to(out_ptr.dtype.element_ty),
                 mask=p_in[:, None] & (k[None, :] < NB))


@triton.jit(do_not_specialize=["C", "P", "G"])
def _grads_kernel(x_ptr, grad_silu_ptr, coef_ptr, grad_phi_ptr, v_ptr, grad_x_ptr, parts_ptr, params_ptr, C, P, G,
                  NB: tl.constexpr, NB_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                  ACC: tl.constexpr, WITH_SILU: tl.constexpr, COEF: tl.constexpr, GRAD_V: tl.constexpr,
                  PADDED: tl.constexpr, FAMILY: tl.constexpr, ORDER: tl.constexpr):
    """COEF: 0 no spline-path x gradient, 1 per-basis coefficients coef [N, NB, P], 2 ``grad_phi * v[n % G]``."""
    pid = tl.program_id(0)
    n_blocks = (P + BLOCK_P - 1) // BLOCK_P
    n = (pid // n_blocks).to(tl.int64)
    p = (pid % n_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.arange(0, NB_PAD)
    t0 = tl.load(params_ptr)
    inv_h = tl.load(params_ptr + 1)
    p_in = p < P
    k_in = k < NB
    if COEF == 1:
        w = tl.load(coef_ptr + n * NB * P + k[None, :] * P + p[:, None], mask=p_in[:, None] & k_in[None, :],
                    other=0.0).to(ACC)
    if COEF == 2 or GRAD_V:
        grad_phi = tl.load(grad_phi_ptr + n * P + p, mask=p_in, other=0.0).to(ACC)
    if COEF == 2 or GRAD_V:
        v = tl.load(v_ptr + (n % G) * NB + k, mask=k_in, other=0.0).to(ACC)
    if COEF == 2:
        w = grad_phi[:, None] * v[None, :]
    derivative_scale = _scaled(inv_h, FAMILY, ORDER)  # d/dx = (1/h) d/ds, the family's factor: once per block
    acc = tl.zeros((BLOCK_P, NB_PAD), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        inside = p_in[:, None] & (c[None, :] < C)
        offset = n * C * P + c[None, :].to(tl.int64) * P + p[:, None]
        x = tl.load(x_ptr + offset, mask=inside, other=0.0).to(ACC)
        grad_x = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
        if WITH_SILU:
            sigmoid = 1.0 / (1.0 + tl.exp(-x))
            grad_silu = tl.load(grad_silu_ptr + offset, mask=inside, other=0.0).to(ACC)
            grad_x += grad_silu * sigmoid * (1.0 + x * (1.0 - sigmoid))
        s = (x - t0) * inv_h
        if COEF != 0:
            grad_x += _derivative_dot(s, w, k, FAMILY, ORDER, NB_PAD) * derivative_scale
        tl.store(grad_x_ptr + offset, grad_x.to(grad_x_ptr.dtype.element_ty), mask=inside)
        if GRAD_V:
            acc += _term_sums(s, inside, k, FAMILY, ORDER, NB_PAD)
    if GRAD_V:
        if PADDED:
            acc -= C * _term_sums(tl.zeros((1, 1), ACC) - t0 * inv_h, tl.full((1, 1), 1, tl.int1), k, FAMILY,
                                  ORDER, NB_PAD)
        part = _scaled(tl.sum(acc * grad_phi[:, None], axis=0), FAMILY, ORDER)
        tl.store(parts_ptr + pid * NB + k, part, mask=k_in)


_ACC = {torch.float64: tl.float64}


def _blocks(n_bases: int, c: int, p: int) -> tuple[int, int, int]:
    """(NB_PAD, BLOCK_P, BLOCK_C): positions first (coalesced loads along P), at most 4 channels per iteration
    (wider tiles need more registers and reduce over more threads, for no fewer instructions per value); rows of
    few channels (depthwise layers: one) get more positions instead. A row of one position (KALinear's tokens)
    gets a tile of channels, contiguous in memory."""
    nb_pad = triton.next_power_of_2(n_bases)
    if p == 1:
        return nb_pad, 1, max(1, min(triton.next_power_of_2(c), _TILE // (2 * nb_pad)))
    block_c = min(triton.next_power_of_2(c), 4)
    block_p = max(1, min(128 if block_c <= 2 else 64, _TILE // (nb_pad * block_c)))
    return nb_pad, block_p, max(1, min(block_c, _TILE // (nb_pad * block_p)))


_PARAMS: dict = {}


def _params(x: torch.Tensor, t0: float, h: float, acc: torch.dtype) -> torch.Tensor:
    """[t0, 1/h] on x's device, made once per grid, dtype and device: a copy from pageable host memory at every
    call would wait for the device's queue to drain."""
    key = (t0, h, acc, x.device)
    if key not in _PARAMS:
        _PARAMS[key] = torch.tensor([t0, 1.0 / h], dtype=acc, device=x.device)
    return _PARAMS[key]


def _on_device_of(x: torch.Tensor):
    """Triton launches on the current CUDA device: make it x's."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def sums(x: torch.Tensor, t0: float, h: float, n_bases: int, padded: bool, silu: torch.Tensor | None,
         out: torch.Tensor, v: torch.Tensor | None = None, groups: int = 1, family: str = "bspline",
         order: int = 3) -> None:
    """Writes S (or phi with v) into ``out`` (rows of ``out.stride(0)``; ``out[n, k, p]`` at ``k * P + p``) and
    silu(x) into ``silu`` (rows of ``silu.stride(0)``) when given. x: contiguous [N, C, P]. The bases: ``family``
    (a :data:`~nnunet_allukan.layers.splines.BASES` name) of order ``order``, the input scaled as (x - t0) / h."""
    n, c, p = x.shape
    acc = accumulation_dtype(x.dtype)
    nb_pad, block_p, block_c = _blocks(n_bases, c, p)
    grid = (n * triton.cdiv(p, block_p),)
    with _on_device_of(x):
        _sums_kernel[grid](x, x if silu is None else silu, out, x if v is None else v, _params(x, t0, h, acc), c,
                           p, groups, 0 if silu is None else silu.stride(0), out.stride(0), NB=n_bases,
                           NB_PAD=nb_pad, BLOCK_P=block_p, BLOCK_C=block_c, ACC=_ACC.get(acc, tl.float32),
                           WITH_SILU=silu is not None, WITH_V=v is not None, PADDED=padded, FAMILY=family,
                           ORDER=order, num_warps=NUM_WARPS)


def grads(x: torch.Tensor, t0: float, h: float, n_bases: int, grad_silu: torch.Tensor | None,
          coef: torch.Tensor | None, grad_phi: torch.Tensor | None, v: torch.Tensor | None, groups: int,
          spline_grad: bool, padded: bool, grad_x: torch.Tensor, family: str = "bspline",
          order: int = 3) -> torch.Tensor | None:
    """Writes dL/dx into ``grad_x``; returns the per-block partials of v's gradient [N, n_blocks, n_bases] when
    ``grad_phi`` and ``v`` are given. ``coef`` [N, n_bases, P] or ``grad_phi * v`` (``spline_grad``) weight B';
    the bases as in :func:`sums`."""
    n, c, p = x.shape
    acc = accumulation_dtype(x.dtype)
    nb_pad, block_p, block_c = _blocks(n_bases, c, p)
    n_blocks = triton.cdiv(p, block_p)
    grad_v = grad_phi is not None and v is not None
    parts = torch.empty((n, n_blocks, n_bases), dtype=acc, device=x.device) if grad_v else None
    mode = 1 if coef is not None else 2 if spline_grad else 0
    with _on_device_of(x):
        _grads_kernel[(n * n_blocks,)](x, x if grad_silu is None else grad_silu, x if coef is None else coef,
                                       x if grad_phi is None else grad_phi, x if v is None else v, grad_x,
                                       x if parts is None else parts, _params(x, t0, h, acc), c, p, groups,
                                       NB=n_bases, NB_PAD=nb_pad, BLOCK_P=block_p, BLOCK_C=block_c,
                                       ACC=_ACC.get(acc, tl.float32), WITH_SILU=grad_silu is not None, COEF=mode,
                                       GRAD_V=grad_v, PADDED=padded, FAMILY=family, ORDER=order,
                                       num_warps=NUM_WARPS)
    return parts
