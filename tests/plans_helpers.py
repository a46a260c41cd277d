"""Small nnU-Net plans for the tests that build trainers and networks without nnU-Net's planner."""


def minimal_plans(configuration: str, patch_size, batch_size=2, strides=None) -> dict:
    """nnU-Net plans with one configuration that plans a small PlainConvUNet (the trainers rewrite it)."""
    dim = len(patch_size)
    strides = strides or [[1] * dim] + [[2] * dim] * 4
    architecture = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {"n_stages": len(strides), "features_per_stage": [8, 16, 32, 32, 32][:len(strides)],
                                    "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
                                    "kernel_sizes": [[3] * dim] * len(strides), "strides": strides,
                                    "n_conv_per_stage": [2] * len(strides),
                                    "n_conv_per_stage_decoder": [2] * (len(strides) - 1), "conv_bias": True,
                                    "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
                                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                                    "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                                    "nonlin_kwargs": {"inplace": True}},
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    return {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "continue_training": False,
            "configurations": {configuration: {"patch_size": list(patch_size), "batch_size": batch_size,
                                               "architecture": architecture, "data_identifier": "x"}}}


def build_from_plans(plans, configuration, input_channels=2, outputs=3):
    """What nnU-Net's trainer and predictor do with a configuration's architecture entry."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    architecture = PlansManager(plans).get_configuration(configuration).configuration["architecture"]
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], input_channels, outputs,
                                  deep_supervision=False)
