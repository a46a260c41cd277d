"""ALL U-KAN for nnU-Net v2.

Sub-packages, in dependency order:

- ``nnunet_allukan.paper``: the paper's settings and numbers (constants only; imported by everything below).
- ``nnunet_allukan.layers``: KA / KAonv, KA upsampling and vanilla KAN layers (pure PyTorch).
- ``nnunet_allukan.networks``: ALL U-KAN, U-KAN, U-KAN_MLP and the paper's ablation rows, 2D and 3D (PyTorch);
  the KA versions of nnU-Net's planned U-Nets (PyTorch + dynamic-network-architectures).
- ``nnunet_allukan.training``: nnU-Net v2 trainers (depend on nnU-Net).
- ``nnunet_allukan.evaluation``: the paper's metrics and figures.
"""

__version__ = "0.2.0"
