#!/usr/bin/env bash
# The first run on a GPU, in at most ~12 minutes on one device (the stages' limits sum to 720 s; train_3d gets
# what is left of them): correctness and speed of the KA layers under nnU-Net's CUDA settings, with JSON results
# and a markdown summary (summary.md: the GPU table of docs/performance.md). Training runs with nnU-Net's defaults
# (whole-network torch.compile, AMP) first, its first step's time (compilation included) reported, then eagerly.
# With little device time, run `--only layers,first_step,train` first (about 6 minutes; docs/performance.md).
#
# A stage that runs past its limit is stopped with SIGABRT, on which every Python process of the stage prints its
# stack (PYTHONFAULTHANDLER=1) into the stage's log: the log says where it was. Limits are estimates from the
# figures of the first GPU run (one reference ALL U-KAN step 0.14 s, a fresh process ~10 s, a Triton kernel
# variant compiled in ~1-2 s), to be replaced by measured times (stages.tsv records each stage's seconds).
#
#   bash benchmarks/gpu_check.sh              # on a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run    # the same stages on CPU at tiny sizes, native basis kernels, no
#                                             # whole-network compile: checks that the script runs (~20 min)
#   bash benchmarks/gpu_check.sh --only network_3d,train_3d [--dry-run]   # some stages only (names below)
#
# Stages (each bounded by `timeout`; a failed stage is recorded and the next one runs):
#   1. layers       benchmarks/gpu_layer_check.py: fast == unfold reference on the device in float64 / float32,
#                   float16 and bfloat16 autocast against the float64 reference, forward and every gradient, under
#                   the default policy (Triton kernels) and NNUNET_ALLUKAN_KERNELS=torch (plain tensor form)
#   first_step      benchmarks/gpu_layer_check.py --first-step 2 --compile: a fresh process's first ALL U-KAN
#                   training step as nnU-Net runs it by default (torch.compile, AMP; batch 8, 256x256), seconds from
#                   its start, compilation included (target 30 s)
#   first_step_3d   the same in 3D (batch 2, 64^3), eager
#   2. layer_bench  benchmarks/benchmark_ratios.py --skip network memory: KAConv2d / depthwise / KAConv3d vs nn.Conv
#   3. network      benchmarks/benchmark_networks.py --amp: U-KAN_MLP, U-KAN, ALL U-KAN, batch 8, 256x256, time per
#                   step and max_memory_allocated (paper Table 3), nnU-Net's default AMP (float16 + GradScaler)
#   4. ratios       benchmarks/benchmark_ratios.py --amp --skip layers memory: ALL U-KAN vs U-KAN_MLP step time
#                   interleaved in one process, target 1.5x (the 1.3x memory target: stage 3's
#                   max_memory_allocated, each network in a fresh process)
#   5. train        synthetic BUSI-like data -> convert -> plan/preprocess -> nnUNetv2_train nnUNetTrainerAllUKAN_2epochs
#                   with nnU-Net's CUDA defaults (whole-network torch.compile, AMP, gradient clipping at 12), then
#                   nnUNetv2_predict of the validation images (mirroring on); reports the first epoch's time
#                   (compilation included) against the second's
#      train_eager  the same training, fold 1, with nnUNet_compile=f (uses train's preprocessed data)
#   6. network_3d   benchmarks/benchmark_networks.py --dims 3 --amp: U-KAN_MLP 3D vs ALL U-KAN 3D, batch 2, 64^3
#                   (strides as the 3D trainers derive them from nnU-Net's plan), time per step and memory
#   7. train_3d     synthetic 3D NIfTI volumes (tests/e2e_datasets.py's: 2 channels, 2 labels, 16x32x32) ->
#                   plan/preprocess 3d_fullres -> nnUNetv2_train -tr nnUNetTrainerKAUNet_smoke (nnU-Net's planned
#                   3D U-Net fully KA, 1 epoch of 10 iterations, nnU-Net's CUDA defaults) -> nnUNetv2_predict;
#                   limit: the rest of the 720 s (skipped, and recorded so, when under 60 s are left)
#
# Settings (environment variables):
#   ALLUKAN_GPU_CHECK_OUT  results folder (default: $OUT if set, else benchmark_results/gpu_check); emptied first
#   ALLUKAN_GPU_CHECK_WORK nnU-Net work folder (default ${TMPDIR:-/tmp}/allukan_gpu_check; emptied first)
#   PYTHON                 interpreter with nnunet-allukan installed (default: python)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --only) shift; ONLY=",${1:-},"; [ -n "${1:-}" ] || { echo "--only needs stage names" >&2; exit 2; } ;;
        -h|--help) sed -n '2,47p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (use --dry-run, --only STAGE[,STAGE...] or nothing)" >&2; exit 2 ;;
    esac
    shift
