"""``nnUNetv2_allukan_demo``: the whole ALL U-KAN job on a small synthetic BUSI-like dataset, on CPU.

No download: a synthetic dataset in BUSI's distributed layout (``Dataset_BUSI_with_GT/{benign,malignant,normal}``)
is written, then the project's and nnU-Net's own console commands run in order:

1. ``nnUNetv2_convert_allukan_dataset busi ... --size S``   (paper's split recorded in dataset.json)
2. ``nnUNetv2_plan_and_preprocess -d ID -c 2d --verify_dataset_integrity``
3. ``nnUNetv2_train ID 2d 0 -tr nnUNetTrainerAllUKAN_<N>epochs -device cpu``   (fold 0 = seed 2981)
4. ``nnUNetv2_predict`` on the held-out 20 % of fold 0
5. IoU / F1 (per image and the reference code's batch-pooled protocol) and an overlay PNG.

Everything lands in one output folder (default ``./allukan_demo``), printed at the end. The defaults
(120 images of 64 x 64, 100 short epochs = 1200 steps of ALL U-KAN) are sized for a 2-core CPU (its time:
docs/performance.md); the scores of such a short run say that the pipeline works, not what ALL U-KAN reaches
with the paper's 400 epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nnunet_allukan.filesystem import OverwriteRefused, mark_output_folder, remove_output_folder
from nnunet_allukan.paper import DIVISOR
from nnunet_allukan.openmp import CPU_SPIN_COUNT, wait_policy_set

COMMAND = "nnUNetv2_allukan_demo"

DEMO_DATASET_ID = 701
# 96 training images = 12 steps per epoch, 1200 steps in all: with half as many steps the predicted masks stay
# about a pixel too large and the held-out IoU well below what the synthetic lesions allow.
DEMO_TRAINER = "nnUNetTrainerAllUKAN_100epochs"
DEMO_BENIGN, DEMO_MALIGNANT = 80, 40
DEMO_FOLD = 0
OVERLAY_CASES = 4
GROUND_TRUTH_RGB = (40, 220, 60)
PREDICTION_RGB = (235, 40, 40)
# The overlay's legend: a white strip above the panels naming each one, with a swatch of its colour.
LEGEND = (("image", None), ("ground truth", GROUND_TRUTH_RGB), ("prediction", PREDICTION_RGB))
LEGEND_HEIGHT, SWATCH = 28, 12
# What the demo writes into its output folder: --overwrite removes the folder only if it holds nothing else.
LOGS, SOURCE, HELD_OUT, PREDICTIONS = "logs", "synthetic_source", "held_out_images", "predictions"
RESULTS_JSON, OVERLAY_PNG = "demo_results.json", "overlay.png"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
OUTPUT_CONTENTS = (LOGS, SOURCE, HELD_OUT, PREDICTIONS, RESULTS_JSON, OVERLAY_PNG) + NNUNET_FOLDERS


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and where its output is."""


def console_command(name: str) -> str:
    """The console script next to this Python (the venv's bin/), else whatever is on PATH."""
    candidate = Path(sys.executable).with_name(name)
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DemoError(f"console command {name} not found next to {sys.executable} or on PATH: is nnunet-allukan "
                        "installed in this environment (bash scripts/setup_env.sh)?")
    return found


