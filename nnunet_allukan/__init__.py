"""ALL U-KAN for nnU-Net v2.

Sub-packages, bottom floor first; a floor imports only the floors below it (docs/architecture.md, where the
rules are stated exactly):

- base: ``nnunet_allukan.paper`` (the paper's settings and numbers, constants only), ``.splits`` (the paper's
  seeded splits), ``.synthetic`` (fake datasets in the distributed layouts), ``.filesystem`` (file-system
  helpers); imported by everything above and by ``dataset_conversion``, which nothing here imports.
- ``nnunet_allukan.layers``: KA / KAonv, KA upsampling and vanilla KAN layers (pure PyTorch).
- ``nnunet_allukan.networks``: ALL U-KAN, U-KAN, U-KAN_MLP and the paper's ablation rows, 2D and 3D (PyTorch);
  the KA versions of nnU-Net's planned U-Nets (PyTorch + dynamic-network-architectures).
- ``nnunet_allukan.training``: nnU-Net v2 trainers (depend on nnU-Net).
- ``nnunet_allukan.evaluation``: the paper's metrics, tables and figures over nnU-Net result folders.
- ``nnunet_allukan.commands``: the top floor, console commands that combine the others (the demo, the evaluation
  and plot commands).
"""

__version__ = "0.2.0"
