"""ALL U-KAN, U-KAN, U-KAN_MLP and the paper's ablation family; nnU-Net's planned U-Nets made fully KA.

PyTorch and dynamic-network-architectures only (no nnU-Net import).
"""
from .blocks import LayerTypes, conv_op_dim
from .ka_unet import (KAPlainConvUNet, KAResidualEncoderUNet, plain_convolutions, replace_convolutions,
                      scale_silu_gradients, scale_spline_gradients, spline_gradient_scale)
from .ukan import ALLUKAN, UKAN
from .variants import (TABLE2_ROWS, Table2Row, build_table2_network, layer_counts_text, network_summary, table2_row,
                       type_path)

__all__ = ["ALLUKAN", "UKAN", "KAPlainConvUNet", "KAResidualEncoderUNet", "LayerTypes", "TABLE2_ROWS", "Table2Row",
           "build_table2_network", "conv_op_dim", "layer_counts_text", "network_summary", "plain_convolutions", "replace_convolutions",
           "scale_silu_gradients", "scale_spline_gradients", "spline_gradient_scale", "table2_row", "type_path"]
