#!/usr/bin/env bash
# One command on a fresh machine: set up .venv (scripts/setup_env.sh), then run the ALL U-KAN demo on CPU:
# synthetic BUSI-like data -> conversion -> nnU-Net plan/preprocess -> short training -> prediction of the
# held-out cases -> IoU/F1 and an overlay PNG. Arguments are passed to nnUNetv2_allukan_demo
# (e.g. -o /tmp/demo --overwrite); the output folder is printed at the end (default ./allukan_demo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh"
VENV="${ALLUKAN_VENV:-$ROOT/.venv}"
cd "$ROOT"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
exec "$VENV/bin/nnUNetv2_allukan_demo" "$@"
