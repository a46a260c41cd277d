#!/usr/bin/env bash
# A short, bounded version of the whole paper pipeline on one CUDA GPU, then the Table 3 style benchmark.
#
#   synthetic BUSI-like data (distributed layout, ~500x450 images) -> nnUNetv2_convert_allukan_dataset (256x256)
#   -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train folds 0 1 2 of U-KAN_MLP, U-KAN, ALL U-KAN (short variants)
#   -> nnUNetv2_allukan_evaluate (both protocols, Table 1 layout) -> activation plot + overlays
#   -> benchmarks/benchmark_networks.py --device cuda (paper Table 3: memory and time per step)
#
# Needs: an environment with nnunet-allukan installed (pip install . ; the console commands on PATH) and a GPU.
# Every stage is bounded by `timeout`; a failed stage stops the script with the failed command printed.
# Settings (environment variables):
#   ALLUKAN_GPU_WORK    work folder (default ${TMPDIR:-/tmp}/allukan_gpu_short_run, emptied first);
#                       nnUNet_raw/preprocessed/results are created inside it, so no existing nnU-Net set-up is touched
#   ALLUKAN_GPU_COPY_TO where the tables, figures, logs and benchmark JSON are copied at the end (default: $OUT if
#                       set, else nothing is copied)
#   ALLUKAN_GPU_DEVICE  cuda (default) or cpu (a dry run of the pipeline on a machine without GPU)
#   ALLUKAN_GPU_EPOCHS  trainer length suffix: 1epoch, 5epochs (default), 20epochs
#   ALLUKAN_GPU_CASES   number of synthetic lesion images (default 80: 64 training / 16 validation per fold)
#   ALLUKAN_GPU_UNET    1: also train nnU-Net's nnUNetTrainer_5epochs on the same splits (default 0)
#   ALLUKAN_GPU_BENCH_ARGS   arguments of benchmarks/benchmark_networks.py besides --device / --json (default
#                       "--batch-size 8 --size 256 --steps 10", the paper's Table 3 setting; on cpu a tiny
#                       "--batch-size 2 --size 64 --steps 2 --warmup 1 --skip-batch1" that only checks it runs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${ALLUKAN_GPU_WORK:-${TMPDIR:-/tmp}/allukan_gpu_short_run}"
COPY_TO="${ALLUKAN_GPU_COPY_TO:-${OUT:-}}"
DEVICE="${ALLUKAN_GPU_DEVICE:-cuda}"
if [ "$DEVICE" = "cpu" ]; then DEFAULT_BENCH="--batch-size 2 --size 64 --steps 2 --warmup 1 --skip-batch1"
else DEFAULT_BENCH="--batch-size 8 --size 256 --steps 10"; fi
BENCH_ARGS="${ALLUKAN_GPU_BENCH_ARGS:-$DEFAULT_BENCH}"
EPOCHS="${ALLUKAN_GPU_EPOCHS:-5epochs}"
CASES="${ALLUKAN_GPU_CASES:-80}"
WITH_UNET="${ALLUKAN_GPU_UNET:-0}"
PYTHON="${PYTHON:-python}"
DATASET_ID=601
START=$(date +%s)

stage() { echo; echo "=== [$(( $(date +%s) - START )) s] $*"; }
run() {  # run LIMIT_SECONDS COMMAND...: bounded stage, clear message on failure or timeout
    local limit="$1"; shift
    if ! timeout "$limit" "$@"; then
        echo "FAILED (or exceeded ${limit} s): $*" >&2
        exit 1
    fi
}

for command in nnUNetv2_convert_allukan_dataset nnUNetv2_plan_and_preprocess nnUNetv2_train \
               nnUNetv2_allukan_evaluate nnUNetv2_allukan_plot_activations nnUNetv2_allukan_plot_overlays; do
    command -v "$command" >/dev/null || { echo "missing console command $command: pip install $ROOT first" >&2; exit 1; }
done
if [ "$DEVICE" = "cuda" ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi

rm -rf "$WORK"
mkdir -p "$WORK"
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-8}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-8}"
export nnUNet_compile=f  # torch.compile of the whole network takes minutes: not worth it for a few epochs
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

