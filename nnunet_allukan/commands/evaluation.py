"""Console commands over nnU-Net result folders: nnUNetv2_allukan_evaluate and nnUNetv2_allukan_plot_activations,
_overlays, _gradients (the computations are in :mod:`nnunet_allukan.evaluation`)."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from nnunet_allukan.evaluation.collect import EvaluationError, env_folder, resolve_dataset_name
from nnunet_allukan.paper import BATCH_SIZE, DIVISOR, GRID_RANGE, GRID_SIZE, SPLINE_ORDER, SPLIT_SEEDS

DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_CONFIGURATION = "2d"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that temporary files are removed on the way out."""


def _raise_on_sigterm(signum, frame):
    raise Terminated


# Every command below is a parser, a function of the parsed arguments and a ``*_main`` that joins them here, so
# that all report errors, interruption and SIGTERM alike.
def run_reporting_errors(function: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
                         argv: Sequence[str] | None) -> None:
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        function(args)
    except EvaluationError as error:
        print(f"ERROR: {error}\nNothing was written.", file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # an unforeseen file-system error: one clear line, not a traceback
        print(f"ERROR: {error.filename or ''}: {error.strerror or error}. Check that path and its file system."
              "\nNothing was written.", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("Interrupted; nothing was written.", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("Terminated (SIGTERM); nothing was written.", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _add_nnunet_selection(parser: argparse.ArgumentParser, several_trainers: bool = True) -> None:
    group = parser.add_argument_group("nnU-Net results ($nnUNet_results, $nnUNet_preprocessed, $nnUNet_raw)")
    group.add_argument("-d", nargs="+" if several_trainers else None, default=None, metavar="DATASET",
                       help="dataset id(s) or name(s), e.g. 601 602 603" if several_trainers
                       else "dataset id or name, e.g. 601")
    group.add_argument("-tr", nargs="+", default=None, metavar="TRAINER",
                       help="trainer class name(s), e.g. nnUNetTrainerUKAN_MLP nnUNetTrainerUKAN nnUNetTrainerAllUKAN "
                            "nnUNetTrainer")
    group.add_argument("-p", default=DEFAULT_PLANS, metavar="PLANS", help=f"plans identifier (default {DEFAULT_PLANS})")
    group.add_argument("-c", default=DEFAULT_CONFIGURATION, metavar="CONFIGURATION",
                       help=f"configuration (default {DEFAULT_CONFIGURATION})")


def _parse_pred(values: Sequence[Sequence[str]] | None) -> list[tuple[str, list[str]]]:
    result = []
    for entry in values or []:
        if len(entry) < 2:
            raise EvaluationError(f"--pred {' '.join(entry)}: give a method name followed by one folder per fold.")
        result.append((entry[0], list(entry[1:])))
    names = [name for name, _ in result]
    if len(set(names)) != len(names):
        raise EvaluationError(f"--pred: method names must be distinct, got {names}")
    return result


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_allukan_evaluate",
        description="IoU / F1 of validation predictions over the paper's three seeds (folds 0, 1, 2), under the "
                    "reference code's batch-pooled protocol and the per-image protocol, in the layout of paper "
                    "Table 1 with the paper's numbers alongside. Writes results.md, results.csv, per_case.csv and "
                    "results.json.")
    _add_nnunet_selection(parser)
    parser.add_argument("-f", nargs="+", type=int, default=list(range(len(SPLIT_SEEDS))), metavar="FOLD",
                        help=f"folds to evaluate (default {' '.join(map(str, range(len(SPLIT_SEEDS))))} = seeds "
                             f"{' '.join(map(str, SPLIT_SEEDS))})")
    folders = parser.add_argument_group("plain folders instead of nnU-Net results")
    folders.add_argument("--pred", nargs="+", action="append", metavar=("NAME", "FOLDER"),
                         help="a method name followed by its prediction folder of fold 0, 1, ...; repeat per method")
    folders.add_argument("-l", type=Path, default=None, metavar="LABELS",
                         help="ground-truth folder (default for nnU-Net results: $nnUNet_preprocessed/<dataset>/"
                              "gt_segmentations)")
    folders.add_argument("--splits", type=Path, default=None,
                         help="splits_final.json giving each fold's validation cases and loader order")
    folders.add_argument("--dataset-label", default="dataset",
                         help="name of the dataset in the table; contains BUSI / GlaS / CVC to show paper numbers")
    folders.add_argument("--file-ending", default=".png", help="file ending of predictions and labels (default .png)")
    parser.add_argument("--order", choices=("split", "sorted"), default="split",
                        help="case order of the reference protocol's batches of 8: 'split' = the fold's validation "
                             "list in the split file the trainer used (splits_allukan_paper.json in the model folder, "
                             "else $nnUNet_preprocessed/<dataset>/splits_final.json; train_test_split output order, "
                             "what the reference loader iterates; default; sorted where no split file exists), "
                             "'sorted' = sorted case ids")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"reference protocol batch size (default {BATCH_SIZE})")
    parser.add_argument("--std-ddof", type=int, choices=(0, 1), default=0,
                        help="std over the seeds: 0 = population (numpy default, default), 1 = sample")
    parser.add_argument("-o", type=Path, default=None, metavar="OUTPUT_FOLDER",
                        help="output folder (default $nnUNet_results/<dataset>/allukan_evaluation for one dataset, "
                             "$nnUNet_results/allukan_evaluation for several; required for --pred)")
    return parser


def _evaluate(args: argparse.Namespace) -> None:
    from nnunet_allukan.evaluation.evaluate import evaluate_folders, evaluate_nnunet, write_results
    from nnunet_allukan.evaluation.output import check_output_folder

    predictions = _parse_pred(args.pred)
    if predictions and (args.d or args.tr):
        raise EvaluationError("use either -d/-tr (nnU-Net results) or --pred/-l (plain folders), not both.")
    if predictions:
        if args.l is None:
            raise EvaluationError("--pred needs -l LABELS_FOLDER (the ground truth).")
        if args.o is None:
            raise EvaluationError("--pred needs -o OUTPUT_FOLDER.")
        check_output_folder(args.o)  # before the evaluation, not after it
        results = evaluate_folders(predictions, args.l, args.dataset_label, args.splits, args.file_ending,
                                   args.order, args.batch_size, args.std_ddof)
        output = args.o
    else:
        if not args.d or not args.tr:
            raise EvaluationError("give -d DATASET [...] and -tr TRAINER [...] (or --pred NAME FOLDER... -l LABELS).")
        if args.o is not None:
            check_output_folder(args.o)
        results = evaluate_nnunet(args.d, args.tr, args.p, args.c, args.f, args.order, args.batch_size,
                                  args.std_ddof, args.l)
        names = list(results["datasets"])
        output = args.o or (env_folder("nnUNet_results") / names[0] / "allukan_evaluation" if len(names) == 1
                            else env_folder("nnUNet_results") / "allukan_evaluation")
    written = write_results(results, output)
    print(Path(written[0]).read_text())
    print("Wrote:\n" + "\n".join(f"  {p}" for p in written))


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    run_reporting_errors(_evaluate, evaluate_parser(), argv)


# ---------------------------------------------------------------------------------------------- activations
def activations_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_allukan_plot_activations",
        description="Plot the learned shared activations phi_i(x) = sum_k v[i,k] B_k(x) (paper Eq. 7) of KA / KAonv "
                    "layers of a trained checkpoint, with the band of the per-input functions phi_i(x) + "
                    "u[i,j] silu(x). Works from the checkpoint's state_dict alone.")
    parser.add_argument("-i", "--checkpoint", type=Path, default=None,
                        help="checkpoint file (nnU-Net checkpoint or a plain state_dict); or use -d/-tr/-f")
    _add_nnunet_selection(parser, several_trainers=False)
    parser.add_argument("-f", type=int, default=0, metavar="FOLD", help="fold (default 0)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("--layers", nargs="+", default=None, metavar="PATTERN",
                        help="layer names or shell patterns (e.g. 'encoder1.*' '*fc1'); default: first layer, first "
                             "depthwise conv, first fc, last layer")
    parser.add_argument("--list", action="store_true", help="only list the KA layers of the checkpoint")
    parser.add_argument("-n", "--outputs", type=int, default=8, help="curves (output units) per layer (default 8)")
    parser.add_argument("--x-range", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                        help="x range (default: the grid range)")
    grid = parser.add_argument_group(
        "spline grid", "read from the model folder's plans.json; give it only for a checkpoint outside an nnU-Net "
                       f"model folder (default there: the paper's, grid size {GRID_SIZE}, order {SPLINE_ORDER}, "
                       f"range {GRID_RANGE[0]:g} {GRID_RANGE[1]:g})")
    grid.add_argument("--grid-size", type=int, default=None)
    grid.add_argument("--spline-order", type=int, default=None)
    grid.add_argument("--grid-range", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"))
    parser.add_argument("-o", type=Path, default=None, metavar="OUTPUT_PNG",
                        help="output PNG (default: activations.png next to the checkpoint)")
    return parser


def _checkpoint_path(args: argparse.Namespace) -> Path:
    if args.checkpoint is not None:
        if args.d or args.tr:
            raise EvaluationError("use either -i CHECKPOINT or -d/-tr/-f, not both.")
        return args.checkpoint
    if not args.d or not args.tr or len(args.tr) != 1:
        raise EvaluationError("give -i CHECKPOINT, or -d DATASET -tr TRAINER (one) [-p PLANS -c CONFIG -f FOLD].")
    from nnunet_allukan.evaluation.collect import nnunet_model_folder
    return nnunet_model_folder(resolve_dataset_name(str(args.d)), args.tr[0], args.p, args.c, args.f) / args.chk


def _configuration_of(model_folder: Path, plans: dict, default: str) -> str:
    """The configuration of a model folder ``TRAINER__PLANS__CONFIGURATION`` (``default`` if none matches)."""
    return next((c for c in plans.get("configurations", {}) if model_folder.name.endswith(f"__{c}")), default)


def _architecture_of(model_folder: Path, plans: dict, default_configuration: str):
    """(configuration manager, architecture entry) of the model folder's configuration in its plans."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = _configuration_of(model_folder, plans, default_configuration)
    try:
        configuration_manager = PlansManager(plans).get_configuration(configuration)
    except Exception:
        raise EvaluationError(f"{model_folder / 'plans.json'} has no configuration {configuration!r}.") from None
    return configuration_manager, configuration_manager.configuration["architecture"]


def _activation_grid(args: argparse.Namespace, checkpoint: Path) -> tuple[dict, str]:
    """The spline grid of the checkpoint's network and where it came from: the model folder's plans.json (the
    fold folder's parent), else the options given, else the paper's."""
    from nnunet_allukan.evaluation.activations import recorded_grid
    from nnunet_allukan.evaluation.collect import read_json

    given = {name: value for name, value in (("grid_size", args.grid_size), ("spline_order", args.spline_order),
                                             ("grid_range", tuple(args.grid_range) if args.grid_range else None))
             if value is not None}
    plans_file = checkpoint.parent.parent / "plans.json"
    if not plans_file.is_file():
        grid = {"grid_size": GRID_SIZE, "spline_order": SPLINE_ORDER, "grid_range": tuple(GRID_RANGE),
                "basis": "bspline", **given}
        return grid, "as given" if given else "the paper's (no plans.json next to the fold folder)"
    _, architecture = _architecture_of(plans_file.parent, read_json(plans_file), args.c)
    grid = recorded_grid(architecture, str(plans_file))
    contradicting = {name: value for name, value in given.items() if value != grid[name]}
    if contradicting:
        options = ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in contradicting.items())
        raise EvaluationError(f"{options} contradicts the grid the model was trained with ({_grid_text(grid)}, "
                              f"from {plans_file}): leave the grid options out for a model folder.")
    return grid, f"from {plans_file}"


def _grid_text(grid: dict) -> str:
    return (f"grid size {grid['grid_size']}, order {grid['spline_order']}, range {grid['grid_range'][0]:g} "
            f"{grid['grid_range'][1]:g}" + ("" if grid["basis"] == "bspline" else f", basis {grid['basis']}"))


def _plot_activations(args: argparse.Namespace) -> None:
    from nnunet_allukan.evaluation.activations import (
        default_layer_selection, find_ka_layers, load_state_dict, plot_activations, select_layers)

    checkpoint = _checkpoint_path(args)
    state_dict = load_state_dict(checkpoint)
    layers = find_ka_layers(state_dict)
    if not layers:
        raise EvaluationError(f"{checkpoint}: no KA / KAonv layers found (no '<name>.v' [out, n_basis] next to "
                              "'<name>.u'): is this an ALL U-KAN checkpoint?")
    if args.list:
        for layer in layers:
            print(f"{layer.name}: u {tuple(layer.u.shape)}, v {tuple(layer.v.shape)}"
                  + (", lambda" if layer.lam is not None else ""))
        return
    chosen = select_layers(layers, args.layers) if args.layers else default_layer_selection(layers)
    output = args.o or checkpoint.parent / f"activations_{checkpoint.stem}.png"
    grid, source = _activation_grid(args, checkpoint)
    print(f"Spline grid: {_grid_text(grid)} ({source}).")
    plot_activations(chosen, output, n_outputs=args.outputs, **grid,
                     x_range=tuple(args.x_range) if args.x_range else None, title=str(checkpoint))
    print(f"Plotted {len(chosen)} layers ({', '.join(layer.name for layer in chosen)}).\nWrote: {output}")


def plot_activations_main(argv: Sequence[str] | None = None) -> None:
    run_reporting_errors(_plot_activations, activations_parser(), argv)


# ---------------------------------------------------------------------------------------------- overlays
def overlays_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_allukan_plot_overlays",
        description="Qualitative comparison like paper Fig. 5: image | ground truth | prediction of each method, "
                    "one row per case, in one PNG.")
    _add_nnunet_selection(parser, several_trainers=False)
    parser.add_argument("-f", type=int, default=0, metavar="FOLD", help="fold (default 0)")
    folders = parser.add_argument_group("plain folders instead of nnU-Net results")
    folders.add_argument("--pred", nargs=2, action="append", metavar=("NAME", "FOLDER"),
                         help="a method name and its prediction folder; repeat per method")
    folders.add_argument("-l", type=Path, default=None, metavar="LABELS", help="ground-truth folder")
    folders.add_argument("-i", "--images", type=Path, default=None, metavar="IMAGES",
                         help="image folder holding <case>_0000<ending> (nnU-Net) or <case><ending>")
    folders.add_argument("--file-ending", default=".png")
    parser.add_argument("--cases", nargs="+", default=None, help="case ids to show (default: chosen by --select)")
    parser.add_argument("-n", "--num-cases", type=int, default=4, help="number of cases if --cases is not given")
    parser.add_argument("--select", choices=("spread", "disagreement"), default="spread",
                        help="'spread': evenly spaced through the sorted cases (default); 'disagreement': the cases "
                             "where the methods' IoUs differ most")
    parser.add_argument("--style", choices=("fill", "contour"), default="fill",
                        help="colour fill of the prediction with the ground-truth contour (default), or contours only")
    parser.add_argument("-o", type=Path, default=None, metavar="OUTPUT_PNG",
                        help="output PNG (default $nnUNet_results/<dataset>/allukan_figures/overlays_fold<F>.png; "
                             "required for --pred)")
    return parser


def _plot_overlays(args: argparse.Namespace) -> None:
    from nnunet_allukan.evaluation.collect import dataset_file_ending, nnunet_model_folder
    from nnunet_allukan.evaluation.overlays import OverlaySource, plot_overlays

    if args.pred and (args.d or args.tr):
        raise EvaluationError("use either -d/-tr (nnU-Net results) or --pred/-l/-i (plain folders), not both.")
    if args.pred:
        if args.l is None or args.images is None or args.o is None:
            raise EvaluationError("--pred needs -l LABELS_FOLDER, -i IMAGES_FOLDER and -o OUTPUT_PNG.")
        names = [name for name, _ in args.pred]
        if len(set(names)) != len(names):
            raise EvaluationError(f"--pred: method names must be distinct, got {names}")
        source = OverlaySource(predictions={name: Path(folder) for name, folder in args.pred}, labels=args.l,
                               images=args.images, file_ending=args.file_ending)
        output = args.o
    else:
        if not args.d or not args.tr:
            raise EvaluationError("give -d DATASET -tr TRAINER [...] (or --pred NAME FOLDER -l LABELS -i IMAGES).")
        name = resolve_dataset_name(str(args.d))
        source = OverlaySource(
            predictions={tr: nnunet_model_folder(name, tr, args.p, args.c, args.f) / "validation"
                         for tr in args.tr},
            labels=args.l or env_folder("nnUNet_preprocessed") / name / "gt_segmentations",
            images=args.images or env_folder("nnUNet_raw") / name / "imagesTr",
            file_ending=dataset_file_ending(name))
        output = args.o or env_folder("nnUNet_results") / name / "allukan_figures" / f"overlays_fold{args.f}.png"
    cases = plot_overlays(source, output, cases=args.cases, num_cases=args.num_cases, select=args.select,
                          style=args.style)
    print(f"Cases: {', '.join(cases)}\nWrote: {output}")


def plot_overlays_main(argv: Sequence[str] | None = None) -> None:
    run_reporting_errors(_plot_overlays, overlays_parser(), argv)


# ---------------------------------------------------------------------------------------------- gradients (Fig. 3b)
def gradients_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_allukan_plot_gradients",
        description="Paper Fig. 3b / Eq. 11-12: per layer, the mean magnitude of the spline path's input gradient "
                    "G_S against the silu path's G_L, measured exactly for one forward/backward pass on random "
                    "inputs (as the paper's Fig. 3b), in a trained model (-i or -d/-tr/-c/-f) or a fresh network "
                    "(--fresh). Writes a PNG and a JSON next to it and prints the table.")
    parser.add_argument("-i", "--checkpoint", type=Path, default=None,
                        help="checkpoint_final.pth / checkpoint_best.pth of an nnU-Net model folder (its plans.json "
                             "and dataset.json are read from the folder above the fold)")
    _add_nnunet_selection(parser, several_trainers=False)
    parser.add_argument("-f", type=int, default=0, metavar="FOLD", help="fold (default 0)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("--fresh", default=None, metavar="NETWORK",
                        help="a freshly initialised network instead: 'fig3b' (the paper's KAN of widths 4, 128, "
                             "128, 1; the default when no model is given) or a Table 2 row (4-13 or its name)")
    parser.add_argument("--size", type=int, default=128,
                        help="input side for --fresh Table 2 rows (default 128, a multiple of 32)")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2, help="--fresh Table 2 rows: 2D or 3D")
    parser.add_argument("--batch-size", type=int, default=2, help="random inputs per pass (fig3b: 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", type=Path, default=None, metavar="OUTPUT_PNG",
                        help="output PNG (default: gradients.png next to the checkpoint; for --fresh: "
                             "./allukan_gradients_<network>.png)")
    return parser


def _gradient_model(args: argparse.Namespace):
    """(network, inputs, title, default output) for the chosen source."""
    import torch

    from nnunet_allukan.evaluation.gradients import fig3b_network

    generator = torch.Generator().manual_seed(args.seed)
    from_model = args.checkpoint is not None or args.d or args.tr
    if args.fresh is not None and from_model:
        raise EvaluationError("use either --fresh NETWORK or a trained model (-i / -d -tr), not both.")
    if not from_model:
        fresh = args.fresh or "fig3b"
        torch.manual_seed(args.seed)
        if fresh == "fig3b":
            batch = 256 if args.batch_size == 2 else args.batch_size
            network, inputs = fig3b_network(), torch.randn(batch, 4, generator=generator)
            title = f"Fresh KAN (4, 128, 128, 1) of KA layers, {batch} random inputs"
        else:
            from nnunet_allukan.networks import build_table2_network, table2_row

            try:
                row = table2_row(fresh)
            except ValueError as error:
                raise EvaluationError(f"--fresh: {error}; or 'fig3b'") from None
            if args.size % DIVISOR:
                raise EvaluationError(f"--size must be a multiple of {DIVISOR}, got {args.size}")
            network = build_table2_network(row.row, 3, 1, dim=args.dim, **({"grad_free": True} if row.row in
                                                                              (11, 12, 13) else {}))
            inputs = torch.randn(args.batch_size, 3, *([args.size] * args.dim), generator=generator)
            title = f"Fresh Table 2 row {row.row} ({row.description}), {args.dim}D, random inputs"
        return network, inputs, title, Path(f"allukan_gradients_{fresh}.png").resolve()
    return _trained_gradient_model(args, generator)


def _trained_gradient_model(args: argparse.Namespace, generator):
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_allukan.evaluation.activations import load_state_dict
    from nnunet_allukan.evaluation.collect import read_json

    checkpoint = _checkpoint_path(args)
    state = load_state_dict(checkpoint)
    model_folder = checkpoint.parent.parent
    plans, dataset_json = (read_json(model_folder / name) for name in ("plans.json", "dataset.json"))
    plans_manager = PlansManager(plans)
    configuration_manager, architecture = _architecture_of(model_folder, plans, args.c)
    input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], input_channels, outputs,
                                     allow_init=False, deep_supervision=False)
    try:
        network.load_state_dict({k: torch.from_numpy(v).float() for k, v in state.items()})
    except RuntimeError as error:
        raise EvaluationError(f"{checkpoint}: its weights do not fit the network recorded in "
                              f"{model_folder / 'plans.json'} ({str(error).splitlines()[0]}).") from None
    patch = [int(s) for s in configuration_manager.patch_size]
    inputs = torch.randn(args.batch_size, input_channels, *patch, generator=generator)
    title = f"{model_folder.name} fold {checkpoint.parent.name}, {checkpoint.name}, random inputs {patch}"
    return network, inputs, title, checkpoint.parent / "gradients.png"


def _plot_gradients(args: argparse.Namespace) -> None:
    from batchgenerators.utilities.file_and_folder_operations import save_json

    from nnunet_allukan.evaluation.gradients import plot_gradients, results_as_dicts, spline_and_silu_gradients
    from nnunet_allukan.evaluation.output import save_atomically

    if args.batch_size < 1:
        raise EvaluationError(f"--batch-size must be >= 1, got {args.batch_size}")
    network, inputs, title, default_output = _gradient_model(args)
    output = args.o or default_output
    print(f"Measuring G_S and G_L per layer: {title}", flush=True)
    try:
        results = spline_and_silu_gradients(network, inputs)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    print("| layer | type | mean abs G_S | mean abs G_L | G_S / G_L |\n|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r.layer} | {r.kind} | {r.mean_abs_spline:.3e} | {r.mean_abs_silu:.3e} | {r.ratio:.3g} |")
    ratios = sorted(r.ratio for r in results)
    print(f"G_S / G_L over {len(ratios)} layers: median {ratios[len(ratios) // 2]:.3g}, max {ratios[-1]:.3g}")
    plot_gradients(results, output, title)
    record = {"title": title, "layers": results_as_dicts(results)}
    json_path = output.with_suffix(".json")
    save_atomically(json_path, lambda path: save_json(record, str(path), indent=1, sort_keys=False))
    print(f"Wrote: {output}\nWrote: {json_path}")


def plot_gradients_main(argv: Sequence[str] | None = None) -> None:
    run_reporting_errors(_plot_gradients, gradients_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    evaluate_main()
