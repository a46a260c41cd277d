"""Inference wall time: ``nnUNetv2_predict`` of the same cases with an ALL U-KAN and a U-KAN_MLP model, as a ratio.

    python benchmarks/benchmark_inference.py                 # 20 cases at 256x256, CPU, mirroring on (nnU-Net's default)
    python benchmarks/benchmark_inference.py --device cuda --rounds 3

A synthetic BUSI-like dataset is converted (256x256) and planned in ``--work`` (kept between runs), both models are
trained for one short epoch (``nnUNetTrainer*_1epoch``; the weights do not matter for the time), then
``nnUNetv2_predict`` runs on the same ``--cases`` images: one untimed warm-up per model (lazy initialisation, the
compiled basis kernels' disk cache), then ``--rounds`` interleaved timed rounds (U-KAN_MLP, ALL U-KAN, ...). The
ratio of the median wall times is printed and written as JSON. Everything runs as the console commands a user runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = {"U-KAN_MLP": "nnUNetTrainerUKAN_MLP_1epoch", "ALL U-KAN": "nnUNetTrainerAllUKAN_1epoch"}
DATASET_ID = 611


def command(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def run(args: list[str], env: dict, log: Path) -> float:
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(args)}\n")
        f.flush()
        res = subprocess.run([command(args[0])] + args[1:], env=env, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed (exit code {res.returncode}); see {log}")
    return time.perf_counter() - t


def prepare(a: argparse.Namespace, env: dict, log: Path) -> Path:
    """Dataset, plans and both 1-epoch models (skipped when already there); returns the prediction input folder."""
    raw = Path(env["nnUNet_raw"])
    if not list(raw.glob(f"Dataset{DATASET_ID}_*")):
        sys.path.insert(0, str(ROOT))
        from nnunet_allukan.synthetic import make_synthetic_busi
        n = a.cases + a.extra_training_cases
        make_synthetic_busi(Path(a.work) / "source", n_benign=n - n // 3, n_malignant=n // 3, n_normal=1, seed=0,
                            sizes=((500, 450), (560, 470), (470, 500), (520, 520)))
        run(["nnUNetv2_convert_allukan_dataset", "busi", str(Path(a.work) / "source"), "-d", str(DATASET_ID),
             "--size", str(a.size), "--overwrite", "-np", "2"], env, log)
        run(["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np", "2"], env, log)
    results = Path(env["nnUNet_results"])
    for trainer in TRAINERS.values():
        if not list(results.glob(f"Dataset{DATASET_ID}_*/{trainer}__*/fold_0/checkpoint_final.pth")):
            run(["nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", a.device], env, log)
    images = sorted(next(raw.glob(f"Dataset{DATASET_ID}_*")).glob("imagesTr/*"))[: a.cases]
    folder = Path(a.work) / "predict_in"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for image in images:
        shutil.copy(image, folder / image.name)
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "allukan_inference_benchmark"))
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--extra-training-cases", type=int, default=10, help="cases beyond --cases in the dataset")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--disable-tta", action="store_true", help="mirroring off (default: on, nnU-Net's default)")
    p.add_argument("--json", type=Path, default=Path("benchmark_results/inference_benchmark.json"))
    a = p.parse_args()
    work = Path(a.work)
    env = dict(os.environ, nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1",
               nnUNet_compile="f",
               # this checkout's layers even where nnunet-allukan is installed non-editable (pip install .)
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    log = work / "benchmark_inference.log"
    print(f"preparing data and models in {work} (log: {log}) ...", flush=True)
    inputs = prepare(a, env, log)

    def predict(name: str) -> float:
        out = work / f"predict_out_{TRAINERS[name]}"
        shutil.rmtree(out, ignore_errors=True)
        args = ["nnUNetv2_predict", "-i", str(inputs), "-o", str(out), "-d", str(DATASET_ID), "-c", "2d", "-f", "0",
                "-tr", TRAINERS[name], "-device", a.device, "-npp", "1", "-nps", "1"]
        return run(args + (["--disable_tta"] if a.disable_tta else []), env, log)

    for name in TRAINERS:  # warm-up
        predict(name)
    times = {name: [] for name in TRAINERS}
    for r in range(a.rounds):
        for name in TRAINERS:
            times[name].append(predict(name))
            print(f"  round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = med["ALL U-KAN"] / med["U-KAN_MLP"]
    print(f"\nnnUNetv2_predict, {a.cases} cases {a.size}x{a.size}, {a.device}, mirroring "
          f"{'off' if a.disable_tta else 'on'}: U-KAN_MLP {med['U-KAN_MLP']:.1f} s, ALL U-KAN {med['ALL U-KAN']:.1f} s, "
          f"ratio {ratio:.2f} (target <= 1.8)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"cases": a.cases, "size": a.size, "device": a.device,
                                      "mirroring": not a.disable_tta, "rounds_s": times, "median_s": med,
                                      "ratio": ratio}, indent=2))
        print(f"written to {a.json.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
