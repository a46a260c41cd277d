"""How the trainers record their networks: the configuration's standard ``architecture`` entry of nnU-Net's plans.

nnU-Net builds every network from ``plans["configurations"][c]["architecture"]``: ``network_class_name`` (a dotted
path), ``arch_kwargs`` and ``_kw_requires_import`` (the kwargs whose values are dotted paths of types). Its own
``get_network_from_plans`` builds the network from that entry in training and in ``nnUNetv2_predict`` (which reads
the model folder's plans.json). The functions here return a copy of the plans with that entry rewritten; the
trainers call them before ``nnUNetTrainer.__init__``, so the plans that nnU-Net writes and logs are these.
"""
from __future__ import annotations

import math
import pydoc
from copy import deepcopy
from typing import Any, Mapping, Optional, Sequence

import torch.nn as nn
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_allukan.networks import (KAPlainConvUNet, KAResidualEncoderUNet, TABLE2_ROWS, UKAN, table2_row,
                                     type_path)
from nnunet_allukan.networks.blocks import accepted_options, default_norm_op
from nnunet_allukan.networks.ka_unet import KA_CONV_OPS, KA_TRANSPCONV_OPS
from nnunet_allukan.paper import BATCH_SIZE, EMBED_DIMS
from nnunet_allukan.training.protocol import round_up_patch_size, ukan_strides

__all__ = ["plans_with_ukan_architecture", "plans_with_ka_architecture", "ukan_architecture_entry",
           "KA_VERSION_OF_PLANNED_NETWORK"]

# nnU-Net's planned network class (last part of the recorded dotted path) -> its fully KA version.
KA_VERSION_OF_PLANNED_NETWORK: dict[str, type] = {"PlainConvUNet": KAPlainConvUNet,
                                                  "ResidualEncoderUNet": KAResidualEncoderUNet}


def ukan_architecture_entry(row: "int | str", dim: int, strides: Sequence[Sequence[int]],
                            embed_dims: Sequence[int] = EMBED_DIMS, **layer_options: Any) -> dict:
    """The ``architecture`` entry of a U-KAN-family network (a Table 2 row) of dimension ``dim``.

    ``layer_options`` go to the row's layer types that take them; an option that no layer type of any row takes
    (a misspelt name) raises ValueError rather than vanish.
    """
    unknown = sorted(set(layer_options) - set().union(*(accepted_options(op, layer_options)
                                                        for r in TABLE2_ROWS.values()
                                                        for op in (r.fc_op, *r.conv_ops.values()))))
    if unknown:
        raise ValueError(f"layer options {', '.join(unknown)} are taken by no layer of the U-KAN family (e.g. "
                         "grid_size, spline_order, grid_range, grad_free, implementation, chunk_size)")
    kwargs: dict[str, Any] = {"embed_dims": [int(e) for e in embed_dims], "strides": [list(s) for s in strides],
                              **table2_row(row).network_kwargs(dim, **layer_options),
                              "norm_op": default_norm_op(dim), "norm_op_kwargs": {},
                              "nonlin": nn.ReLU, "nonlin_kwargs": {"inplace": True}}
    importable = ["conv_op", "fc_op", "norm_op", "nonlin"]
    kwargs.update({k: type_path(kwargs[k]) for k in importable})  # JSON: types as dotted paths
    for key in ("conv_kwargs", "fc_kwargs"):
        kwargs[key] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs[key].items()}
    return {"network_class_name": type_path(UKAN), "arch_kwargs": kwargs, "_kw_requires_import": importable}


