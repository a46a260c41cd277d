"""Learning at an equal budget: trains several trainers on one dataset with nnU-Net's own commands and prints
their validation Dice side by side, with the per-epoch curves as a plot.

    python benchmarks/benchmark_learning.py -d 601 -c 2d -f 0 -tr nnUNetTrainer nnUNetTrainerKAUNet \\
        --epochs 10 --iterations 62 --batch 8 -o learning_601 -device cpu
    python benchmarks/benchmark_learning.py -d 601 -tr nnUNetTrainerKAUNet \\
        nnUNetTrainerKAUNet:spline_gradient_scaling=False --epochs 10 --iterations 62 --batch 8 -o off -device cpu

Every trainer runs ``nnUNetv2_train`` on the dataset already planned and preprocessed in ``nnUNet_preprocessed``,
with the same budget: ``--epochs`` epochs of ``--iterations`` training iterations, ``--batch`` cases per
iteration (default: the plans' batch size), ``--val-iterations`` validation iterations per epoch. The budget is
applied by a subclass of each trainer (``<trainer>__budget``) that a child process hands to nnU-Net's own
``nnUNetv2_train`` entry point. ``NAME:attribute=value,...`` also sets class attributes of the trainer (values
as Python literals; each must be an attribute the trainer has), reported as ``NAME__attribute-value``; everything
else (loss, optimiser, schedule, augmentation, deep supervision, the final sliding-window validation) is the
trainer's own. The paper-protocol trainers keep the paper's batch size 8 whatever ``--batch`` says; each log states
the budget it ran (``Benchmark budget: ...``). The models go to ``OUTPUT/results`` (the user's ``nnUNet_results``
is not touched), the logs to ``OUTPUT/logs``, and at the end

- the table (also ``OUTPUT/learning_summary.json``): nnU-Net's validation Dice of the fold (mean over the
  foreground classes of ``validation/summary.json``), the last epoch's pseudo-Dice, the mean epoch time;
- ``OUTPUT/learning_curves.png``: pseudo-Dice and training loss per epoch for each trainer.

nnU-Net seeds nothing, so two runs of the same trainer differ by a few Dice points at short budgets (up to 5 on
the reduced BUSI at 10 x 25 iterations): ``--repeats N`` trains every trainer N times, in rounds (each round runs
every trainer once, so a drifting machine hits all alike), into ``OUTPUT/results/runK`` with logs
``OUTPUT/logs/<trainer>_runK.log``; the table then gives each trainer's mean validation Dice, every run's, and
the difference of the means to the first trainer's, and the plot the mean curves.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy
from nnunet_allukan.filesystem import (OverwriteRefused, check_replaceable, mark_output_folder,  # noqa: E402
                                       remove_output_folder)

BUDGET_SUFFIX = "__budget"
COMMAND = "benchmark_learning.py"
# What this script writes into -o: --overwrite removes the folder only if it holds nothing else.
OUTPUT_CONTENTS = ("logs", "results", "learning_summary.json", "learning_curves.png")

# Runs nnU-Net's own nnUNetv2_train entry point in a child process, with the trainer it is given replaced by a
# subclass that applies the budget. The child resolves every other trainer name as nnU-Net does.
_RUNNER = """
import copy, json, sys
import torch
from nnunetv2.run import run_training
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

budget, base_name, label = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
base = recursive_find_trainer_class_by_name(base_name)


class Budget(base):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if budget["batch"] is not None:
            plans = copy.deepcopy(plans)
            plans["configurations"][configuration]["batch_size"] = budget["batch"]
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = budget["epochs"]
        self.num_iterations_per_epoch = budget["iterations"]
        self.num_val_iterations_per_epoch = budget["val_iterations"]

    def initialize(self):
        super().initialize()
        # Again: the paper-protocol trainers derive their iterations from the split in initialize.
        self.num_iterations_per_epoch = budget["iterations"]
        self.num_val_iterations_per_epoch = budget["val_iterations"]
        self.print_to_log_file(
            f"Benchmark budget: {self.num_epochs} epochs of {self.num_iterations_per_epoch} training / "
            f"{self.num_val_iterations_per_epoch} validation iterations, batch size "
            f"{self.configuration_manager.batch_size}")


for attribute, value in budget["attributes"].items():
    if not hasattr(base, attribute):
        raise SystemExit(f"ERROR: {base_name} has no attribute {attribute!r} to set.")
    setattr(Budget, attribute, value)
Budget.__name__ = Budget.__qualname__ = label + BUDGET_SUFFIX
run_training.recursive_find_trainer_class_by_name = (
    lambda name: Budget if name == Budget.__name__ else recursive_find_trainer_class_by_name(name))
