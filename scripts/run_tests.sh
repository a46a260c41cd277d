#!/usr/bin/env bash
# One command: set up .venv from scratch (or update it) and run the whole test suite on CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
VENV="${ALLUKAN_VENV:-$ROOT/.venv}"
cd "$ROOT"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}"
exec "$VENV/bin/python" -m pytest -q -rs --durations=25 "$@"
