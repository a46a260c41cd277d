"""The paper's Table 2 rows 4-13 as named network configurations, and module counting."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..layers import KAConv2d, KAConv3d, KALinear, KANConv2d, KANLinear
from .ukan import UKAN

__all__ = ["Table2Row", "TABLE2_ROWS", "build_table2_network", "network_summary"]


@dataclass(frozen=True)
class Table2Row:
    row: int
    name: str
    description: str
    options: dict = field(default_factory=dict)  # keyword arguments of UKAN
    paper_params: float = 0.0  # millions, paper Table 2


TABLE2_ROWS: dict[str, Table2Row] = {r.name: r for r in [
    Table2Row(4, "ukan_mlp", "U-KAN_MLP: KAN fc -> nn.Linear", dict(conv="conv", fc="linear"), 2.76),
    Table2Row(5, "ukan", "U-KAN: vanilla KAN fc", dict(conv="conv", fc="kan", grad_free=False), 6.35),
    Table2Row(6, "sakan", "SaKAN fc, full spline gradients", dict(conv="conv", fc="ka", grad_free=False), 2.78),
    Table2Row(7, "grad_free", "vanilla KAN fc, Grad-Free Spline", dict(conv="conv", fc="kan", grad_free=True), 6.35),
    Table2Row(8, "sakan_grad_free", "SaKAN fc + Grad-Free Spline", dict(conv="conv", fc="ka", grad_free=True), 2.78),
    Table2Row(9, "kaonv", "vanilla-KAN KAonv + KAN fc, full spline gradients",
              dict(conv="kan", fc="kan", grad_free=False), 30.34),
    Table2Row(10, "kaonv_grad_free", "vanilla-KAN KAonv + KAN fc, Grad-Free Spline",
              dict(conv="kan", fc="kan", grad_free=True), 30.34),
    Table2Row(11, "sakan_kaonv", "SaKAN KAonv + KA fc, full spline gradients",
              dict(conv="ka", fc="ka", grad_free=False), 3.17),
    Table2Row(12, "allukan_lambda", "ALL U-KAN with lambda_j", dict(conv="ka", fc="ka", grad_free=True,
                                                                   use_lambda=True), 3.21),
    Table2Row(13, "allukan", "ALL U-KAN (SaKAN KAonv + KA fc, Grad-Free Spline)",
              dict(conv="ka", fc="ka", grad_free=True), 3.17),
]}


def _lookup(row: "int | str") -> Table2Row:
    if isinstance(row, int) or (isinstance(row, str) and row.isdigit()):
        for r in TABLE2_ROWS.values():
            if r.row == int(row):
                return r
    elif row in TABLE2_ROWS:
        return TABLE2_ROWS[row]
    choices = ", ".join(f"{r.row}/{r.name}" for r in TABLE2_ROWS.values())
    raise ValueError(f"unknown Table 2 row {row!r}; choose one of {choices}")


def build_table2_network(row: "int | str", input_channels: int = 3, num_classes: int = 1, **overrides: Any) -> UKAN:
    """Build a Table 2 row by number (4-13) or name (e.g. ``"allukan"``); ``overrides`` go to :class:`UKAN`
    (e.g. ``embed_dims``, ``chunk_size``, ``implementation``)."""
    r = _lookup(row)
    options = dict(r.options)
    if r.options.get("conv") == "ka":
        options.setdefault("chunk_size", 32)
    options.update(overrides)
    return UKAN(input_channels, num_classes, **options)


def network_summary(net: nn.Module) -> dict:
    """Module counts by layer type and the parameter count, e.g. for logs and the parameter table."""
    counts = {"KAConv": 0, "KALinear": 0, "KANLinear": 0, "KANConv": 0, "Conv": 0, "Linear": 0}
    for m in net.modules():
        if isinstance(m, (KAConv2d, KAConv3d)):
            counts["KAConv"] += 1
        elif isinstance(m, KALinear):
            counts["KALinear"] += 1
        elif isinstance(m, KANLinear):
            counts["KANLinear"] += 1
        elif isinstance(m, KANConv2d):
            counts["KANConv"] += 1
        elif isinstance(m, nn.modules.conv._ConvNd):
            counts["Conv"] += 1
        elif isinstance(m, nn.Linear):
            counts["Linear"] += 1
    return {"class": type(net).__name__, "parameters": sum(p.numel() for p in net.parameters()), **counts}
