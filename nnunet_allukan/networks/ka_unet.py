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

from functools import partial
from typing import Optional

import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch.utils.hooks import RemovableHandle

from ..layers import KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d
from .blocks import accepted_options, conv_op_dim

__all__ = ["KAPlainConvUNet", "KAResidualEncoderUNet", "replace_convolutions", "KA_CONV_OPS", "KA_TRANSPCONV_OPS",
           "KA_LAYER_TYPES", "spline_fan_in", "spline_gradient_scale", "scale_spline_gradients",
           "scale_silu_gradients"]

KA_CONV_OPS = {2: KAConv2d, 3: KAConv3d}
KA_TRANSPCONV_OPS = {2: KAConvTranspose2d, 3: KAConvTranspose3d}
KA_LAYER_TYPES = (KAConv2d, KAConv3d, KAConvTranspose2d, KAConvTranspose3d)
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
    if isinstance(module, KA_LAYER_TYPES):
        nn.init.kaiming_normal_(module.u, a=neg_slope)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def spline_fan_in(layer: nn.Module) -> int:
    """How many inputs one output of a KA layer sums its B-spline bases over (the spline path's fan-in)."""
    if isinstance(layer, (KAConvTranspose2d, KAConvTranspose3d)):
        return layer.in_channels  # stride == kernel: each output voxel sees the C_in values of one input voxel
    if isinstance(layer, (KAConv2d, KAConv3d)):
        return layer.u[0].numel()  # C_in / groups * prod(kernel), the receptive field
    raise TypeError(f"not a KA layer: {type(layer).__name__}")


def spline_gradient_scale(layer: nn.Module) -> float:
    """``n_bases / fan_in``: the factor that gives the spline coefficients ``v`` of a KA layer SGD steps that change
    its output as much as steps of the silu-path weights ``u`` do.

    The spline path of one output is ``sum_k v_k P_k`` with ``P_k = sum_j B_k(x_j)`` over the fan_in inputs of the
    receptive field. Inside the grid the bases of one input sum to 1, so ``|P|^2 ~ fan_in^2 / n_bases`` while the
    silu path's input has ``|silu(x)|^2 ~ fan_in``: an SGD step (``-lr * grad``) moves the spline path's output about
    ``fan_in / n_bases`` times as far as the silu path's (36x for a 3x3 convolution of 32 channels, 576x at 512), and
    ``v`` takes most of the network's gradient."""
    fan_in = spline_fan_in(layer)
    return layer.grid.n_bases / fan_in


def _scale_gradients(network: nn.Module, parameter: str, scale_of) -> list[RemovableHandle]:
    """A tensor hook multiplying the gradient of ``parameter`` of every KA layer in ``network`` by
    ``scale_of(layer)``, once per tensor (before the gradient is accumulated, clipped or all-reduced)."""
    handles, seen = [], set()
    for module in network.modules():
        if isinstance(module, KA_LAYER_TYPES) and id(tensor := getattr(module, parameter)) not in seen:
            seen.add(id(tensor))
            # a partial, not a lambda: a network carrying the hooks can still be pickled (torch.save(network))
            handles.append(tensor.register_hook(partial(torch.mul, other=float(scale_of(module)))))
    return handles


def scale_spline_gradients(network: nn.Module, factor: float = 1.0) -> list[RemovableHandle]:
    """Multiplies the gradient of every KA layer's spline coefficients ``v`` in ``network`` by ``factor`` times
    :func:`spline_gradient_scale` (a tensor hook, before the gradient is accumulated, clipped or all-reduced).

    With SGD this equals a learning rate ``lr * factor * n_bases / fan_in`` for ``v`` whatever the schedule sets, and
    the gradient-norm clip sees the scaled gradient. Nothing else changes: forward, parameters and state dict are the
    network's. Returns the hook handles (``handle.remove()`` undoes it)."""
    return _scale_gradients(network, "v", lambda module: factor * spline_gradient_scale(module))


def scale_silu_gradients(network: nn.Module, scale: float) -> list[RemovableHandle]:
    """Multiplies the gradient of every KA layer's silu-path weights ``u`` in ``network`` by ``scale`` (a tensor
    hook, like :func:`scale_spline_gradients`): with SGD a learning rate ``lr * scale`` for ``u``.

    A KA layer passes its input only the silu path's gradient, ``u^T g * silu'(x)``, so u learns more slowly than a
    plain convolution's weights, least at the bottleneck (docs/learning.md). Returns the hook handles."""
    return _scale_gradients(network, "u", lambda module: scale)


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

