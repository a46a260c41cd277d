#!/usr/bin/env bash
# One command: set up .venv from scratch (or update it) and run the whole test suite on CPU (with no arguments,
# first the layer tests on the torch kernel backend alone, then everything on the default policy).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
VENV="${ALLUKAN_VENV:-$ROOT/.venv}"
cd "$ROOT"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
if [ "$#" -eq 0 ]; then
    # The layer tests once more on the torch backend alone: every layer must be exact without the native kernels
    # (no C compiler, CUDA). The whole suite below runs on the default policy (native where it builds).
    echo "[tests] layer tests with NNUNET_ALLUKAN_KERNELS=torch"
    NNUNET_ALLUKAN_KERNELS=torch "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_layers*.py
    echo "[tests] whole suite (default kernel policy)"
fi
exec "$VENV/bin/python" -m pytest -q -rs --durations=25 "$@"
