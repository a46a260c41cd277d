"""The version floor check (no CI): run with an interpreter that has the floor versions of torch (and Triton)
installed, e.g. a throwaway virtual environment outside the repository:

    python -m venv /tmp/floor && /tmp/floor/bin/pip install "torch==2.7.0" numpy
    /tmp/floor/bin/python benchmarks/floor_check.py auto
    TRITON_INTERPRET=1 /tmp/floor/bin/python benchmarks/floor_check.py triton   # with triton>=3.7 installed there

Imports the package, says whether the Triton kernels load and what would serve CUDA, and runs one KAConv2d forward
and backward under the given kernel policy against the reference backend. docs/performance.md ("Versions")
records what ran on which versions.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

import torch  # noqa: E402

print("python", sys.version.split()[0], "torch", torch.__version__)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:  # absent or broken: the package must still import
    print("triton: none", e)
import nnunet_allukan  # noqa: E402,F401
from nnunet_allukan.layers import KAConv2d, kernels  # noqa: E402
from nnunet_allukan.layers.kernels import triton_ops  # noqa: E402

policy = sys.argv[1] if len(sys.argv) > 1 else "auto"
kernels.use(policy)
print("triton kernels available:", triton_ops.available(), triton_ops.unavailable_reason() or "")
print("on CUDA:", kernels.describe("cuda").splitlines()[1].strip())
torch.manual_seed(0)
layer = KAConv2d(4, 6, 3, padding=1)
x = torch.randn(2, 4, 9, 7, requires_grad=True)
y = layer(x)
y.square().sum().backward()
print("served by:", sorted({c.backend for c in kernels.active("cpu")}))
kernels.use("reference")
x_ref = x.detach().clone().requires_grad_()
y_ref = layer(x_ref)
y_ref.square().sum().backward()
print(f"policy {policy}: max |y - reference| {(y - y_ref).abs().max().item():.2e}, max |dx - reference| "
      f"{(x.grad - x_ref.grad).abs().max().item():.2e}")
