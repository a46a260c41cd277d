"""The base of every trainer of this package: nnU-Net's ``nnUNetTrainer`` with the two fault mixins and four small
additions that every trainer shares.

- ``__init__``: ``-device cuda`` (nnU-Net's default) where torch sees no CUDA device ends at once with one line,
  "no CUDA device: add -device cpu", before nnU-Net creates the results folder.

- :class:`~nnunet_allukan.training.nan_guard.NonFiniteLossMixin` (a NaN loss stops training with a clear message)
  and :class:`~nnunet_allukan.training.compile_fallback.CompileFallbackMixin` (a failed torch.compile falls back to
  eager).
- ``build_network_architecture``: a model folder whose plans record a network class or layer type that cannot be
  imported fails with a message that names the package to install, instead of nnU-Net's fallback search (which
  imports timm); one that records only the ``allukan_network`` entry of a development version says it must be
  retrained.
- ``load_checkpoint``: ``nnUNetv2_train ... --c`` says in the log from which checkpoint, epoch and learning rate it
  continues.
- ``initialize`` writes once in the log which backend serves each basis kernel of the KA layers and why
  (:func:`nnunet_allukan.layers.kernels.describe`; the policy itself is ``NNUNET_ALLUKAN_KERNELS`` or
  ``kernels.use``, never changed by a trainer), and on a Linux CPU where the environment leaves OpenMP's wait
  policy at its default, how to keep speed beside other processes
  (:func:`nnunet_allukan.openmp.cpu_contention_hint`); on CUDA without usable Triton kernels under the ``auto``
  policy, one WARNING line on stderr and in the log (:func:`triton_fallback_warning`).
"""
from __future__ import annotations

import pydoc
import sys

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_allukan.layers import kernels
from nnunet_allukan.layers.kernels import triton_ops
from nnunet_allukan.openmp import cpu_contention_hint
from nnunet_allukan.training.compile_fallback import CompileFallbackMixin
from nnunet_allukan.training.nan_guard import NonFiniteLossMixin

__all__ = ["KATrainerBase", "NoCudaDevice", "check_architecture_importable", "check_device_available",
           "triton_fallback_warning", "unwrapped_network"]

PACKAGE = "nnunet-allukan"
# The plans entry of a development version that recorded its network outside nnU-Net's ``architecture`` entry.
UNSUPPORTED_NETWORK_RECORD = "allukan_network"


def unwrapped_network(network: nn.Module) -> nn.Module:
    """The network inside DDP and torch.compile wrappers (their parameter names carry prefixes)."""
    network = getattr(network, "module", network)
    return getattr(network, "_orig_mod", network)


def check_architecture_importable(architecture: dict, plans_file: str = "plans.json") -> None:
    """Every dotted path of a plans ``architecture`` entry must import; otherwise say which package provides it."""
    paths = [architecture["network_class_name"]] + [architecture["arch_kwargs"].get(k)
                                                    for k in architecture.get("_kw_requires_import", [])]
    missing = [p for p in paths if isinstance(p, str) and pydoc.locate(p) is None]
    if missing:
        ours = [p for p in missing if p.startswith("nnunet_allukan.")]
        where = (f"They come from the package {PACKAGE}: install it in this environment (pip install {PACKAGE}), "
                 "in the version that trained this model") if ours else \
            "Install the package that provides them in this environment"
        raise RuntimeError(f"The network recorded in {plans_file} cannot be built: {', '.join(missing)} cannot be "
                           f"imported. {where}.")


def triton_fallback_warning(device_type: str) -> str | None:
    """The WARNING line for training on CUDA where the ``auto`` kernel policy finds no usable Triton kernels (the
    basis passes then run on the ``torch`` backend); None otherwise, and where a policy was chosen explicitly."""
    if device_type != "cuda" or kernels.policy() != "auto" or triton_ops.available():
        return None
    return (f"WARNING: the Triton kernels of the KA layers are unavailable ({triton_ops.unavailable_reason()}). "
            "Their basis passes run on the uncompiled torch backend instead: per KA layer and pass, several "
            "elementwise CUDA operations per basis, each reading and writing the layer's whole input (in float32 "
            "under AMP), where the Triton kernel makes one pass; training steps are slower. Fix: install torch >= "
            "2.8 (nnU-Net 2.8 excludes 2.9), whose CUDA wheels bring Triton >= 3.4: pip install --upgrade "
            "'torch>=2.8,!=2.9.*'; NNUNET_ALLUKAN_KERNELS=torch selects this backend without the warning.")


class NoCudaDevice(SystemExit):
    """``-device cuda`` without a CUDA device: a SystemExit, so that nnUNetv2_train prints the message as its one
    line of output instead of a traceback."""


def check_device_available(device: torch.device, trainer: str) -> None:
    """Raise :class:`NoCudaDevice` for a CUDA ``device`` where torch sees none (nnU-Net would fail later, inside
    torch, after creating the results folder)."""
    if device.type != "cuda" or torch.cuda.is_available():
        return
    why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
    raise NoCudaDevice(f"{trainer}: no CUDA device: add -device cpu (nnUNetv2_train ... -tr {trainer} -device cpu); "
                       f"{why}.")


def check_network_record_supported(configuration: dict, plans_file: str = "plans.json") -> None:
    """A configuration whose network is recorded only in ``allukan_network`` cannot be rebuilt."""
    if UNSUPPORTED_NETWORK_RECORD in configuration:
        raise RuntimeError(
            f"The model recorded in {plans_file} was trained with a development version of {PACKAGE} that kept "
            f"its network in an '{UNSUPPORTED_NETWORK_RECORD}' entry; {PACKAGE} 0.2.0 and later build networks "
            "only from nnU-Net's 'architecture' entry. Train the model again with this version (nnUNetv2_train "
            "... -tr with the same trainer name).")


class KATrainerBase(NonFiniteLossMixin, CompileFallbackMixin, nnUNetTrainer):
    """``nnUNetTrainer`` with the device check, the NaN guard, the compile fallback, the import check, the resume
    log line and the kernel log line; the paper protocol and ``nnUNetTrainerKAUNet`` derive from it."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        check_device_available(device, self.__class__.__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)

    def initialize(self):
        super().initialize()
        self.log_kernel_backends()

    def log_kernel_backends(self) -> None:
        """Which backend serves each basis pass, in the log; the OpenMP hint on CPU, the Triton warning on CUDA."""
        self.print_to_log_file(kernels.describe(self.device.type))
        hint = cpu_contention_hint() if self.device.type == "cpu" else None
        if hint:
            self.print_to_log_file(hint)
        warning = triton_fallback_warning(self.device.type)
        if warning:
            self.print_to_log_file(warning, also_print_to_console=False)
            if self.local_rank == 0:
                print(warning, file=sys.stderr, flush=True)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        source = filename_or_checkpoint if isinstance(filename_or_checkpoint, str) else "a checkpoint in memory"
        self.lr_scheduler.step(self.current_epoch)  # the lr this epoch will use (nnU-Net sets it again at its start)
        lrs = ", ".join(f"{g['lr']:g}" for g in self.optimizer.param_groups)
        self.print_to_log_file(
            f"Continuing training from {source}: epoch {self.current_epoch} of {self.num_epochs}, learning rate "
            f"{lrs} (the schedule as a function of the epoch), fold {self.fold}; optimizer state, logs and best "
            "EMA pseudo-Dice restored from the checkpoint.")

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        check_network_record_supported(configuration_manager.configuration)
        check_architecture_importable(configuration_manager.configuration["architecture"])
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