def plans_with_ukan_architecture(plans: dict, configuration: str, row: "int | str",
                                 embed_dims: Sequence[int] = EMBED_DIMS,
                                 **layer_options: Any) -> tuple[dict, list[str]]:
    """Copy of ``plans`` for the paper's protocol: U-KAN-family network, batch size 8, a patch the network accepts.

    2D: five 2x down-samplings, patch sides rounded up to multiples of 32 (the paper). 3D: the first five
    down-sampling steps of the configuration's plan (:func:`ukan_strides`), the patch rounded up to their products
    (normally already so: nnU-Net's planner makes patches divisible by all its strides).
    Returns the new plans and log messages about what changed.
    """
    configuration_manager = PlansManager(deepcopy(plans)).get_configuration(configuration)
    patch_size = [int(s) for s in configuration_manager.patch_size]
    dim = len(patch_size)
    if dim not in (2, 3):
        raise ValueError(f"configuration {configuration!r} has a {dim}D patch {patch_size}; U-KAN is 2D or 3D")
    planned = None if dim == 2 else configuration_manager.network_arch_init_kwargs.get("strides")
    if dim == 3 and planned is None:
        raise ValueError(f"configuration {configuration!r} records no 'strides' in its architecture entry; re-run "
                         "nnUNetv2_plan_and_preprocess (or nnUNetv2_plan_experiment) with nnU-Net 2.8")
    strides = ukan_strides(planned, dim)
    divisors = [int(math.prod(s[d] for s in strides)) for d in range(dim)]
    messages = []
    rounded = round_up_patch_size(patch_size, divisors)
    if rounded != patch_size:
        messages.append(f"Patch size {patch_size} rounded up to {rounded} (multiples of {divisors}: the products of "
                        "the U-KAN down-sampling strides).")
    if dim == 3:
        messages.append(f"U-KAN down-sampling strides per stage {strides} (the first five down-sampling steps of "
                        f"the {configuration} plan; factor 1 = the axis keeps its resolution at that stage).")
    if configuration_manager.batch_size != BATCH_SIZE:
        messages.append(f"Batch size {configuration_manager.batch_size} from the plans replaced by the paper's "
                        f"{BATCH_SIZE}.")
    new_plans = deepcopy(plans)
    entry = new_plans["configurations"][configuration]
    entry["patch_size"] = rounded
    entry["batch_size"] = BATCH_SIZE
    entry["architecture"] = ukan_architecture_entry(row, dim, strides, embed_dims, **layer_options)
    return new_plans, messages


def plans_with_ka_architecture(plans: dict, configuration: str, ka_kwargs: Optional[Mapping] = None) -> dict:
    """Copy of ``plans`` whose ``configuration`` builds the KA version of the network nnU-Net planned for it.

    ``PlainConvUNet`` -> :class:`KAPlainConvUNet`, ``ResidualEncoderUNet`` (ResEnc presets) ->
    :class:`KAResidualEncoderUNet`; ``conv_op`` becomes ``KAConv2d/3d``, ``transpconv_op`` ``KAConvTranspose2d/3d``,
    ``ka_kwargs`` the KA layers' options. All other arguments stay as planned.
    """
    configuration_manager = PlansManager(deepcopy(plans)).get_configuration(configuration)
    architecture = deepcopy(configuration_manager.configuration["architecture"])
    planned_class = architecture["network_class_name"]
    ka_class = KA_VERSION_OF_PLANNED_NETWORK.get(planned_class.rsplit(".", 1)[-1])
    if ka_class is None:
        if planned_class.rsplit(".", 1)[-1] in {c.__name__ for c in KA_VERSION_OF_PLANNED_NETWORK.values()}:
            return deepcopy(plans)  # already the KA version (e.g. plans read back from a model folder)
        raise ValueError(f"configuration {configuration!r} plans the network {planned_class}; nnUNetTrainerKAUNet "
                         f"has KA versions of {', '.join(sorted(KA_VERSION_OF_PLANNED_NETWORK))} (nnU-Net's default "
                         "plans and the ResEnc presets nnUNetResEncUNet{M,L,XL}Plans)")
    kwargs = architecture["arch_kwargs"]
    conv_op = pydoc.locate(kwargs["conv_op"]) if isinstance(kwargs["conv_op"], str) else kwargs["conv_op"]
    dim = {nn.Conv2d: 2, nn.Conv3d: 3}.get(conv_op)
    if dim is None:
        raise ValueError(f"configuration {configuration!r}: conv_op {kwargs['conv_op']!r} is not nn.Conv2d/nn.Conv3d")
    kwargs["conv_op"] = type_path(KA_CONV_OPS[dim])
    kwargs["transpconv_op"] = type_path(KA_TRANSPCONV_OPS[dim])
    kwargs["ka_kwargs"] = dict(ka_kwargs or {})
    requires_import = list(architecture["_kw_requires_import"])
    if "transpconv_op" not in requires_import:
        requires_import.append("transpconv_op")
    architecture.update(network_class_name=type_path(ka_class), arch_kwargs=kwargs,
                        _kw_requires_import=requires_import)
    new_plans = deepcopy(plans)
    new_plans["configurations"][configuration]["architecture"] = architecture
    return new_plans