sys.argv = ["nnUNetv2_train"] + sys.argv[4:]
run_training.run_training_entry()
""".replace("BUDGET_SUFFIX", repr(BUDGET_SUFFIX))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", dest="dataset", required=True, help="dataset name or id (planned and preprocessed)")
    p.add_argument("-c", dest="configuration", default="2d", help="configuration (default: 2d)")
    p.add_argument("-f", dest="fold", default="0", help="fold (default: 0)")
    p.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    p.add_argument("-tr", dest="trainers", nargs="+", required=True,
                   help="two or more trainer class names, each optionally NAME:attribute=value,... (class attributes "
                        "set for this run)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--iterations", type=int, required=True, help="training iterations per epoch")
    p.add_argument("--val-iterations", type=int, default=None,
                   help="validation iterations per epoch (default: max(1, iterations // 5))")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the plans')")
    p.add_argument("--repeats", type=int, default=1, help="runs of every trainer, in rounds (default 1)")
    p.add_argument("-o", dest="output", required=True, help="output folder (results, logs, table, plot)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"), help="as nnUNetv2_train's -device")
    return p


def parse_trainer(spec: str) -> tuple[str, dict, str]:
    """``NAME`` or ``NAME:attribute=value,...`` -> (trainer class name, attributes, label of the run)."""
    name, _, assignments = spec.partition(":")
    attributes = {}
    for assignment in filter(None, assignments.split(",")):
        attribute, equals, text = assignment.partition("=")
        if not equals or not attribute.isidentifier():
            raise SystemExit(f"ERROR: -tr {spec}: expected NAME:attribute=value,..., got {assignment!r}.")
        try:
            attributes[attribute] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SystemExit(f"ERROR: -tr {spec}: {text!r} is not a Python literal (True, 0.5, 'text', ...).") from None
    label = name + "".join(f"__{k}-{v}" for k, v in attributes.items())
    if not name.isidentifier() or not all(c.isalnum() or c in "_-." for c in label):
        raise SystemExit(f"ERROR: -tr {spec}: use a trainer class name and simple values (letters, digits, . - _).")
    return name, attributes, label


def check_args(args: argparse.Namespace) -> None:
    if len({parse_trainer(spec)[2] for spec in args.trainers}) < 2:
        raise SystemExit("ERROR: give two or more different trainers to compare (-tr A B ...).")
    for name in ("epochs", "iterations", "val_iterations", "batch", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"ERROR: --{name.replace('_', '-')} must be at least 1, got {value}.")
    output = Path(args.output)
    if output.exists() and any(output.iterdir()):
        if not args.overwrite:
            raise SystemExit(f"ERROR: {output} exists and is not empty. Choose another -o or pass --overwrite "
                             "(replaces only the output of an earlier run of this script).")
        try:
            check_replaceable(output, COMMAND, OUTPUT_CONTENTS, "choose another -o")
        except OverwriteRefused as refused:
            raise SystemExit(f"ERROR: {refused}") from None
    if not os.environ.get("nnUNet_preprocessed"):
        raise SystemExit("ERROR: nnUNet_preprocessed is not set: plan and preprocess the dataset first "
                         "(nnUNetv2_plan_and_preprocess -d DATASET -c CONFIGURATION).")


def run_training(args: argparse.Namespace, spec: str, budget: dict, env: dict, log_path: Path) -> int:
    name, attributes, trainer = parse_trainer(spec)
    train_args = [str(args.dataset), args.configuration, str(args.fold), "-tr", trainer + BUDGET_SUFFIX,
                  "-p", args.plans, "-device", args.device]
    command = [sys.executable, "-c", _RUNNER, json.dumps(dict(budget, attributes=attributes)), name, trainer,
               *train_args]
    print(f"[{trainer}] nnUNetv2_train {' '.join(train_args)}  (log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if any(key in line for key in (": Epoch ", "Pseudo dice", "Mean Validation Dice", "Traceback")):
                print(f"[{trainer}] {line.rstrip()}", flush=True)
        return process.wait()


def read_results(fold_folder: Path) -> dict:
    """nnU-Net's validation Dice (summary.json) and the per-epoch logging of the final checkpoint."""
    import torch

    summary = json.loads((fold_folder / "validation" / "summary.json").read_text())
    checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = checkpoint["logging"]
    epoch_times = [end - start for start, end in
                   zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    return {"validation_dice": summary["foreground_mean"]["Dice"],
            "pseudo_dice": [float(x) for x in logging["mean_fg_dice"]],
            "train_loss": [float(x) for x in logging["train_losses"]],
            "mean_epoch_seconds": statistics.mean(epoch_times) if epoch_times else float("nan")}


def combine_runs(trainer_runs: list[dict]) -> dict:
    """One trainer's runs -> their means (validation Dice, per-epoch curves, epoch time) and the runs themselves."""
    combined = {key: statistics.mean(run[key] for run in trainer_runs)
                for key in ("validation_dice", "mean_epoch_seconds")}
    for key in ("pseudo_dice", "train_loss"):
        combined[key] = [statistics.mean(values) for values in zip(*(run[key] for run in trainer_runs))]
    combined["runs"] = trainer_runs
    return combined


def plot_curves(results: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_dice, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for trainer, result in results.items():
        epochs = range(1, len(result["pseudo_dice"]) + 1)
        ax_dice.plot(epochs, result["pseudo_dice"], marker="o", label=trainer)
        ax_loss.plot(epochs, result["train_loss"], marker="o", label=trainer)
    ax_dice.set(xlabel="epoch", ylabel="pseudo-Dice (nnU-Net, validation patches)")
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    ax_dice.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_args(args)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    dataset_name = maybe_convert_to_dataset_name(args.dataset)
    budget = {"epochs": args.epochs, "iterations": args.iterations, "batch": args.batch,
              "val_iterations": args.val_iterations or max(1, args.iterations // 5)}
    output = Path(args.output).resolve()
    if output.exists() and any(output.iterdir()):
        remove_output_folder(output, COMMAND, OUTPUT_CONTENTS, "choose another -o")
    output.mkdir(parents=True, exist_ok=True)
    mark_output_folder(output, COMMAND)
    (output / "logs").mkdir()

    runs: dict[str, list[dict]] = {parse_trainer(spec)[2]: [] for spec in args.trainers}
    failed: list[str] = []
    for repeat in range(1, args.repeats + 1):
        suffix = f"_run{repeat}" if args.repeats > 1 else ""
        results_folder = output / "results" / (f"run{repeat}" if args.repeats > 1 else "")
        env = dict(os.environ, nnUNet_results=str(results_folder))
        for spec in args.trainers:
            trainer = parse_trainer(spec)[2]
            if trainer in failed:
                continue
            log_path = output / "logs" / f"{trainer}{suffix}.log"
            code = run_training(args, spec, budget, env, log_path)
            fold_folder = (results_folder / dataset_name /
                           f"{trainer}{BUDGET_SUFFIX}__{args.plans}__{args.configuration}" / f"fold_{args.fold}")
            if code != 0 or not (fold_folder / "validation" / "summary.json").is_file():
                print(f"[{trainer}] FAILED (exit {code}); see {log_path}", file=sys.stderr)
                failed.append(trainer)
                continue
            runs[trainer].append(read_results(fold_folder))
    results = {trainer: combine_runs(trainer_runs) for trainer, trainer_runs in runs.items()
               if trainer not in failed}

    title = (f"{dataset_name} {args.configuration} fold {args.fold}: {budget['epochs']} epochs x "
             f"{budget['iterations']} iterations, batch {args.batch or 'from plans'}"
             + (f", {args.repeats} runs each (means)" if args.repeats > 1 else ""))
    summary = {"dataset": dataset_name, "configuration": args.configuration, "fold": args.fold,
               "plans": args.plans, "budget": budget, "repeats": args.repeats, "results": results,
               "failed": failed}
    (output / "learning_summary.json").write_text(json.dumps(summary, indent=2))
    if results:
        plot_curves(results, output / "learning_curves.png", title)

    print(f"\n{title}")
    width = max([40] + [len(t) for t in list(results) + failed])
    first = next(iter(results.values()), None)
    print(f"{'trainer':<{width}} {'val Dice':>9} {'vs first':>9} {'last pseudo-Dice':>17} {'s/epoch':>8}"
          + ("  val Dice of each run" if args.repeats > 1 else ""))
    for trainer, result in results.items():
        last = result["pseudo_dice"][-1] if result["pseudo_dice"] else float("nan")
        each = "  " + " ".join(f"{r['validation_dice']:.4f}" for r in result["runs"]) if args.repeats > 1 else ""
        print(f"{trainer:<{width}} {result['validation_dice']:>9.4f} "
              f"{result['validation_dice'] - first['validation_dice']:>+9.4f} {last:>17.4f} "
              f"{result['mean_epoch_seconds']:>8.1f}{each}")
    for trainer in failed:
        print(f"{trainer:<{width}} {'failed':>9}")
    print(f"\nWrote: {output / 'learning_summary.json'}" +
          (f"\n       {output / 'learning_curves.png'}" if results else "") + f"\n       {output / 'results'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
