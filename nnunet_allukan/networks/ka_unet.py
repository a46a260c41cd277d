"""nnU-Net's own planned networks, fully Kolmogorov-Arnold (beyond the paper).

:class:`KAPlainConvUNet` and :class:`KAResidualEncoderUNet` take exactly the arguments nnU-Net's plans record for
dynamic-network-architectures' ``PlainConvUNet`` / ``ResidualEncoderUNet`` (``n_stages``, ``features_per_stage``,
``kernel_sizes``, ``strides``, ``norm_op``, ...), with ``conv_op`` a KAonv type (``KAConv2d`` / ``KAConv3d``) and
``transpconv_op`` a KA upsampling type (``KAConvTranspose2d`` / ``3d``). The topology is built by
dynamic-network-architectures itself (its blocks dispatch on ``nn.Conv*d`` types), then every ``nn.Conv*d`` --
encoder, decoder, residual shortcuts, deep-supervision heads -- is replaced by a ``conv_op`` of identical geometry
and every ``nn.ConvTranspose*d`` by a ``transpconv_op``. The result has no plain convolution left, and deep
supervision, ``decoder.deep_supervision`` and the state-dict layout of the other modules stay nnU-Net's.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from ..layers import KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d
from .blocks import accepted_options, conv_op_dim

__all__ = ["KAPlainConvUNet", "KAResidualEncoderUNet", "replace_convolutions", "KA_CONV_OPS", "KA_TRANSPCONV_OPS"]

KA_CONV_OPS = {2: KAConv2d, 3: KAConv3d}
KA_TRANSPCONV_OPS = {2: KAConvTranspose2d, 3: KAConvTranspose3d}
_PLAIN_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_PLAIN_TRANSPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _ka_conv_like(conv: nn.Conv2d, conv_op: type, options: dict) -> nn.Module:
    if isinstance(conv.padding, str):
        raise ValueError(f"cannot convert {conv}: string padding {conv.padding!r}")
    return conv_op(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   conv.groups, bias=conv.bias is not None, **options)


def _ka_transpconv_like(conv: nn.ConvTranspose2d, transpconv_op: type, options: dict) -> nn.Module:
    return transpconv_op(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.output_padding, conv.groups, bias=conv.bias is not None, dilation=conv.dilation,
                         **options)


def replace_convolutions(network: nn.Module, conv_op: type, transpconv_op: type, ka_kwargs: dict) -> int:
    """Replaces every ``nn.Conv{d}d`` by ``conv_op`` and every ``nn.ConvTranspose{d}d`` by ``transpconv_op`` in place.

    A module that is registered under several names (dynamic-network-architectures keeps each block's conv both as
    ``.conv`` and inside ``.all_modules``) is replaced by one new module everywhere. Returns the number replaced.
    """
    dim = conv_op_dim(conv_op)
    plain_conv, plain_transpconv = _PLAIN_CONV[dim], _PLAIN_TRANSPCONV[dim]
    conv_options, transpconv_options = accepted_options(conv_op, ka_kwargs), accepted_options(transpconv_op, ka_kwargs)
    replacement: dict[int, nn.Module] = {}
    for module in network.modules():
        if type(module) is plain_conv:
            replacement[id(module)] = _ka_conv_like(module, conv_op, conv_options)
        elif type(module) is plain_transpconv:
            replacement[id(module)] = _ka_transpconv_like(module, transpconv_op, transpconv_options)
    for parent in list(network.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacement:
                setattr(parent, name, replacement[id(child)])
    return len(replacement)


def initialize_ka_like_he(module: nn.Module, neg_slope: float = 1e-2) -> None:
    """nnU-Net's ``InitWeights_He`` for the KA layers: He-normal silu-path weights ``u``, zero bias.

    ``v`` keeps the KA layer's own initialisation (spline path small at any width, see docs/layers.md)."""
    if isinstance(module, (KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d)):
        nn.init.kaiming_normal_(module.u, a=neg_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _KANetwork:
    """Construction shared by the KA versions of dynamic-network-architectures' U-Nets."""

    def _build(self, base_init, conv_op: type, transpconv_op: Optional[type], ka_kwargs: Optional[dict],
               kwargs: dict) -> None:
        dim = conv_op_dim(conv_op)
        if not issubclass(conv_op, (KAConv2d, KAConv3d)):
            raise ValueError(f"conv_op must be a KAonv type (KAConv2d / KAConv3d), got {conv_op!r}")
        transpconv_op = transpconv_op or KA_TRANSPCONV_OPS[dim]
        if conv_op_dim(transpconv_op) != dim:
            raise ValueError(f"transpconv_op {transpconv_op!r} does not match the {dim}D conv_op {conv_op!r}")
        base_init(conv_op=_PLAIN_CONV[dim], **kwargs)
        self.ka_conv_op, self.ka_transpconv_op = conv_op, transpconv_op
        self.ka_kwargs = dict(ka_kwargs or {})
        replace_convolutions(self, conv_op, transpconv_op, self.ka_kwargs)


class KAPlainConvUNet(_KANetwork, PlainConvUNet):
    """nnU-Net's ``PlainConvUNet`` with every convolution a KAonv and every upsampling a KA transposed layer.

    Arguments: those of ``PlainConvUNet`` as recorded in nnU-Net's plans, with ``conv_op`` = ``KAConv2d`` /
    ``KAConv3d``; ``transpconv_op`` (default: the KAConvTranspose of that dimension); ``ka_kwargs``: options of the
    KA layers (``grad_free``, ``implementation``, grid; ``chunk_size`` only with the reference implementation), each
    given to the layer types that take it.
    Shapes and outputs (deep supervision included) are ``PlainConvUNet``'s.
    """

    def __init__(self, *, conv_op: type, transpconv_op: Optional[type] = None, ka_kwargs: Optional[dict] = None,
                 **kwargs) -> None:
        self._build(super().__init__, conv_op, transpconv_op, ka_kwargs, kwargs)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        PlainConvUNet.initialize(module)
        initialize_ka_like_he(module)


class KAResidualEncoderUNet(_KANetwork, ResidualEncoderUNet):
    """nnU-Net's ``ResidualEncoderUNet`` (the ResEnc M/L/XL presets), fully KA; see :class:`KAPlainConvUNet`."""

    def __init__(self, *, conv_op: type, transpconv_op: Optional[type] = None, ka_kwargs: Optional[dict] = None,
                 **kwargs) -> None:
        self._build(super().__init__, conv_op, transpconv_op, ka_kwargs, kwargs)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        ResidualEncoderUNet.initialize(module)
        initialize_ka_like_he(module)


def plain_convolutions(network: nn.Module) -> list[str]:
    """Names of every ``nn.Conv*d`` / ``nn.ConvTranspose*d`` left in ``network`` (empty for a fully KA network)."""
    return [name for name, m in network.named_modules(remove_duplicate=False)
            if isinstance(m, (nn.modules.conv._ConvNd,))]

