"""Conversion of full-size synthetic datasets: case counts with realistic mask artifacts, and the time of this
working tree's converter over that of an earlier commit, as a ratio.

    python benchmarks/benchmark_conversion.py                       # CVC 612, BUSI 647 (+133 normal), GlaS 165
    python benchmarks/benchmark_conversion.py --datasets cvc --rounds 3 --base cfe65b4

Synthetic sources in the real layouts and sizes are written to ``--work`` (kept between runs):

- with mask artifacts (``mask_artifacts=True``): CVC-ClinicDB as TIF and as PNG (384x288; faint strips of one
  level in ~30 masks, faint patches of one level on ~5 % of the frame in ~30, faint halos, soft edges), BUSI re-encoded at 224x224 (every mask a 3-channel JPEG round
  trip, stray mid-grey pixels in a quarter of them). Each is converted by this tree and the counts printed;
- without them (masks the earlier converter accepts), CVC (TIF), BUSI and GlaS (775x522): converted by the
  earlier commit (``git archive`` of ``--base`` into ``--work``) and by this tree, alternately, ``--rounds``
  times, each as the console command a user runs (``python -m dataset_conversion.cli``, default size).
  The median wall times and their ratio (this tree / base) are printed and written to ``--work``/timing.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnunet_allukan.synthetic import make_synthetic_busi, make_synthetic_cvc, make_synthetic_glas  # noqa: E402

EXPECTED_CASES = {"cvc": 612, "busi": 647, "glas": 165}


def make_sources(work: Path, artifacts: bool) -> dict[str, Path]:
    """The full-size sources, written once into ``work``."""
    kind = "artifacts" if artifacts else "plain"
    sources = {}
    for image_format in (("tif", "png") if artifacts else ("tif",)):
        folder = work / kind / f"cvc_{image_format}"
        if not folder.is_dir():
            make_synthetic_cvc(folder, n_cases=612, image_format=image_format, size=(384, 288),
                               mask_artifacts=artifacts)
        sources[f"cvc_{image_format}"] = folder
    folder = work / kind / "busi"
    if not folder.is_dir():
        make_synthetic_busi(folder, n_benign=437, n_malignant=210, n_normal=133, sizes=((224, 224),),
                            mask_artifacts=artifacts)
    sources["busi"] = folder
    if not artifacts:
        folder = work / kind / "glas"
        if not folder.is_dir():
            make_synthetic_glas(folder, n_train=85, n_test_a=60, n_test_b=20, sizes=((775, 522),))
        sources["glas"] = folder
    return sources


def converter(tree: Path, dataset: str, source: Path, raw: Path, processes: int) -> float:
    """Wall time of one conversion by the converter in ``tree``."""
    shutil.rmtree(raw, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "nnUNet_raw": str(raw)}
    env.pop("nnUNet_preprocessed", None)
    env.pop("nnUNet_results", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dataset_conversion.cli", dataset, str(source), "-np", str(processes)],
                          cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"conversion of {source} by {tree} failed:\n{done.stderr[-3000:]}")
    return elapsed


def base_tree(work: Path, commit: str) -> Path:
    """The converter (and the nnunet_allukan modules it imports) as of ``commit``."""
    tree = work / f"base_{commit}"
    if not tree.is_dir():
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "dataset_conversion", "nnunet_allukan"],
                                 cwd=ROOT, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    return tree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/benchmark_conversion", help="sources, converted datasets, results")
    parser.add_argument("--datasets", nargs="+", default=["cvc", "busi", "glas"], choices=["cvc", "busi", "glas"])
    parser.add_argument("--base", default="cfe65b4", help="commit whose converter is the reference for the time")
    parser.add_argument("--rounds", type=int, default=2, help="timed conversions per converter and dataset")
    parser.add_argument("-np", dest="processes", type=int, default=1, help="-np of the conversions")
    a = parser.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    from dataset_conversion.cli import convert_dataset

    failures = []
    print("Case counts with mask artifacts (this tree):")
    for name, source in make_sources(work, artifacts=True).items():
        dataset = name.split("_")[0]
        if dataset not in a.datasets:
            continue
        result = convert_dataset(dataset, source, raw_folder=work / "raw_counts", overwrite=True,
                                 num_processes=a.processes)
        s = result.summary
        print(f"  {name}: {s['cases_written']} cases ({s['excluded']} excluded), {s['masks_read']} masks, "
              f"{s['masks_soft_edged']} not exactly binary, {s['pixels_changed_class']} pixels changed class, "
              f"{s['masks_with_large_dropped_level']} with a level below 128 on more than 1 %")
        if s["cases_written"] != EXPECTED_CASES[dataset]:
            failures.append(f"{name}: {s['cases_written']} cases, expected {EXPECTED_CASES[dataset]}")

    base = base_tree(work, a.base)
    timing = {}
    for name, source in make_sources(work, artifacts=False).items():
        dataset = name.split("_")[0]
        if dataset not in a.datasets:
            continue
        times: dict[str, list[float]] = {"base": [], "this": []}
        for _ in range(a.rounds):
            times["base"].append(converter(base, dataset, source, work / "raw_time", a.processes))
            times["this"].append(converter(ROOT, dataset, source, work / "raw_time", a.processes))
        medians = {k: statistics.median(v) for k, v in times.items()}
        timing[name] = {"seconds": times, "ratio": medians["this"] / medians["base"]}
        print(f"Time {name} ({a.rounds} rounds, median): {a.base} {medians['base']:.1f} s, this tree "
              f"{medians['this']:.1f} s, ratio {timing[name]['ratio']:.2f}")
    (work / "timing.json").write_text(json.dumps({"base": a.base, "processes": a.processes, "timing": timing},
                                                 indent=2))
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
