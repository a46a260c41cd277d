"""Paper Fig. 3b / Sec. 3.2: the spline path's input gradient G_S against the silu path's G_L, per layer.

For a KA layer (Eq. 7) the gradient of the loss with respect to an input x_j has two parts (Eq. 11)::

    dL/dx_j = sum_i g_i sum_k v[i, k] B'_k(x_j)   +   sum_i g_i u[i, j] silu'(x_j)
              `------------- G_S -------------'      `---------- G_L ----------'

(g = dL/dy). Grad-Free Spline drops G_S; Theorem 1 argues |G_S| << |G_L| (Eq. 12). This module measures both, layer
by layer, in a real network: one forward and backward pass records every spline layer's input x and output
gradient g; then each layer's two input gradients are computed separately and exactly -- a copy of the layer with
full spline gradients and u = 0 gives G_S, a copy with v = 0 gives G_L. KAonv layers count each receptive-field
input, so the padded-zero and window sums are included. Vanilla KAN layers (KANLinear / KANConv2d) are measured
the same way with their spline and base weights.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from nnunet_allukan.layers import (KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d, KALinear, KANConv2d,
                                   KANLinear)

__all__ = ["PathGradients", "fig3b_network", "path_input_gradient", "plot_gradients", "spline_and_silu_gradients"]

# layer type -> (spline-path weight, silu/base-path weight)
PATH_WEIGHTS = {KALinear: ("v", "u"), KAConv2d: ("v", "u"), KAConv3d: ("v", "u"), KAConvTranspose2d: ("v", "u"),
                KAConvTranspose3d: ("v", "u"), KANLinear: ("spline_weight", "base_weight"),
                KANConv2d: ("spline_weight", "base_weight")}


@dataclass
class PathGradients:
    layer: str
    kind: str
    mean_abs_spline: float  # mean |G_S| over all inputs of the layer's KA layers
    mean_abs_silu: float  # mean |G_L|
    ratio: float  # mean |G_S| / mean |G_L|


def path_input_gradient(layer: nn.Module, x: torch.Tensor, grad_output: torch.Tensor, keep: str) -> torch.Tensor:
    """dL/dx through one path only: a copy of ``layer`` with full spline gradients and the other path's weight 0."""
    spline, silu = PATH_WEIGHTS[type(layer)]
    clone = copy.deepcopy(layer)
    clone.grad_free = False
    with torch.no_grad():
        getattr(clone, silu if keep == "spline" else spline).zero_()
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad((clone(x) * grad_output).sum(), x)
    return grad


def spline_and_silu_gradients(network: nn.Module, inputs: torch.Tensor,
                              output_weight: torch.Tensor | None = None) -> list[PathGradients]:
    """G_S and G_L of every spline layer of ``network`` for one forward/backward pass of ``inputs``.

    The loss is ``sum(output * output_weight)`` (a fixed random projection by default): Eq. 12 compares the two
    paths for the same upstream gradient, so any loss serves; the ratio does not depend on its scale.
    """
    layers = [(name, m) for name, m in network.named_modules() if type(m) in PATH_WEIGHTS]
    if not layers:
        raise ValueError("the network has no KA / KAonv / KAN layer to measure")
    records: dict[str, dict] = {name: {} for name, _ in layers}
    handles = []

    def recorder(name: str):
        def hook(module, args, output):
            records[name]["x"] = args[0].detach()
            output.register_hook(lambda g: records[name].__setitem__("g", g.detach()))
        return hook

    for name, module in layers:
        handles.append(module.register_forward_hook(recorder(name)))
    try:
        network.eval()  # BatchNorm statistics of a trained model; a fresh network's are the initial ones
        output = network(inputs)
        output = output[0] if isinstance(output, (list, tuple)) else output
        if output_weight is None:
            output_weight = torch.randn(output.shape, generator=torch.Generator().manual_seed(0)).to(output)
        (output * output_weight).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    results = []
    for name, module in layers:
        x, g = records[name].get("x"), records[name].get("g")
        if x is None or g is None:
            continue  # a layer the forward pass did not use
        spline = path_input_gradient(module, x, g, "spline").abs().mean().item()
        silu = path_input_gradient(module, x, g, "silu").abs().mean().item()
        results.append(PathGradients(name, type(module).__name__, spline, silu, spline / silu if silu else float("inf")))
    return results


def fig3b_network(widths: Sequence[int] = (4, 128, 128, 1), grad_free: bool = True) -> nn.Sequential:
    """The paper's small KAN of Fig. 3b: KA layers of widths (4, 128, 128, 1)."""
    return nn.Sequential(*(KALinear(a, b, grad_free=grad_free) for a, b in zip(widths[:-1], widths[1:])))


def results_as_dicts(results: Sequence[PathGradients]) -> list[dict]:
    return [asdict(r) for r in results]


def plot_gradients(results: Sequence[PathGradients], output_png: Path, title: str) -> None:
    """Bar chart of mean |G_S| and mean |G_L| per layer (log scale), as Fig. 3b, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunet_allukan.evaluation.output import save_atomically

    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(results) + 2), 4.2))
    positions = range(len(results))
    ax.bar([p - 0.2 for p in positions], [r.mean_abs_silu for r in results], 0.4, label="|G_L| (silu path)")
    ax.bar([p + 0.2 for p in positions], [r.mean_abs_spline for r in results], 0.4, label="|G_S| (spline path)")
    ax.set_yscale("log")
    ax.set_xticks(list(positions))
    ax.set_xticklabels([r.layer for r in results], rotation=90, fontsize=6)
    ax.set_ylabel("mean |dL/dx| per input")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_atomically(output_png, lambda path: fig.savefig(path, dpi=130))
    plt.close(fig)
