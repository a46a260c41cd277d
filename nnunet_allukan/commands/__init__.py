"""The top floor: console commands that combine the floors below (nothing below imports this package).

- ``demo``: ``nnUNetv2_allukan_demo``, the whole job on synthetic data (conversion, nnU-Net planning, training,
  prediction, scores and an overlay).
- ``evaluation``: ``nnUNetv2_allukan_evaluate`` and the ``nnUNetv2_allukan_plot_*`` commands over nnU-Net result
  folders (the computations live in :mod:`nnunet_allukan.evaluation`).
"""
