"""KA-based layers, pure PyTorch (no nnU-Net import).

- :class:`KALinear`, :class:`KAConv2d`, :class:`KAConv3d`: SaKAN with Grad-Free Spline (paper Sec. 3.1-3.3).
- :class:`KAConvTranspose2d`, :class:`KAConvTranspose3d`: the KA version of nnU-Net's stride = kernel upsampling.
- :class:`KANLinear`, :class:`KANConv2d`: vanilla KAN layers (U-KAN baseline, ablation rows 9/10).
- :func:`bspline_bases`: the spline bases (closed form); :func:`bspline_bases_cox_de_boor`: the textbook recursion.
- :mod:`kernels`: the one seam through which the layers run their basis passes (backends ``reference``, ``torch``,
  ``native`` on CPU, ``triton`` on CUDA); ``kernels.describe()`` says which serves what, ``kernels.use()`` /
  ``NNUNET_ALLUKAN_KERNELS`` choose.
"""
from . import kernels
from .ka import KAConv2d, KAConv3d, KALinear
from .ka_transpose import KAConvTranspose2d, KAConvTranspose3d
from .kan import KANConv2d, KANLinear
from .splines import SplineGrid, bspline_bases, bspline_bases_cox_de_boor

__all__ = ["KALinear", "KAConv2d", "KAConv3d", "KAConvTranspose2d", "KAConvTranspose3d", "KANLinear", "KANConv2d",
           "SplineGrid", "bspline_bases", "bspline_bases_cox_de_boor"]