done
PYTHON="${PYTHON:-python}"
OUT_DIR="${ALLUKAN_GPU_CHECK_OUT:-${OUT:-$ROOT/benchmark_results/gpu_check}}"
WORK="${ALLUKAN_GPU_CHECK_WORK:-${TMPDIR:-/tmp}/allukan_gpu_check}"
if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    LAYER_ARGS="--layer-repeats 1"
    NET_ARGS="--batch-size 2 --size 64 --steps 1 --warmup 1"
    RATIO_ARGS="--batch-size 2 --size 64 --rounds 1"
    NET3D_ARGS="--batch-size 2 --size 32 --steps 1 --warmup 1"
    FIRST_ARGS="--batch-size 2 --size 64"; FIRST3D_ARGS="--batch-size 1 --size 32"
    CASES=12; IMAGE_SIZE=64; T_LAYERS=300; T_FIRST=300; T_LBENCH=600; T_NET=600; T_RATIO=600; T_TRAIN=900
    T_NET3D=600; T_TRAIN3D=900; T_EAGER=900; FIRST_COMPILE=""
    export nnUNet_compile=f  # whole-network compile on CPU takes many minutes (docs/performance.md)
else
    DEVICE=cuda
    LAYER_ARGS="--layer-repeats 20"
    NET_ARGS="--batch-size 8 --size 256 --steps 10 --warmup 3"
    RATIO_ARGS="--batch-size 8 --size 256 --rounds 10"
    NET3D_ARGS="--batch-size 2 --size 64 --steps 5 --warmup 2"
    FIRST_ARGS=""; FIRST3D_ARGS=""
    # estimates (see above): 60 + 90 + 40 + 45 + 70 + 55 + 200 + 110 + 45 = 715 s, train_3d the rest of 720
    CASES=48; IMAGE_SIZE=256; T_LAYERS=60; T_FIRST=40; T_LBENCH=45; T_NET=70; T_RATIO=55; T_TRAIN=200
    T_NET3D=45; T_TRAIN3D=""; T_EAGER=110  # train_3d: what is left of BUDGET when it starts
    FIRST_COMPILE="--compile"; T_FIRSTC=90  # the first step with nnU-Net's whole-network compile
fi
T_FIRSTC="${T_FIRSTC:-$T_FIRST}"
BUDGET=720
# This checkout's layers even where nnunet-allukan is installed non-editable (pip install .).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONFAULTHANDLER=1  # a stage stopped by SIGABRT prints where each of its Python processes was
rm -rf "$OUT_DIR" "$WORK"
mkdir -p "$OUT_DIR" "$WORK"
STATUS="$OUT_DIR/stages.tsv"
: > "$STATUS"
START=$(date +%s)

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: bounded, logged to OUT_DIR/NAME.log, status recorded
    local name="$1" limit="$2"; shift 2
    local t0=$(date +%s) rc
    if [ -n "$ONLY" ] && [ "${ONLY#*,$name,}" = "$ONLY" ]; then
        return 0
    fi
    if [ "$limit" -lt 60 ] 2>/dev/null && [ "$name" = train_3d ]; then
        echo "=== [$(( t0 - START )) s] $name: SKIPPED, only $limit s of the ${BUDGET} s budget left"
        printf '%s\tskipped\t0\n' "$name" >> "$STATUS"
        return 0
    fi
    echo "=== [$(( t0 - START )) s] $name (limit $limit s; log $OUT_DIR/$name.log)"
    printf '$ %s\n' "${*:0:400}" > "$OUT_DIR/$name.log"
    # SIGABRT to the stage's process group: faulthandler dumps the Python stacks; SIGKILL 10 s later if need be
    timeout -s ABRT -k 10 "$limit" "$@" >> "$OUT_DIR/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT_DIR/$name.log"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$STATUS"
    [ "$rc" = 124 ] && echo "  $name: TIMED OUT after $limit s (Python stacks in $OUT_DIR/$name.log)"
    return 0
}

