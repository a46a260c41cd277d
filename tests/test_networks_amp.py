"""Whole networks under CPU autocast: relative difference of the output from float32, KA network vs its plain
counterpart, at initialisation and after 20 float32 training steps on one batch (training mode: normalisation on
batch statistics). benchmarks/benchmark_amp.py measures the same at the paper's widths."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_allukan.layers import KAConv2d, KALinear
from nnunet_allukan.networks import KAPlainConvUNet, build_table2_network

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _unet(ka: bool) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(input_channels=3, n_stages=3, features_per_stage=[8, 16, 32], kernel_sizes=[[3, 3]] * 3,
                  strides=[[1, 1], [2, 2], [2, 2]], n_conv_per_stage=[2] * 3, num_classes=1,
                  n_conv_per_stage_decoder=[2] * 2, conv_bias=True, norm_op=nn.InstanceNorm2d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=False)
    net = KAPlainConvUNet(conv_op=KAConv2d, ka_kwargs={"grad_free": True}, **kwargs) if ka else \
        PlainConvUNet(conv_op=nn.Conv2d, **kwargs)
    net.apply(type(net).initialize)
    return net


def _ukan(ka: bool) -> nn.Module:
    torch.manual_seed(0)
    return build_table2_network(13 if ka else 4, 3, 1, embed_dims=(16, 24, 32))


def _differences(net: nn.Module, x: torch.Tensor, rounded_only: bool = False) -> dict:
    """Autocast's relative difference per half type; with ``rounded_only``, that of rounding only the outputs of
    the convolution / linear / KA layers to the half type, everything computed in float32."""
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, KAConv2d, KALinear)
    out = {}
    with torch.no_grad():
        y32 = net(x)
        for key, dtype in DTYPES.items():
            if rounded_only:
                hooks = [m.register_forward_hook(lambda m, a, y: y.to(dtype).float()) for m in net.modules()
                         if isinstance(m, kinds)]
                y = net(x)
                for h in hooks:
                    h.remove()
            else:
                with torch.autocast("cpu", dtype=dtype):
                    y = net(x)
            out[key] = ((y.float() - y32).norm() / y32.norm()).item()
    return out


def _at_init_and_after_training(make, **kw) -> list[dict]:
    net = make().train()
    torch.manual_seed(1)
    x, target = torch.randn(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    first = _differences(net, x, **kw)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(net(x), target).backward()
        opt.step()
    return [first, _differences(net, x, **kw)]


def test_ka_nnunet_is_within_twice_plain_conv_unets_difference():
    ka, plain = (_at_init_and_after_training(lambda ka=ka: _unet(ka)) for ka in (True, False))
    for stage, (k, p) in enumerate(zip(ka, plain)):
        for key in DTYPES:
            assert k[key] < 2 * p[key], (stage, key, k, p)


def test_all_ukan_amplifies_rounding_itself():
    """Why ALL U-KAN is not within twice U-KAN_MLP's difference at initialisation: the network amplifies any
    perturbation far more. With every layer computed in float32 and only its output rounded to the half type, ALL
    U-KAN's output already differs by more than twice U-KAN_MLP's whole autocast difference; autocast adds to that
    rounding no more than twice what it adds to U-KAN_MLP's (the layers themselves are at rounding level)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    ka, plain = _ukan(True).train(), _ukan(False).train()
    ka_amp, ka_rounded = _differences(ka, x), _differences(ka, x, rounded_only=True)
    plain_amp, plain_rounded = _differences(plain, x), _differences(plain, x, rounded_only=True)
    for key in DTYPES:
        assert ka_rounded[key] > 2 * plain_amp[key], (key, ka_rounded, plain_amp)
        assert ka_amp[key] / ka_rounded[key] < 2 * plain_amp[key] / plain_rounded[key], \
            (key, ka_amp, ka_rounded, plain_amp, plain_rounded)
