"""The paper's Table 2 rows 4-13 as named network configurations (layer types + options), and module counting."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch.nn as nn

from ..layers import (KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d, KALinear, KANConv2d, KANLinear)
from ..paper import EMBED_DIMS, TABLE2_PARAMS_MILLIONS
from .blocks import accepted_options
from .ukan import UKAN

__all__ = ["Table2Row", "TABLE2_ROWS", "table2_row", "build_table2_network", "network_summary", "layer_counts_text",
           "type_path"]


def type_path(cls: type) -> str:
    """Dotted import path of a class, as nnU-Net's plans record ``conv_op`` etc. (``pydoc.locate`` reads it back)."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class Table2Row:
    """One row of the paper's Table 2: which layer type implements the convolutions and the FC layers.

    ``conv_ops`` maps the spatial dimension to the convolution type (the vanilla-KAN KAonv rows exist in 2D only).
    """

    row: int
    name: str
    description: str
    conv_ops: dict
    fc_op: type
    conv_kwargs: dict = field(default_factory=dict)
    fc_kwargs: dict = field(default_factory=dict)

    @property
    def paper_params(self) -> float:
        """Millions of parameters in the paper's Table 2."""
        return TABLE2_PARAMS_MILLIONS[self.row]

    def conv_op(self, dim: int) -> type:
        if dim not in self.conv_ops:
            raise ValueError(f"Table 2 row {self.row} ({self.name}) has no {dim}D version: its convolution type "
                             f"exists only in {', '.join(f'{d}D' for d in self.conv_ops)}")
        return self.conv_ops[dim]

    def network_kwargs(self, dim: int = 2, **layer_options: Any) -> dict:
        """Keyword arguments of :class:`UKAN` for this row; ``layer_options`` (e.g. ``chunk_size``,
        ``implementation``, ``grad_free``) override the row's options in every layer type that takes them."""
        conv_op = self.conv_op(dim)
        return dict(conv_op=conv_op, conv_kwargs={**self.conv_kwargs, **accepted_options(conv_op, layer_options)},
                    fc_op=self.fc_op, fc_kwargs={**self.fc_kwargs, **accepted_options(self.fc_op, layer_options)})


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_KACONV = {2: KAConv2d, 3: KAConv3d}
_KANCONV = {2: KANConv2d}
_FULL = {"grad_free": False}
_FREE = {"grad_free": True}
_KA_FULL = {"grad_free": False}
_KA_FREE = {"grad_free": True}

TABLE2_ROWS: dict[str, Table2Row] = {r.name: r for r in [
    Table2Row(4, "ukan_mlp", "U-KAN_MLP: KAN fc -> nn.Linear", _CONV, nn.Linear),
    Table2Row(5, "ukan", "U-KAN: vanilla KAN fc", _CONV, KANLinear, fc_kwargs=_FULL),
    Table2Row(6, "sakan", "SaKAN fc, full spline gradients", _CONV, KALinear, fc_kwargs=_FULL),
    Table2Row(7, "grad_free", "vanilla KAN fc, Grad-Free Spline", _CONV, KANLinear, fc_kwargs=_FREE),
    Table2Row(8, "sakan_grad_free", "SaKAN fc + Grad-Free Spline", _CONV, KALinear, fc_kwargs=_FREE),
    Table2Row(9, "kaonv", "vanilla-KAN KAonv + KAN fc, full spline gradients", _KANCONV, KANLinear,
              conv_kwargs=_FULL, fc_kwargs=_FULL),
    Table2Row(10, "kaonv_grad_free", "vanilla-KAN KAonv + KAN fc, Grad-Free Spline", _KANCONV, KANLinear,
              conv_kwargs=_FREE, fc_kwargs=_FREE),
    Table2Row(11, "sakan_kaonv", "SaKAN KAonv + KA fc, full spline gradients", _KACONV, KALinear,
              conv_kwargs=_KA_FULL, fc_kwargs=_KA_FULL),
    Table2Row(12, "allukan_lambda", "ALL U-KAN with lambda_j", _KACONV, KALinear,
              conv_kwargs={**_KA_FREE, "use_lambda": True}, fc_kwargs={**_KA_FREE, "use_lambda": True}),
    Table2Row(13, "allukan", "ALL U-KAN (SaKAN KAonv + KA fc, Grad-Free Spline)", _KACONV, KALinear,
              conv_kwargs=_KA_FREE, fc_kwargs=_KA_FREE),
]}


def table2_row(row: "int | str") -> Table2Row:
    """A Table 2 row by number (4-13) or name (e.g. ``"allukan"``)."""
    if isinstance(row, int) or (isinstance(row, str) and row.isdigit()):
        for r in TABLE2_ROWS.values():
            if r.row == int(row):
                return r
    elif row in TABLE2_ROWS:
        return TABLE2_ROWS[row]
    choices = ", ".join(f"{r.row}/{r.name}" for r in TABLE2_ROWS.values())
    raise ValueError(f"unknown Table 2 row {row!r}; choose one of {choices}")


def build_table2_network(row: "int | str", input_channels: int = 3, num_classes: int = 1, *, dim: int = 2,
                         embed_dims: Sequence[int] = EMBED_DIMS, strides: Optional[Sequence] = None,
                         **layer_options: Any) -> UKAN:
    """Build a Table 2 row by number (4-13) or name; ``layer_options`` (``chunk_size``, ``implementation``,
    ``grad_free``, ...) override the row's options in the layers that take them."""
    return UKAN(input_channels, num_classes, embed_dims, strides=strides,
                **table2_row(row).network_kwargs(dim, **layer_options))


def network_summary(net: nn.Module) -> dict:
    """Module counts by layer type and the parameter count, e.g. for logs and the parameter table."""
    counts = {"KAConv": 0, "KAConvTranspose": 0, "KALinear": 0, "KANLinear": 0, "KANConv": 0, "Conv": 0,
              "ConvTranspose": 0, "Linear": 0}
    kinds = [((KAConv2d, KAConv3d), "KAConv"), ((KAConvTranspose2d, KAConvTranspose3d), "KAConvTranspose"),
             (KALinear, "KALinear"), (KANLinear, "KANLinear"), (KANConv2d, "KANConv"),
             (nn.modules.conv._ConvTransposeNd, "ConvTranspose"), (nn.modules.conv._ConvNd, "Conv"),
             (nn.Linear, "Linear")]
    for m in net.modules():
        for types, key in kinds:
            if isinstance(m, types):
                counts[key] += 1
                break
    return {"class": type(net).__name__, "parameters": sum(p.numel() for p in net.parameters()), **counts}


def layer_counts_text(summary: dict) -> str:
    """The non-zero layer counts of a :func:`network_summary`, e.g. ``"KAConv 31, KALinear 12"`` (training logs)."""
    return ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("class", "parameters") and v)
