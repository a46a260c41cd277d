"""Installed by the wheel as ``nnunetv2/training/nnUNetTrainer/nnUNetTrainerAllUKAN.py``.

nnU-Net resolves ``-tr NAME`` by importing the modules of that folder (plain modules first) and
looking for a class called NAME. Re-exporting the plugin's trainers here makes the stock
``nnUNetv2_train`` / ``nnUNetv2_predict`` find them before nnU-Net reaches modules that import timm.
"""
from nnunet_allukan.training.trainers import *  # noqa: F401,F403