if [ "$DEVICE" = cuda ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')" || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/gpu.txt" 2>&1 || true
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" > "$OUT_DIR/versions.txt" 2>&1

# shellcheck disable=SC2086
stage layers "$T_LAYERS" "$PYTHON" "$ROOT/benchmarks/gpu_layer_check.py" --device "$DEVICE" --json "$OUT_DIR/layers.json"
# shellcheck disable=SC2086
stage first_step "$T_FIRSTC" "$PYTHON" "$ROOT/benchmarks/gpu_layer_check.py" --device "$DEVICE" --first-step 2 \
    $FIRST_COMPILE $FIRST_ARGS --json "$OUT_DIR/first_step.json"
# shellcheck disable=SC2086
stage first_step_3d "$T_FIRST" "$PYTHON" "$ROOT/benchmarks/gpu_layer_check.py" --device "$DEVICE" --first-step 3 \
    $FIRST3D_ARGS --json "$OUT_DIR/first_step_3d.json"
# shellcheck disable=SC2086
stage layer_bench "$T_LBENCH" "$PYTHON" "$ROOT/benchmarks/benchmark_ratios.py" --device "$DEVICE" --skip network memory \
    $LAYER_ARGS --json "$OUT_DIR/layer_bench.json"
# shellcheck disable=SC2086
stage network "$T_NET" "$PYTHON" "$ROOT/benchmarks/benchmark_networks.py" --device "$DEVICE" --amp $NET_ARGS \
    --configs U-KAN_MLP U-KAN "ALL U-KAN" --skip-batch1 --json "$OUT_DIR/network.json"
# shellcheck disable=SC2086
stage ratios "$T_RATIO" "$PYTHON" "$ROOT/benchmarks/benchmark_ratios.py" --device "$DEVICE" --amp --skip layers memory \
    --time-target 1.5 --memory-target 1.3 $RATIO_ARGS --json "$OUT_DIR/ratios.json"

# nnU-Net: synthetic data, 2 epochs with nnU-Net's defaults for the device, predict the validation images.
epoch_times() {  # FOLD LABEL: the epoch times of a training log, the first one's compilation included
    "$PYTHON" - "$nnUNet_results" "$1" "$2" <<'PY'
import glob, re, sys
logs = sorted(glob.glob(f"{sys.argv[1]}/Dataset601_*/nnUNetTrainerAllUKAN_2epochs__*/fold_{sys.argv[2]}/training_log_*.txt"))
times = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", open(logs[-1]).read())] if logs else []
compiled = bool(logs) and "Using torch.compile" in open(logs[-1]).read()
why = ("torch.compile on: its compilation of the train and validation graphs, and the Triton kernels' first "
       "compilation" if compiled else "torch.compile off: the kernels' first compilation (Triton on CUDA), warm-up")
if len(times) >= 2:
    print(f"{sys.argv[3]}_EPOCH_SECONDS first {times[0]:.2f} second {times[1]:.2f}: the first epoch's excess "
          f"{times[0] - times[1]:.2f} s ({why})")
else:
    print(f"{sys.argv[3]}_EPOCH_SECONDS not found: {times}")
PY
}
export nnUNet_raw="$WORK/nnUNet_raw" nnUNet_preprocessed="$WORK/nnUNet_preprocessed" nnUNet_results="$WORK/nnUNet_results"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-4}" nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-4}"
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"
train_and_predict() {
    set -e
    "$PYTHON" - "$WORK/source" "$CASES" <<'PY'
import sys
from nnunet_allukan.synthetic import make_synthetic_busi
n = int(sys.argv[2])
make_synthetic_busi(sys.argv[1], n_benign=n - n // 3, n_malignant=n // 3, n_normal=2, seed=0)
PY
    nnUNetv2_convert_allukan_dataset busi "$WORK/source" -d 601 --size "$IMAGE_SIZE" --overwrite -np 2
    nnUNetv2_plan_and_preprocess -d 601 -c 2d -np 2
    local t0=$(date +%s)
    nnUNetv2_train 601 2d 0 -tr nnUNetTrainerAllUKAN_2epochs -device "$DEVICE"
    echo "TRAIN_SECONDS $(( $(date +%s) - t0 ))"
    local raw
    raw="$(ls -d "$nnUNet_raw"/Dataset601_*)"
    mkdir -p "$WORK/predict_in"
    # the validation cases of fold 0 (nnU-Net wrote them next to its validation predictions)
    for seg in "$nnUNet_results"/Dataset601_*/nnUNetTrainerAllUKAN_2epochs__*/fold_0/validation/*.png; do
        case_id="$(basename "$seg" .png)"
        cp "$raw/imagesTr/${case_id}_"*.png "$WORK/predict_in/"
    done
    t0=$(date +%s)
    nnUNetv2_predict -i "$WORK/predict_in" -o "$WORK/predict_out" -d 601 -c 2d -f 0 \
        -tr nnUNetTrainerAllUKAN_2epochs -device "$DEVICE"
    echo "PREDICT_SECONDS $(( $(date +%s) - t0 )) for $(ls "$WORK/predict_in" | wc -l) images (mirroring on)"
    grep -h "Epoch time\|Using torch.compile\|compile\|Pseudo dice\|WARNING" "$nnUNet_results"/Dataset601_*/nnUNetTrainerAllUKAN_2epochs__*/fold_0/training_log_*.txt || true
    epoch_times 0 TRAIN
}
export PYTHON WORK CASES IMAGE_SIZE DEVICE
# nnU-Net's defaults: nnUNet_compile unset (whole-network torch.compile on CUDA; the dry run sets it to f above)
stage train "$T_TRAIN" bash -c "$(declare -f train_and_predict epoch_times); train_and_predict"
train_eager() {  # the same training without nnU-Net's whole-network compile; uses train's preprocessed data
    set -e
    local t0=$(date +%s)
    nnUNet_compile=f nnUNetv2_train 601 2d 1 -tr nnUNetTrainerAllUKAN_2epochs -device "$DEVICE"
    echo "TRAIN_EAGER_SECONDS $(( $(date +%s) - t0 ))"
    grep -h "Epoch time\|compile\|WARNING" "$nnUNet_results"/Dataset601_*/nnUNetTrainerAllUKAN_2epochs__*/fold_1/training_log_*.txt || true
    epoch_times 1 TRAIN_EAGER
}
stage train_eager "$T_EAGER" bash -c "$(declare -f train_eager epoch_times); train_eager"

# ---- 3D: the 3D ALL U-KAN network, nnU-Net's 3D U-Net fully KA through nnU-Net's commands ---------------------
# shellcheck disable=SC2086
stage network_3d "$T_NET3D" "$PYTHON" "$ROOT/benchmarks/benchmark_networks.py" --device "$DEVICE" --amp --dims 3 \
    $NET3D_ARGS --channels 1 --configs U-KAN_MLP "ALL U-KAN" --skip-batch1 --json "$OUT_DIR/network_3d.json"

train_3d() {
    set -e
    "$PYTHON" - "$nnUNet_raw" "$ROOT/tests" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from e2e_datasets import write_sphere_dataset  # Dataset988_KASpheres3D: 8 training, 2 test volumes
write_sphere_dataset(Path(sys.argv[1]))
PY
    nnUNetv2_plan_and_preprocess -d 988 -c 3d_fullres -np 2 -npfp 2
    local t0=$(date +%s)
    nnUNetv2_train 988 3d_fullres 0 -tr nnUNetTrainerKAUNet_smoke -device "$DEVICE"
    echo "TRAIN3D_SECONDS $(( $(date +%s) - t0 ))"
    t0=$(date +%s)
    nnUNetv2_predict -i "$nnUNet_raw/Dataset988_KASpheres3D/imagesTs" -o "$WORK/predict3d_out" -d 988 \
        -c 3d_fullres -f 0 -tr nnUNetTrainerKAUNet_smoke -device "$DEVICE"
    echo "PREDICT3D_SECONDS $(( $(date +%s) - t0 )) for $(ls "$WORK/predict3d_out"/*.nii.gz | wc -l) volumes (mirroring on)"
    grep -h "Network:\|Epoch time\|torch.compile\|Pseudo dice\|Mean Validation Dice" \
        "$nnUNet_results"/Dataset988_*/nnUNetTrainerKAUNet_smoke__*/fold_0/training_log_*.txt || true
}
export ROOT
[ -n "$T_TRAIN3D" ] || T_TRAIN3D=$(( BUDGET - ($(date +%s) - START) ))
stage train_3d "$T_TRAIN3D" bash -c "$(declare -f train_3d); train_3d"
# ---- Several GPUs: nnU-Net's DDP (-num_gpus 2), outside the 480 s budget, only where two GPUs are visible ------
# Synthetic BUSI-like data (24 cases, 128x128, Dataset602) -> nnUNetv2_train -num_gpus 2 with
# nnUNetTrainerAllUKAN_2epochs (paper protocol: SyncBatchNorm, batch 8 = 4 + 4, the GPU memory estimate on rank 0)
# and nnUNetTrainerKAUNet_smoke (1 epoch of 10 iterations), nnU-Net's CUDA defaults but nnUNet_compile=f; each
# must leave one training log, checkpoint_final.pth and the validation summary. Limit 300 s.
train_ddp() {
    set -e
    "$PYTHON" - "$WORK/source_ddp" <<'PY'
import sys
from nnunet_allukan.synthetic import make_synthetic_busi
make_synthetic_busi(sys.argv[1], n_benign=16, n_malignant=8, n_normal=0, seed=2)
PY
    nnUNetv2_convert_allukan_dataset busi "$WORK/source_ddp" -d 602 --size 128 --overwrite -np 2
    nnUNetv2_plan_and_preprocess -d 602 -c 2d -np 2
    local trainer t0 fold
    for trainer in nnUNetTrainerAllUKAN_2epochs nnUNetTrainerKAUNet_smoke; do
        t0=$(date +%s)
        nnUNetv2_train 602 2d 0 -tr "$trainer" -num_gpus 2
        echo "DDP_SECONDS $trainer $(( $(date +%s) - t0 ))"
        fold="$(ls -d "$nnUNet_results"/Dataset602_*/"$trainer"__*/fold_0)"
        grep -h "GPU memory estimate\|Epoch time\|Training stopped\|torch.compile\|Mean Validation Dice" \
            "$fold"/training_log_*.txt || true
        [ "$(ls "$fold"/training_log_*.txt | wc -l)" = 1 ] && [ -f "$fold/checkpoint_final.pth" ] \
            && [ -f "$fold/validation/summary.json" ] || { echo "DDP_FAILED $trainer: log, checkpoint or summary"; exit 1; }
    done
}
GPUS=0
[ "$DEVICE" = cuda ] && GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -ge 2 ]; then
    nnUNet_compile=f stage ddp 300 bash -c "$(declare -f train_ddp); train_ddp"
