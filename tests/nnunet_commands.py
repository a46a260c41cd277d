"""Running nnU-Net's console commands from the end-to-end tests (the venv's bin/, temporary nnUNet_* folders)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def nnunet_environment(root: Path) -> dict:
    """This process' environment with nnUNet_raw / _preprocessed / _results created under ``root``, no
    nnUNet_compile, single-process augmentation (deterministic; no worker start-up on 2 cores) and one export
    worker (the datasets are tiny)."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_compile"}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        env[name] = str(root / name)
    env.update(nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0")
    return env


def run_commands(commands: list[list[str]], env: dict, timeout: int) -> list[str]:
    """Runs independent console commands at the same time (their start-up and export workers are mostly
    single-threaded, so two overlap well on 2 cores; passive OpenMP threads do not spin against each other);
    fails the test with the output tail of any that fails. Returns their outputs."""
    start = time.time()
    env = env | {"OMP_WAIT_POLICY": "PASSIVE"}
    logs = [tempfile.TemporaryFile("w+") for _ in commands]  # files, not pipes: no process blocks on its output
    processes = [subprocess.Popen([str(BIN / args[0])] + args[1:], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  text=True) for args, log in zip(commands, logs)]
    outputs = []
    try:
        for args, process, log in zip(commands, processes, logs):
            process.wait(timeout=max(1.0, timeout - (time.time() - start)))
            log.seek(0)
            outputs.append(log.read())
            assert process.returncode == 0, f"{' '.join(args)} failed:\n{outputs[-1][-4000:]}"
    finally:
        for process, log in zip(processes, logs):
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    print(f"[{time.time() - start:6.1f} s] " + " & ".join(" ".join(args) for args in commands))
    return outputs


def run_command(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """Runs a console command of this environment; fails the test with its output tail if it fails."""
    start = time.time()
    result = subprocess.run([str(BIN / args[0])] + args[1:], env=env, capture_output=True, text=True,
                            timeout=timeout)
    print(f"[{time.time() - start:6.1f} s] {' '.join(args)}")
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result
