"""Plots of the learned activation functions of KA / KAonv layers, from a state_dict alone.

A KA layer (paper Eq. 7) computes y_i = sum_j [ phi_i(x_j) + u[i,j] silu(x_j) ] with ONE shared learnable
function per output, phi_i(x) = sum_k v[i,k] B_k(x) (SaKAN). For output i the function applied to input j is
therefore psi_ij(x) = phi_i(x) + u[i,j] silu(x). Each panel shows phi_i (solid), phi_i + mean_j(u[i,j]) silu
(dashed), and the band of psi_ij for u[i,j] between its 5th and 95th percentile over the inputs j. For a
KAonv layer the inputs j are the C_in/groups * k * k values of a receptive field, so u[i] is flattened.

In a state_dict a KA layer is recognised by ``<name>.v`` of shape [out, n_basis] next to ``<name>.u`` whose
first dimension is out (shape [out, in] for KALinear, [out, in/groups, k, k] for KAConv2d).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nnunet_allukan.evaluation.collect import EvaluationError
from nnunet_allukan.evaluation.output import save_atomically
from nnunet_allukan.paper import GRID_RANGE, GRID_SIZE, SPLINE_ORDER


@dataclass(frozen=True)
class KALayerWeights:
    """The weights of one KA / KAonv layer as numpy arrays. u: [out, ...], v: [out, n_basis], lam: [in] or None."""

    name: str
    u: np.ndarray
    v: np.ndarray
    lam: np.ndarray | None = None

    @property
    def kind(self) -> str:
        if self.u.ndim == 2:
            return "KA (fc)"
        if self.u.ndim == 4 and self.u.shape[1] == 1 and self.u.shape[2] * self.u.shape[3] > 1:
            return f"KAonv depthwise {self.u.shape[2]}x{self.u.shape[3]}"
        if self.u.ndim == 4:
            return f"KAonv {self.u.shape[2]}x{self.u.shape[3]}"
        return f"KA u{tuple(self.u.shape)}"


def bspline_bases(x: np.ndarray, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
                  grid_range: tuple[float, float] = GRID_RANGE) -> np.ndarray:
    """The layers' B-spline bases of ``x`` (:func:`grid_bases` of the paper's family), in float64 numpy."""
    return grid_bases(x, grid_size, spline_order, grid_range, "bspline")


def grid_bases(x: np.ndarray, grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
               grid_range: tuple[float, float] = GRID_RANGE, basis: str = "bspline") -> np.ndarray:
    """The layers' bases of the family ``basis`` (:func:`nnunet_allukan.layers.splines.grid_bases`) of ``x``, in
    float64 numpy: x.shape + (grid_size + spline_order,)."""
    import torch

    from nnunet_allukan.layers.splines import SplineGrid, grid_bases as layer_bases

    values = torch.as_tensor(np.asarray(x, dtype=np.float64))
    return layer_bases(values, SplineGrid.from_args(grid_size, spline_order, grid_range, basis)).numpy()


GRID_OPTIONS = ("grid_size", "spline_order", "grid_range", "basis")
# Where a plans ``architecture`` entry records the KA layers' options: the U-KAN family's convolutions and fc
# layers, the KA U-Nets' layers.
_LAYER_OPTION_ENTRIES = ("conv_kwargs", "fc_kwargs", "ka_kwargs")


def recorded_grid(architecture: Mapping, where: str = "plans") -> dict:
    """The grid (``grid_size``, ``spline_order``, ``grid_range``, ``basis``) a network was built with, from its plans
    ``architecture`` entry. An option the entry does not record is the layers' default, the paper's grid."""
    arch_kwargs = architecture.get("arch_kwargs") or {}
    found: dict = {}
    for entry in _LAYER_OPTION_ENTRIES:
        options = arch_kwargs.get(entry) or {}
        for name in GRID_OPTIONS:
            if name not in options:
                continue
            value = (tuple(float(v) for v in options[name]) if name == "grid_range" else
                     str(options[name]) if name == "basis" else int(options[name]))
            if found.setdefault(name, value) != value:
                raise EvaluationError(f"{where}: the architecture records two different {name} values "
                                      f"({found[name]} and {value}); the activation plot takes one grid.")
    return {"grid_size": found.get("grid_size", GRID_SIZE), "spline_order": found.get("spline_order", SPLINE_ORDER),
            "grid_range": found.get("grid_range", tuple(GRID_RANGE)), "basis": found.get("basis", "bspline")}


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _torch_load(path: Path):
    """torch.load with weights_only=True: tensors, plain containers and numbers only, so a checkpoint cannot
    run code. nnU-Net checkpoints also hold numpy scalars in their training log (allow-listed: data, not
    code); anything else is refused with the reason."""
    import pickle

    import torch

    numpy_scalars = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 renamed core
    try:
        with torch.serialization.safe_globals([multiarray.scalar, *numpy_scalars]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # not a refused object: a damaged file or not a checkpoint
            raise EvaluationError(f"{path}: cannot be loaded as a PyTorch checkpoint: the file is damaged or is not "
                                  f"a checkpoint ({_unpickler_detail(error)}). Pass the checkpoint_final.pth or "
                                  "checkpoint_best.pth that nnU-Net wrote.") from None
        raise EvaluationError(
            f"{path}: holds objects other than tensors, containers and numbers ({_unpickler_detail(error)}), so it "
            "is not loaded: unpickling them could run code from the file. Save the network's state_dict on its own "
            "(torch.save(network.state_dict(), 'weights.pth')) and pass that file with -i.") from None


def _unpickler_detail(error: Exception) -> str:
    """The part of torch's weights-only message that says what stopped it (e.g. 'Unsupported global:
    GLOBAL getattr', 'Unsupported operand 103'), without its advice to allow-list or to trust the file."""
    match = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+)", str(error))
    if match:
        return f"Unsupported {match.group(1)}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines or ["no detail"])[0][:200]


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Network weights of an nnU-Net checkpoint ('network_weights') or of a plain state_dict file, as numpy."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pth"))
        hint = f" It holds {', '.join(found[:5])}." if found else " It holds no *.pth file."
        raise EvaluationError(f"{path} is a folder: give the checkpoint file with -i, e.g. "
                              f"{path / (found[0] if found else 'checkpoint_final.pth')}.{hint}")
    if not path.is_file():
        raise EvaluationError(f"{path}: checkpoint not found. Train the fold first, or give the path with -i.")
    try:
        checkpoint = _torch_load(path)
    except EvaluationError:
        raise
    except Exception as error:  # torch raises many types for corrupt files
        raise EvaluationError(f"{path}: cannot be loaded as a PyTorch checkpoint ({type(error).__name__}: {error}).")
    state = checkpoint.get("network_weights", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not all(hasattr(t, "detach") for t in state.values()):
        raise EvaluationError(f"{path}: neither an nnU-Net checkpoint (dict with 'network_weights') nor a state_dict.")
    return {key: value.detach().cpu().double().numpy() for key, value in state.items()}


def find_ka_layers(state_dict: Mapping[str, np.ndarray]) -> list[KALayerWeights]:
    """All KA / KAonv layers of a state_dict, in its order."""
    layers = []
    for key, v in state_dict.items():
        if not key.endswith(".v") or np.ndim(v) != 2:
            continue
        name = key[:-2]
        u = state_dict.get(f"{name}.u")
        if u is None or np.ndim(u) < 2 or np.shape(u)[0] != np.shape(v)[0]:
            continue
        layers.append(KALayerWeights(name=name, u=np.asarray(u), v=np.asarray(v), lam=state_dict.get(f"{name}.lam")))
    return layers


def default_layer_selection(layers: Sequence[KALayerWeights]) -> list[KALayerWeights]:
    """A few representative layers: the first, the first depthwise KAonv, the first KA fc, the last."""
    picks = [layers[0]]
    picks += [next((l for l in layers if l.kind.startswith("KAonv depthwise")), None),
              next((l for l in layers if l.u.ndim == 2), None), layers[-1]]
    chosen, seen = [], set()
    for layer in picks:
        if layer is not None and layer.name not in seen:
            chosen.append(layer)
            seen.add(layer.name)
    return chosen


def select_layers(layers: Sequence[KALayerWeights], patterns: Sequence[str]) -> list[KALayerWeights]:
    """Layers whose name equals or matches (fnmatch) any pattern, in state_dict order."""
    chosen = [l for l in layers if any(l.name == p or fnmatch.fnmatchcase(l.name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(l.name == p or fnmatch.fnmatchcase(l.name, p) for l in layers)]
    if unmatched:
        available = ", ".join(l.name for l in layers[:30]) + (" ..." if len(layers) > 30 else "")
        raise EvaluationError(f"--layers {' '.join(unmatched)}: no KA layer matches. Available: {available} "
                              "(--list shows all).")
    return chosen


def activation_curves(layer: KALayerWeights, x: np.ndarray, outputs: Sequence[int], grid_size: int = GRID_SIZE,
                      spline_order: int = SPLINE_ORDER, grid_range: tuple[float, float] = GRID_RANGE,
                      basis: str = "bspline") -> dict[str, np.ndarray]:
    """Curves of the chosen outputs over x [n_x]: 'phi' [n_out, n_x] = sum_k v[i,k] B_k(x) (Eq. 7);
    'mean_u' [n_out, n_x] = phi + mean_j u[i,j] silu(x); 'low' / 'high' [n_out, n_x]: pointwise envelope of
    phi + u silu(x) for u in [5th, 95th percentile of u[i, :]] (the expression is linear in u)."""
    n_basis = grid_size + spline_order
    if layer.v.shape[1] != n_basis:
        raise EvaluationError(f"layer {layer.name}: v has {layer.v.shape[1]} bases, grid size {grid_size} + order "
                              f"{spline_order} gives {n_basis}: pass --grid-size / --spline-order.")
    bases = grid_bases(x, grid_size, spline_order, grid_range, basis)  # [n_x, n_basis]
    index = np.asarray(outputs)
    phi = layer.v[index] @ bases.T  # [n_out, n_x]
    u = layer.u.reshape(layer.u.shape[0], -1)[index]  # [n_out, n_in_per_output]
    s = silu(x)[None, :]
    q_low, q_high = np.percentile(u, 5, axis=1)[:, None], np.percentile(u, 95, axis=1)[:, None]
    edge_low, edge_high = phi + q_low * s, phi + q_high * s
    return {"phi": phi, "mean_u": phi + u.mean(axis=1)[:, None] * s,
            "low": np.minimum(edge_low, edge_high), "high": np.maximum(edge_low, edge_high)}


def plot_activations(layers: Sequence[KALayerWeights], output_png: Path, n_outputs: int = 8,
                     grid_size: int = GRID_SIZE, spline_order: int = SPLINE_ORDER,
                     grid_range: tuple[float, float] = GRID_RANGE, basis: str = "bspline",
                     x_range: tuple[float, float] | None = None, title: str = "") -> Path:
    """One PNG: a row of ``n_outputs`` panels per layer (outputs evenly spaced over the layer's outputs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n_outputs < 1:
        raise EvaluationError(f"--outputs must be >= 1, got {n_outputs}")
    low, high = x_range or grid_range
    if not low < high:
        raise EvaluationError(f"x range must be increasing, got {low} {high}")
    x = np.linspace(low, high, 201)
    figure = plt.figure(figsize=(1.8 * n_outputs + 0.4, 2.1 * len(layers) + 0.7), layout="constrained")
    figure.suptitle(f"{title}\nred: φ_i(x) = Σ_k v[i,k] B_k(x) (Eq. 7); dashed: φ_i + mean_j u[i,j]·silu(x); "
                    "band: φ_i + u[i,j]·silu(x), u between its 5th and 95th percentile", fontsize=8)
    rows = figure.subfigures(len(layers), 1, squeeze=False)[:, 0]
    for row, layer in zip(rows, layers):
        count = min(n_outputs, layer.v.shape[0])
        outputs = np.unique(np.linspace(0, layer.v.shape[0] - 1, count).round().astype(int))
        curves = activation_curves(layer, x, outputs, grid_size, spline_order, grid_range, basis)
        lam = " (λ_j present: spline term scaled per input, λ=1 shown)" if layer.lam is not None else ""
        row.suptitle(f"{layer.name}  [{layer.kind}, u {tuple(layer.u.shape)}]{lam}", fontsize=8, fontweight="bold")
        axes = row.subplots(1, n_outputs, squeeze=False)[0]
        for column, axis in enumerate(axes):
            if column >= len(outputs):
                axis.axis("off")
                continue
            axis.fill_between(x, curves["low"][column], curves["high"][column], color="tab:blue", alpha=0.18, lw=0)
            axis.plot(x, curves["mean_u"][column], color="tab:blue", lw=0.9, ls="--")
            axis.plot(x, curves["phi"][column], color="tab:red", lw=1.4)
            axis.axhline(0, color="0.7", lw=0.5)
            axis.set_title(f"out {outputs[column]}", fontsize=7)
            axis.tick_params(labelsize=6)
    try:
        return save_atomically(Path(output_png), lambda p: figure.savefig(p, dpi=130))
    finally:
        plt.close(figure)
