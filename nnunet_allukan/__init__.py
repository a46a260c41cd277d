"""ALL U-KAN for nnU-Net v2.

Sub-packages, in dependency order:

- ``nnunet_allukan.layers``: KA / KAonv and vanilla KAN layers (pure PyTorch).
- ``nnunet_allukan.networks``: ALL U-KAN, U-KAN, U-KAN_MLP and the paper's ablation rows (PyTorch).
- ``nnunet_allukan.training``: nnU-Net v2 trainers (depend on nnU-Net).
- ``nnunet_allukan.evaluation``: the paper's metrics and figures.
"""

__version__ = "0.1.0"
