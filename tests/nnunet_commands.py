"""Running nnU-Net's console commands from the end-to-end tests (the venv's bin/, temporary nnUNet_* folders)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def nnunet_environment(root: Path) -> dict:
    """This process' environment with nnUNet_raw / _preprocessed / _results created under ``root``, no
    nnUNet_compile, and single-process augmentation (deterministic; no worker start-up on 2 cores)."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_compile"}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        env[name] = str(root / name)
    env.update(nnUNet_def_n_proc="2", nnUNet_n_proc_DA="0")
    return env


def run_command(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """Runs a console command of this environment; fails the test with its output tail if it fails."""
    start = time.time()
    result = subprocess.run([str(BIN / args[0])] + args[1:], env=env, capture_output=True, text=True,
                            timeout=timeout)
    print(f"[{time.time() - start:6.1f} s] {' '.join(args)}")
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result