def run_step(step: str, args: list[str], env: dict, log_folder: Path) -> None:
    """Runs a console command, showing its output live and keeping a copy in ``log_folder/<step>.log``."""
    log_file = log_folder / f"{step}.log"
    print(f"\n[demo] $ {' '.join(args)}", flush=True)
    start = time.time()
    with open(log_file, "w") as log:
        process = subprocess.Popen([console_command(args[0])] + args[1:], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
        returncode = process.wait()
    if returncode != 0:
        raise DemoError(f"step '{step}' failed (exit code {returncode}); its full output is in {log_file}")
    print(f"[demo] {step} done in {time.time() - start:.0f} s", flush=True)


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def overlay(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, scale: int) -> np.ndarray:
    """Three panels [H*scale, 3*W*scale, 3]: image | ground truth (green) | prediction (red)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = image[..., :3].astype(np.float32)

    def tint(mask: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
        out = image.copy()
        out[mask] = 0.45 * out[mask] + 0.55 * np.asarray(rgb, dtype=np.float32)
        return out

    panels = np.concatenate([image, tint(reference, GROUND_TRUTH_RGB), tint(prediction, PREDICTION_RGB)], axis=1)
    panels = np.clip(panels, 0, 255).astype(np.uint8)
    return np.kron(panels, np.ones((scale, scale, 1), dtype=np.uint8))


def legend_strip(panel_width: int) -> np.ndarray:
    """[LEGEND_HEIGHT, 3 * panel_width, 3]: each panel's name over it, the tinted ones after a swatch of the tint."""
    strip = Image.new("RGB", (len(LEGEND) * panel_width, LEGEND_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    top = (LEGEND_HEIGHT - SWATCH) // 2
    for column, (label, rgb) in enumerate(LEGEND):
        left = column * panel_width + 6
        if rgb is not None:
            draw.rectangle([left, top, left + SWATCH - 1, top + SWATCH - 1], fill=rgb)
            left += SWATCH + 5
        draw.text((left, top), label, fill="black")
    return np.asarray(strip)


def write_overlay_png(cases: list[str], images: Path, labels: Path, predictions: Path, output_png: Path) -> None:
    """One row of :func:`overlay` panels per case, under a legend strip."""
    rows = []
    for case in cases:
        image = np.asarray(Image.open(images / f"{case}_0000.png"))
        rows.append(overlay(image, read_mask(labels / f"{case}.png"), read_mask(predictions / f"{case}.png"),
                            scale=max(1, 192 // image.shape[0])))
    legend = legend_strip(rows[0].shape[1] // len(LEGEND))
    Image.fromarray(np.concatenate([legend] + rows, axis=0)).save(output_png)


def score_predictions(cases: list[str], labels: Path, predictions: Path) -> dict:
    """IoU / F1 per image (mean) and under the reference code's protocol (pooled over batches of 8)."""
    from nnunet_allukan.evaluation.metrics import (case_counts, per_image_scores, reference_batches,
                                                   reference_scores)

    counts = {c: case_counts(read_mask(predictions / f"{c}.png"), read_mask(labels / f"{c}.png"), c) for c in cases}
    per_image = per_image_scores([counts[c] for c in cases])
    reference = reference_scores(reference_batches(cases, counts))
    return {"cases": len(cases), "per_image": {"IoU": per_image.iou, "F1": per_image.f1},
            "reference_batch_pooled": {"IoU": reference.iou, "F1": reference.f1},
            "per_case": {c: {"IoU": counts[c].iou, "F1": counts[c].f1} for c in cases}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Synthetic BUSI-like data -> conversion -> nnU-Net planning/preprocessing -> short ALL U-KAN "
                    "training on CPU -> prediction of the held-out cases -> IoU/F1 and an overlay PNG.")
    parser.add_argument("-o", "--output_folder", type=Path, default=Path("allukan_demo"),
                        help="everything is written here (default: ./allukan_demo)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output of an earlier run of this command in the output folder (a folder "
                             "it did not make, or that holds other files, is never removed)")
    parser.add_argument("--benign", type=int, default=DEMO_BENIGN,
                        help=f"synthetic benign cases (default {DEMO_BENIGN})")
    parser.add_argument("--malignant", type=int, default=DEMO_MALIGNANT,
                        help=f"synthetic malignant cases (default {DEMO_MALIGNANT})")
    parser.add_argument("--size", type=int, default=64,
                        help="image side after conversion, a multiple of 32 (default 64; the paper uses 256)")
    parser.add_argument("-tr", "--trainer", default=DEMO_TRAINER,
                        help=f"trainer (default {DEMO_TRAINER}; nnUNetTrainerAllUKAN is the paper's 400 epochs)")
    parser.add_argument("-device", default="cpu", help="cpu (default), cuda or mps, passed to nnU-Net")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        output = run_demo(args)
    except (DemoError, OverwriteRefused, ValueError) as e:
        print(f"\n{COMMAND}: error: {e}", file=sys.stderr)
        return 1
    print(f"\n[demo] output folder: {output}")
    return 0


def run_demo(args: argparse.Namespace) -> Path:
    from nnunet_allukan.synthetic import make_synthetic_busi

    if args.size < DIVISOR or args.size % DIVISOR:
        raise ValueError(f"--size must be a positive multiple of {DIVISOR} (five 2x down-samplings), got {args.size}")
    if args.benign + args.malignant < 10:
        raise ValueError("need at least 10 benign + malignant cases for an 80/20 split with a useful held-out set")
    output = args.output_folder.resolve()
    if output.exists() and not output.is_dir():
        raise DemoError(f"output folder {output} is a file: choose another folder with -o")
    if output.exists() and any(output.iterdir()):
        if not args.overwrite:
            raise DemoError(f"output folder {output} exists and is not empty; pass --overwrite (replaces only the "
                            f"output of an earlier {COMMAND}) or choose another folder with -o")
        remove_output_folder(output, COMMAND, OUTPUT_CONTENTS, "choose another folder with -o")
    output.mkdir(parents=True, exist_ok=True)
    mark_output_folder(output, COMMAND)
    logs = output / LOGS
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_compile"}  # compile slows CPU runs down
    env["PYTHONUNBUFFERED"] = "1"  # the steps' progress is shown line by line
    for name in NNUNET_FOLDERS:
        (output / name).mkdir()
        env[name] = str(output / name)
    env.setdefault("nnUNet_def_n_proc", str(min(4, os.cpu_count() or 1)))
    if args.device == "cpu" and not wait_policy_set(env):
        env["GOMP_SPINCOUNT"] = CPU_SPIN_COUNT  # spinning OpenMP threads lose speed beside the demo's other work
    # Training: augmentation in the training process (tiny images: workers cost more than they save).
    # Not for planning: nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0.
    train_env = env | {"nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "0")}
    dataset_id = str(DEMO_DATASET_ID)
    started = time.time()

    print(f"[demo 1/6] writing a synthetic BUSI-like dataset ({args.benign} benign, {args.malignant} malignant, "
          f"2 normal) in the distributed layout", flush=True)
    source = make_synthetic_busi(output / SOURCE, n_benign=args.benign, n_malignant=args.malignant,
                                 n_normal=2, seed=0)
    print(f"[demo] written to {source}")

    print("\n[demo 2/6] converting it to an nnU-Net raw dataset", flush=True)
    run_step("convert", ["nnUNetv2_convert_allukan_dataset", "busi", str(source), "-d", dataset_id,
                         "--size", str(args.size), "-np", env["nnUNet_def_n_proc"]], env, logs)
    raw = next((output / "nnUNet_raw").glob(f"Dataset{dataset_id}_*"))

    print("\n[demo 3/6] nnU-Net planning and preprocessing", flush=True)
    run_step("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "2d",
                                     "--verify_dataset_integrity", "-np", env["nnUNet_def_n_proc"],
                                     "-npfp", env["nnUNet_def_n_proc"]],
             env | {"nnUNet_n_proc_DA": env["nnUNet_def_n_proc"]}, logs)

    print(f"\n[demo 4/6] training {args.trainer}, fold {DEMO_FOLD} (the paper's seed-2981 split)", flush=True)
    run_step("train", ["nnUNetv2_train", dataset_id, "2d", str(DEMO_FOLD), "-tr", args.trainer,
                       "-device", args.device], train_env, logs)

    print("\n[demo 5/6] predicting the held-out cases with nnUNetv2_predict", flush=True)
    splits = json.loads((output / "nnUNet_preprocessed" / raw.name / "splits_allukan_paper.json").read_text())
    held_out = list(splits[DEMO_FOLD]["val"])
    held_out_images = output / HELD_OUT
    held_out_images.mkdir()
    for case in held_out:
        shutil.copy(raw / "imagesTr" / f"{case}_0000.png", held_out_images)
    predictions = output / PREDICTIONS
    run_step("predict", ["nnUNetv2_predict", "-i", str(held_out_images), "-o", str(predictions), "-d", dataset_id,
                         "-c", "2d", "-f", str(DEMO_FOLD), "-tr", args.trainer, "-device", args.device,
                         "-npp", "1", "-nps", "1"], env, logs)

    print("\n[demo 6/6] scoring and overlay", flush=True)
    scores = score_predictions(held_out, raw / "labelsTr", predictions)
    scores.update(trainer=args.trainer, fold=DEMO_FOLD, image_size=args.size,
                  minutes=round((time.time() - started) / 60, 1))
    (output / RESULTS_JSON).write_text(json.dumps(scores, indent=1))
    overlay_png = output / OVERLAY_PNG
    write_overlay_png(held_out[:OVERLAY_CASES], held_out_images, raw / "labelsTr", predictions, overlay_png)
    print(f"[demo] {len(held_out)} held-out cases, {args.trainer}:")
    print(f"[demo]   per image (mean):             IoU {100 * scores['per_image']['IoU']:.2f} %  "
          f"F1 {100 * scores['per_image']['F1']:.2f} %")
    print(f"[demo]   reference protocol (batch 8): IoU {100 * scores['reference_batch_pooled']['IoU']:.2f} %  "
          f"F1 {100 * scores['reference_batch_pooled']['F1']:.2f} %")
    print(f"[demo] scores: {output / RESULTS_JSON}")
    print(f"[demo] overlay (image | ground truth green | prediction red): {overlay_png}")
    print(f"[demo] trained model: {output / 'nnUNet_results' / raw.name}")
    print(f"[demo] total {scores['minutes']} min")
    return output


if __name__ == "__main__":
    sys.exit(main())
