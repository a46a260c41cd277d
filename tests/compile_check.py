"""Run as a script by test_networks_compile.py, in a fresh process (the kernel policy from the environment):
``torch._dynamo.explain`` of small networks under ``no_grad``, ``inference_mode`` and with gradients (a training
step's forward, whose backward AOT autograd derives from the same graph), then a training step compiled with
``aot_eager`` against eager. Prints one JSON line.

Arguments: ``fresh`` (the first compiled call is the kernels' first use: the native library is built or loaded,
Triton imported, while dynamo traces) or ``loaded`` (``kernels.describe`` has loaded them before, as the trainers
do); then the networks to explain: ``layers`` (one of every KA layer kind), ``ka-unet`` (a small KA nnU-Net),
``all-ukan`` (a small ALL U-KAN, gradients only: it takes longest)."""
import json
import sys

import torch
import torch._dynamo
import torch.nn as nn

from nnunet_allukan.layers import KAConv2d, KAConvTranspose2d, KALinear, kernels
from nnunet_allukan.networks import KAPlainConvUNet, build_table2_network


class EveryKALayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = KAConv2d(3, 8, 3, padding=1)
        self.strided = KAConv2d(8, 8, 3, stride=2, padding=1, grad_free=False)
        self.depthwise = KAConv2d(8, 8, 3, padding=1, groups=8)
        self.expand = KAConv2d(8, 32, 1)
        self.wide = KAConv2d(32, 8, 3, padding=1)  # keeps its window sums for backward
        self.fc = KALinear(8, 8)
        self.lam = KAConv2d(8, 4, 3, padding=1, use_lambda=True)
        self.up = KAConvTranspose2d(4, 4, 2, 2)
        self.head = KAConv2d(4, 1, 1)

    def forward(self, x):
        x = torch.relu(self.strided(torch.relu(self.dense(x))))
        x = self.wide(torch.relu(self.expand(self.depthwise(x))))
        x = self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(self.up(torch.relu(self.lam(x))))


def network(name: str):
    torch.manual_seed(0)
    if name == "layers":
        return EveryKALayer(), torch.randn(2, 3, 12, 12)
    if name == "all-ukan":
        return build_table2_network(13, 3, 1, embed_dims=(16, 24, 32)), torch.randn(2, 3, 32, 32)
    net = KAPlainConvUNet(input_channels=1, n_stages=2, features_per_stage=[4, 8], conv_op=KAConv2d,
                          kernel_sizes=[[3, 3]] * 2, strides=[[1, 1], [2, 2]], n_conv_per_stage=[1, 1],
                          num_classes=2, n_conv_per_stage_decoder=[1], conv_bias=True, norm_op=nn.InstanceNorm2d,
                          norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                          nonlin_kwargs={"inplace": True}, deep_supervision=False, ka_kwargs={"grad_free": True})
    net.apply(KAPlainConvUNet.initialize)
    return net, torch.randn(2, 1, 16, 16)


def outputs_and_grads(net, x):
    y = net(x)
    return [y] + list(torch.autograd.grad(y.square().sum(), list(net.parameters())))


def main(state: str, names: list[str]) -> None:
    if state == "loaded":
        kernels.describe("cpu")
    result = {"triton kernels loaded before": "nnunet_allukan.layers.kernels.triton_kernels" in sys.modules,
              "backends": sorted({c.backend for c in kernels.active("cpu")})} if state == "loaded" else {}
    for name in names:
        net, x = network(name)
        modes = {"training": torch.enable_grad} if name == "all-ukan" else \
            {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "training": torch.enable_grad}
        for mode, context in modes.items():
            torch._dynamo.reset()
            with context():
                e = torch._dynamo.explain(net)(x)
            result[f"{name} {mode}"] = {"graphs": e.graph_count, "breaks": e.graph_break_count,
                                        "reasons": [str(r.reason).splitlines()[0] for r in e.break_reasons][:3]}
        if name == "layers":
            torch._dynamo.reset()
            eager = outputs_and_grads(net, x)
            compiled = outputs_and_grads(torch.compile(net, backend="aot_eager"), x)
            result["layers: compiled training step - eager"] = max(
                ((a - b).abs().max() / b.abs().max()).item() for a, b in zip(compiled, eager))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