elif [ -z "$ONLY" ] || [ "${ONLY#*,ddp,}" != "$ONLY" ]; then
    echo "=== ddp: SKIPPED, -num_gpus 2 needs two CUDA GPUs ($GPUS visible to torch)"
    printf 'ddp\tskipped\t0\n' >> "$STATUS"
fi
# -----------------------------------------------------------------------------------------------------------------

"$PYTHON" - "$OUT_DIR" "$DEVICE" "$DRY" <<'PY'
import json, sys
from pathlib import Path
out, device, dry = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines() if line]
summary = {"device": device, "dry_run": dry, "stages": {n: {"exit_code": int(rc) if rc.lstrip("-").isdigit() else rc,
                                                            "seconds": int(s)} for n, rc, s in stages}}
for name in ("layers", "first_step", "first_step_3d", "layer_bench", "network", "ratios", "network_3d"):
    f = out / f"{name}.json"
    if f.exists():
        summary[name] = json.loads(f.read_text())
for stage, keys in (("train", ("TRAIN_SECONDS", "TRAIN_EPOCH_SECONDS", "PREDICT_SECONDS")),
                   ("train_eager", ("TRAIN_EAGER_SECONDS", "TRAIN_EAGER_EPOCH_SECONDS")),
                   ("train_3d", ("TRAIN3D_SECONDS", "PREDICT3D_SECONDS"))):
    log = (out / f"{stage}.log").read_text() if (out / f"{stage}.log").exists() else ""
    for key in keys:
        for line in log.splitlines():
            if line.startswith(key):
                summary.setdefault("train", {})[key.lower()] = line
