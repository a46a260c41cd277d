"""``nnUNetTrainerKAUNet``: the network nnU-Net planned for the configuration, fully Kolmogorov-Arnold.

``nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerKAUNet`` for ``2d``, ``3d_fullres``, ``3d_lowres``
and ``3d_cascade_fullres``, with nnU-Net's default plans (``PlainConvUNet``) or a ResEnc preset
(``-p nnUNetResEncUNetMPlans`` etc.). Every convolution of the planned network is a KAonv layer (``KAConv2d`` /
``KAConv3d``, grad-free closed form) and every transposed-convolution upsampling a ``KAConvTranspose2d/3d``; the
configuration's ``architecture`` entry records exactly that, so ``nnUNetv2_predict`` rebuilds it through nnU-Net's
own ``get_network_from_plans``. Everything else -- deep supervision, loss, SGD with nesterov, poly schedule,
1000 epochs of 250 iterations, 5-fold cross-validation, augmentation, inference -- is ``nnUNetTrainer``'s, with
two additions that SGD needs for KA layers (why and what they change: docs/learning.md):
``spline_gradient_scaling`` (on by default) scales the gradient of every KA layer's spline coefficients ``v`` by
``spline_gradient_factor * n_bases / fan_in`` (factor 1/8 by default;
:func:`nnunet_allukan.networks.scale_spline_gradients`), and ``silu_gradient_scale`` (default 4) that of its
silu-path weights ``u`` (:func:`nnunet_allukan.networks.scale_silu_gradients`). This is "nnU-Net, fully
Kolmogorov-Arnold", not the paper's protocol (for that: ``nnUNetTrainerAllUKAN``).
"""
from __future__ import annotations

from typing import Optional

import torch

from nnunet_allukan.networks import (layer_counts_text, network_summary, scale_silu_gradients,
                                     scale_spline_gradients)
from nnunet_allukan.training.architectures import plans_with_ka_architecture
from nnunet_allukan.training.base import KATrainerBase, unwrapped_network

__all__ = ["nnUNetTrainerKAUNet", "nnUNetTrainerKAUNet_smoke"]


class nnUNetTrainerKAUNet(KATrainerBase):
    """nnU-Net's planned U-Net with KA layers everywhere, trained exactly as ``nnUNetTrainer`` trains."""

    # Options of every KA layer (the fast KAonv builds no per-input bases: no chunk_size to record); ``basis``: the
    # family of the bases (layers/splines.py), recorded so that prediction rebuilds the same layers.
    ka_kwargs: dict = {"grad_free": True, "implementation": "fast", "basis": "bspline"}
    epochs: Optional[int] = None  # None: nnUNetTrainer's default
    # Without it nnU-Net's SGD moves the spline path fan_in / n_bases times faster than the silu path: v takes almost
    # all of the gradient, grows unchecked, and training on BUSI collapses to background (docs/learning.md).
    spline_gradient_scaling: bool = True
    # v's gradient is multiplied by spline_gradient_factor x n_bases / fan_in. At 1 a step of v moves the output as
    # far as a step of the unscaled silu path; an eighth of that (1 / fan_in with the paper's 8 bases) learned best on
    # CVC-ClinicDB and as well as 1 on BUSI, ISBI 2012 EM and 3D (docs/learning.md).
    spline_gradient_factor: float = 0.125
    # A KA layer hands the layer below only its silu path's gradient, about 0.7 of what a convolution would: u learns
    # 0.2-1.3x as fast as nnU-Net's convolution weights. 4 was the best of 1, 2, 4, 8 on CVC-ClinicDB (docs/learning.md).
    silu_gradient_scale: float = 4.0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans = plans_with_ka_architecture(plans, configuration, self.ka_kwargs)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.epochs is not None:
            self.num_epochs = self.epochs

    def initialize(self):
        super().initialize()
        network = unwrapped_network(self.network)
        summary = network_summary(network)
        layer_counts = layer_counts_text(summary)
        architecture = self.configuration_manager.configuration["architecture"]
        self.print_to_log_file(
            f"\nNetwork: {architecture['network_class_name']} (nnU-Net's planned network, fully KA), "
            f"{summary['parameters']:,} parameters; layers: {layer_counts}; KA options {self.ka_kwargs}\n",
            add_timestamp=False)
        if self.spline_gradient_scaling:
            hooks = scale_spline_gradients(network, self.spline_gradient_factor)
            self.print_to_log_file(f"Spline gradient scaling: the gradients of the spline coefficients v of "
                                   f"{len(hooks)} KA layers are scaled by {self.spline_gradient_factor:g} x n_bases / "
                                   f"fan_in (spline_gradient_scaling, spline_gradient_factor)")
        if self.silu_gradient_scale != 1:
            hooks = scale_silu_gradients(network, self.silu_gradient_scale)
            self.print_to_log_file(f"Silu gradient scaling: the gradients of the silu-path weights u of {len(hooks)} "
                                   f"KA layers are scaled by {self.silu_gradient_scale:g} (silu_gradient_scale)")


class nnUNetTrainerKAUNet_smoke(nnUNetTrainerKAUNet):
    """One epoch of 10 training / 2 validation iterations, then nnU-Net's full validation: checks in minutes, even
    on a CPU, that the whole pipeline (plans, KA network, training, checkpoint, sliding-window prediction) runs on
    a dataset. Its model is not meant for use."""

    epochs = 1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = 10
        self.num_val_iterations_per_epoch = 2
