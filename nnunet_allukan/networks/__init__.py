"""ALL U-KAN, U-KAN, U-KAN_MLP and the paper's ablation family (PyTorch only, no nnU-Net import)."""
from .blocks import LayerFactory
from .ukan import ALLUKAN, UKAN
from .variants import TABLE2_ROWS, Table2Row, build_table2_network, network_summary

__all__ = ["ALLUKAN", "UKAN", "LayerFactory", "TABLE2_ROWS", "Table2Row", "build_table2_network", "network_summary"]
