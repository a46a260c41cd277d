"""The KA layer as G independent layers on grouped inputs (paper Eq. 7, Eq. 6's lambda): the literal form that
the reference KAonv, KALinear with lambda and the KA upsampling layers share."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .kernels import basis_sum, differentiable_basis_sum
from .splines import SplineGrid, grid_bases

__all__ = ["ka_grouped"]


def ka_grouped(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, lam: Optional[torch.Tensor], grid: SplineGrid,
               grad_free: bool, chunk_size: Optional[int], literal: bool = False) -> torch.Tensor:
    """G independent KA layers (Eq. 7) applied to grouped inputs.

    Args:
        x: ``[N, G, n_in]``;  u: ``[G, n_out, n_in]``;  v: ``[G, n_out, n_bases]``;  lam: ``[G, n_in]`` or None.
        chunk_size: inputs per chunk when building the (grad-free) bases; bounds their transient memory.
        literal: build every basis B_k(x_j) as a tensor ``[N, G, n_in, n_bases]`` and sum it, as Eq. 7 is
            written (the reference KAonv); otherwise the fused per-basis reduction kernel is used.
    Returns:
        ``[N, G, n_out]``
    """
    n, g, n_in = x.shape
    y = torch.einsum("ngj,goj->ngo", F.silu(x), u)
    step = n_in if (chunk_size is None or not grad_free) else chunk_size
    s = None
    for j0 in range(0, n_in, step):
        xc = x[:, :, j0: j0 + step]
        if literal:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not grad_free):
                dense = grid_bases(xc, grid)  # [N, G, cj, nb]
            part = dense.sum(2) if lam is None else torch.einsum("ngjk,gj->ngk", dense,
                                                                 lam[:, j0: j0 + step].to(dense.dtype))
        elif lam is None:
            part = basis_sum(xc, grid) if grad_free else differentiable_basis_sum(xc, grid)  # [N, G, nb]
        else:
            cj = xc.shape[2]
            flat = xc.reshape(n, g * cj, 1)
            dense = basis_sum(flat, grid) if grad_free else differentiable_basis_sum(flat, grid)  # [N, G*cj, nb]
            part = torch.einsum("ngjk,gj->ngk", dense.view(n, g, cj, -1), lam[:, j0: j0 + step].to(dense.dtype))
        s = part if s is None else s + part
    return y + torch.einsum("ngk,gok->ngo", s.to(y.dtype), v.to(y.dtype))