stage "synthetic BUSI-like source data ($CASES lesion images + 10 normal, ~500x450)"
"$PYTHON" - "$WORK/source" "$CASES" <<'PY'
import sys
from dataset_conversion.synthetic import make_synthetic_busi
n = int(sys.argv[2])
root = make_synthetic_busi(sys.argv[1], n_benign=n - n // 3, n_malignant=n // 3, n_normal=10, seed=0,
                           sizes=((500, 450), (560, 470), (470, 500), (520, 520)))
print(root)
PY

stage "convert (256x256, normal images excluded as in the paper)"
run 300 nnUNetv2_convert_allukan_dataset busi "$WORK/source" -d "$DATASET_ID" --overwrite -np "$nnUNet_def_n_proc"

stage "plan and preprocess"
run 600 nnUNetv2_plan_and_preprocess -d "$DATASET_ID" -c 2d --verify_dataset_integrity -np "$nnUNet_def_n_proc"

TRAINERS=("nnUNetTrainerUKAN_MLP_$EPOCHS" "nnUNetTrainerUKAN_$EPOCHS" "nnUNetTrainerAllUKAN_$EPOCHS")
for trainer in "${TRAINERS[@]}"; do
    for fold in 0 1 2; do
        stage "train $trainer fold $fold"
        run 900 nnUNetv2_train "$DATASET_ID" 2d "$fold" -tr "$trainer" -device "$DEVICE"
    done
done

if [ "$WITH_UNET" = "1" ]; then
    # nnU-Net's own trainer uses splits_final.json: give it the paper's splits (written by the ALL U-KAN trainers).
    DATASET_NAME="$(basename "$(ls -d "$nnUNet_preprocessed"/Dataset${DATASET_ID}_*)")"
    cp "$nnUNet_preprocessed/$DATASET_NAME/splits_allukan_paper.json" "$nnUNet_preprocessed/$DATASET_NAME/splits_final.json"
    for fold in 0 1 2; do
        stage "train nnUNetTrainer_5epochs fold $fold (paper splits)"
        run 900 nnUNetv2_train "$DATASET_ID" 2d "$fold" -tr nnUNetTrainer_5epochs -device "$DEVICE"
    done
    TRAINERS+=("nnUNetTrainer_5epochs")
fi

stage "evaluate: both protocols, mean +- std over the three seeds (folds)"
run 300 nnUNetv2_allukan_evaluate -d "$DATASET_ID" -tr "${TRAINERS[@]}"

stage "figures: learned activations (ALL U-KAN fold 0) and overlays (fold 0)"
run 300 nnUNetv2_allukan_plot_activations -d "$DATASET_ID" -tr "nnUNetTrainerAllUKAN_$EPOCHS" -f 0
run 300 nnUNetv2_allukan_plot_overlays -d "$DATASET_ID" -tr "${TRAINERS[@]}" -f 0 -n 4 --select disagreement

stage "network benchmark (paper Table 3 style: $BENCH_ARGS, $DEVICE)"
if [ -f "$ROOT/benchmarks/benchmark_networks.py" ]; then
    # shellcheck disable=SC2086
    run 900 "$PYTHON" "$ROOT/benchmarks/benchmark_networks.py" --device "$DEVICE" $BENCH_ARGS \
        --json "$WORK/benchmark_networks.json"
else
    echo "benchmarks/benchmark_networks.py not found: benchmark skipped" >&2
fi

if [ -n "$COPY_TO" ]; then
    stage "copy tables, figures, logs and benchmark to $COPY_TO"
    mkdir -p "$COPY_TO"
    (cd "$nnUNet_results" && find . \( -name 'results.*' -o -name 'per_case.csv' -o -name '*.png' \
        -o -name 'training_log_*.txt' -o -name 'summary.json' \) -print0 | tar -cf - --null -T - | tar -xf - -C "$COPY_TO")
    if [ -f "$WORK/benchmark_networks.json" ]; then cp "$WORK/benchmark_networks.json" "$COPY_TO/"; fi
fi

stage "done in $(( $(date +%s) - START )) s; outputs under $WORK"
echo "  tables:   $nnUNet_results/Dataset${DATASET_ID}_*/allukan_evaluation/results.md"
echo "  figures:  $nnUNet_results/Dataset${DATASET_ID}_*/allukan_figures/, .../fold_0/activations_checkpoint_final.png"
echo "  curves:   $nnUNet_results/Dataset${DATASET_ID}_*/*/fold_*/progress.png (drawn by nnU-Net)"
echo "  benchmark: $WORK/benchmark_networks.json"