for name in ("gpu.txt", "versions.txt"):
    if (out / name).exists():
        summary[name[:-4]] = (out / name).read_text().strip()
(out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
md = [f"# gpu_check ({'dry run on CPU' if dry else device})", "", summary.get("gpu", ""), summary.get("versions", ""), "",
      "| stage | exit code | seconds |", "|---|---:|---:|"]
md += [f"| {n} | {v['exit_code']} | {v['seconds']} |" for n, v in summary["stages"].items()]
if "layers" in summary:
    md += ["", f"Layer checks on {device}: {'all passed' if summary['layers'].get('ok') else 'FAILED (see layers.json)'}"]
steps = [summary[n] for n in ("first_step", "first_step_3d") if n in summary]
if steps:
    md += ["", "## first training step of a fresh process (AMP on CUDA)", "",
           "| network | torch.compile | first step done | second step done |", "|---|---|---:|---:|"]
    md += [f"| ALL U-KAN {r['dims']}D, batch {r['batch']}, {r['size']}^{r['dims']} | {r.get('compiled', False)} | "
           f"{r['first_step_done_s']:.1f} s | {r['second_step_done_s']:.1f} s |" for r in steps]
for name in ("layer_bench", "ratios"):
    rows = summary.get(name, {}).get("rows", [])
    if rows:
        md += ["", f"## {name}", "", "| measurement | ratio | target |", "|---|---:|---:|"]
        md += [f"| {r['measurement']} | {r['ratio']:.2f} | {r['target'] if r['target'] is not None else '-'} |" for r in rows]
for name, title in (("network", "network (AMP)"), ("network_3d", "network 3D (AMP)")):
    net = summary.get(name, {}).get("train_step", {})
    if net:
        md += ["", f"## {title}", "", "| method | time/step | peak memory |", "|---|---:|---:|"]
        md += [f"| {n} | {r.get('time_s', float('nan')):.3f} s | {r.get('peak_bytes', 0) / 2**20:.0f} MiB |" for n, r in net.items()]
md += ["", "## train / predict", ""] + [f"- {v}" for v in summary.get("train", {}).values()]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
echo "=== done in $(( $(date +%s) - START )) s; results in $OUT_DIR (summary.md, summary.json, *.log)"
