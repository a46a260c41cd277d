"""nnU-Net v2 trainers (depend on nnU-Net).

- ``trainers``: every trainer name users pass to ``nnUNetv2_train -tr`` (one ``__all__``).
- ``paper_protocol``: :class:`nnUNetTrainerPaperProtocol`, the paper's protocol as one base;
  ``protocol``: its settings as nnU-Net-independent functions; ``architectures``: the plans' ``architecture``
  entries; ``memory``: the GPU memory estimate logged before training.
- ``ka_unet_trainers``: ``nnUNetTrainerKAUNet``, nnU-Net's own protocol with its planned network made fully KA.
- ``base``: :class:`KATrainerBase`, the base of both, built from one mixin per concern: ``nan_guard`` (a NaN loss
  stops training with a clear message) and ``compile_fallback`` (a failed torch.compile falls back to eager).
- ``nnunet_trainer_shim`` / ``registration``: how nnU-Net finds the trainers by name.
"""
