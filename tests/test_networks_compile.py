"""nnU-Net compiles the whole network by default on CUDA: the KA layers must trace into one graph, without a break,
whatever was imported before the first compiled call. Each case runs tests/compile_check.py in a fresh process
(both at once: they are independent), with the kernel backend's first use inside the compiled call."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("compile_check.py")


def _start(policy: str, *args: str, interpret: bool = False) -> subprocess.Popen:
    env = {**os.environ, "NNUNET_ALLUKAN_KERNELS": policy, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _assert_one_graph(result: dict) -> None:
    traced = {k: v for k, v in result.items() if isinstance(v, dict)}
    assert traced
    assert all(v["graphs"] == 1 and v["breaks"] == 0 for v in traced.values()), traced


def test_network_traces_into_one_graph_whatever_was_loaded_before():
    """First use of the kernels inside the first compiled call: on CPU (native library built or loaded then; one of
    every KA layer kind and a small ALL U-KAN) and with Triton in its interpreter (Triton imported then); and loaded
    before it, as the trainers do (``kernels.describe`` first; a small KA nnU-Net). Under no_grad, inference_mode and
    with gradients; the compiled training step equals eager."""
    processes = {"native, first use compiled": _start("auto", "fresh", "layers", "all-ukan"),
                 "native, loaded before": _start("auto", "loaded", "ka-unet")}
    try:
        import triton  # noqa: F401
        processes["triton, first use compiled"] = _start("triton", "fresh", "layers", interpret=True)
    except ImportError:
        pass
    results = {name: _result(p) for name, p in processes.items()}
    for name, result in results.items():
        _assert_one_graph(result)
        assert result.get("layers: compiled training step - eager", 0.0) < 1e-5, (name, result)
    from nnunet_allukan.layers.kernels import native

    if native.available():  # otherwise every case ran on the torch passes
        assert "native" in results["native, loaded before"]["backends"], results
    if "triton, first use compiled" not in results:
        pytest.skip("Triton is not installed: the native cases passed, the Triton case did not run")
