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


class BackgroundCommand:
    """A console command started now and awaited later (independent runs share the 2 cores: their start-up and
    export workers are mostly single-threaded; passive OpenMP threads do not spin against each other's)."""

    def __init__(self, args: list[str], env: dict) -> None:
        self.args = args
        self.start = time.time()
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: the process never blocks on its output
        self.process = subprocess.Popen([str(BIN / args[0])] + args[1:], env=env | {"OMP_WAIT_POLICY": "PASSIVE"},
                                        stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def finish(self, timeout: float) -> str:
        """Waits for the command; fails the test with its output tail if it failed. Returns its output."""
        try:
            self.process.wait(timeout=max(1.0, timeout - (time.time() - self.start)))
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.log.seek(0)
        output = self.log.read()
        self.log.close()
        print(f"[{time.time() - self.start:6.1f} s] {' '.join(self.args)}")
        assert self.process.returncode == 0, f"{' '.join(self.args)} failed:\n{output[-4000:]}"
        return output


def run_commands(commands: list[list[str]], env: dict, timeout: int) -> list[str]:
    """Runs independent console commands at the same time; fails the test with the output tail of any that
    fails. Returns their outputs."""
    started = [BackgroundCommand(args, env) for args in commands]
    return [command.finish(timeout) for command in started]


def run_command(args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """Runs a console command of this environment; fails the test with its output tail if it fails."""
    start = time.time()
    result = subprocess.run([str(BIN / args[0])] + args[1:], env=env, capture_output=True, text=True,
                            timeout=timeout)
    print(f"[{time.time() - start:6.1f} s] {' '.join(args)}")
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result
