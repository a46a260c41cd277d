#!/usr/bin/env bash
# Creates (or updates) the virtual environment .venv with nnunet-allukan and its dependencies.
#
# Why torch is installed first, pinned together with torchvision:
#   nnunetv2 -> dynamic-network-architectures -> timm -> torchvision. Left alone, pip picks the newest
#   torchvision, which pins the newest torch and silently swaps a CPU torch for a multi-GB CUDA build.
#   Pinning a matching pair (torch 2.13.0 / torchvision 0.28.0) keeps the torch we chose. On a CPU-only
#   machine torchvision then cannot be imported ("operator torchvision::nms does not exist"); that is
#   harmless because nnunet-allukan never imports timm or torchvision and its trainers are found by
#   nnU-Net before anything that does (README, "Installing into your own environment").
#
# Override the pair with ALLUKAN_TORCH_SPEC, e.g. ALLUKAN_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1".
# Override the environment location with ALLUKAN_VENV (default: .venv in the repository root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ALLUKAN_VENV:-$ROOT/.venv}"
TORCH_SPEC="${ALLUKAN_TORCH_SPEC:-torch==2.13.0 torchvision==0.28.0}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
echo "[setup] installing $TORCH_SPEC"
# shellcheck disable=SC2086
$PIP install -q $TORCH_SPEC
echo "[setup] installing nnunet-allukan (non-editable: the wheel places nnU-Net's trainer hook)"
# shellcheck disable=SC2086
$PIP install -q $TORCH_SPEC "$ROOT[test]"
# A rebuilt wheel of the same version must replace the installed copy.
$PIP install -q --no-deps --force-reinstall "$ROOT"
"$VENV/bin/python" - <<'PY'
import importlib.util, torch
spec = importlib.util.find_spec("nnunetv2.training.nnUNetTrainer.nnUNetTrainerAllUKAN")
assert spec is not None, "the nnU-Net trainer hook was not installed"
print(f"[setup] ok: torch {torch.__version__}, trainer hook at {spec.origin}")
PY
