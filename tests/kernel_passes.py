"""Every basis pass of the kernel seam called on one input, for the tests that compare a backend with the
reference (test_layers_kernels.py, test_layers_triton.py)."""
from __future__ import annotations

from typing import Callable

import torch

from nnunet_allukan.layers import kernels
from nnunet_allukan.layers.splines import SplineGrid


def pass_calls(x: torch.Tensor, grid: SplineGrid, gen: torch.Generator) -> dict[str, Callable]:
    """Name -> a call of one pass on x [B, G, C, P] (random v and gradients drawn from ``gen``), run under
    whatever kernel policy is active when it is called."""
    shape, dtype = x.shape, x.dtype
    g = shape[1]
    v = torch.randn(g, grid.n_bases, dtype=dtype, generator=gen)
    g_silu = torch.randn(*shape, dtype=dtype, generator=gen)
    g_phi = torch.randn(shape[0], g, *shape[3:], dtype=dtype, generator=gen)
    g_sums = torch.randn(shape[0], g, grid.n_bases, *shape[3:], dtype=dtype, generator=gen)
    return {
        "basis_sum": lambda: kernels.basis_sum(x, grid),
        "silu_and_basis_sums padded": lambda: kernels.silu_and_basis_sums(x, grid, True),
        "silu_and_basis_sums": lambda: kernels.silu_and_basis_sums(x, grid, False),
        "activation_sums padded": lambda: kernels.silu_and_activation_sums(x, v, grid, True),
        "activation_sums": lambda: kernels.silu_and_activation_sums(x, v, grid, False),
        "activation_sums_backward": lambda: kernels.silu_and_activation_sums_backward(
            x, g_silu, g_phi, v, grid, True, False),
        "activation_sums_backward full": lambda: kernels.silu_and_activation_sums_backward(
            x, g_silu, g_phi, v, grid, False, True),
        "basis_derivative_dot": lambda: kernels.basis_derivative_dot(x, g_sums, grid),
    }
