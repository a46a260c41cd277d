"""Reliability of the evaluation and plot commands: readable outputs, file-system errors as messages, split files
checked, clear messages for a folder as checkpoint / a missing dataset / a negative id / SIGTERM, checkpoints
loaded with weights_only=True, read warnings as one line per file."""

import errno
import json
import os
import signal
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nnunet_allukan.commands.evaluation as evaluation_cli
from nnunet_allukan.commands.evaluation import evaluate_main, plot_activations_main
from nnunet_allukan.evaluation.collect import EvaluationError, load_split_val_lists
from test_evaluation_evaluate import DATASET, SPLITS, TRAINERS, make_tree
from test_evaluation_figures import hand_made_state_dict


@pytest.fixture
def tree(tmp_path, monkeypatch):
    make_tree(tmp_path)
    for name in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{name}", str(tmp_path / name))
    return tmp_path


def pred_args(root: Path, trainer: str = TRAINERS[0]) -> list[str]:
    model = root / "results" / DATASET / f"{trainer}__nnUNetPlans__2d"
    return ["--pred", "A", *(str(model / f"fold_{f}" / "validation") for f in range(3)),
            "-l", str(root / "preprocessed" / DATASET / "gt_segmentations")]


def expect_failure(main, argv, capsys, *fragments, code=1) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err}"
    return err


# --- 1. figures and tables readable as the umask says ---------------------------------------------------


@pytest.mark.parametrize("mask, file_mode", [(0o022, 0o644), (0o077, 0o600)])
def test_output_modes_follow_the_umask(tree, mask, file_mode):
    torch.save(hand_made_state_dict(), tree / "weights.pth")
    previous = os.umask(mask)
    try:
        plot_activations_main(["-i", str(tree / "weights.pth"), "-o", str(tree / "figures" / "act.png")])
        evaluate_main(pred_args(tree) + ["-o", str(tree / "eval")])
    finally:
        os.umask(previous)
    for file in (tree / "figures" / "act.png", tree / "eval" / "results.md", tree / "eval" / "results.json"):
        assert stat.S_IMODE(file.stat().st_mode) == file_mode, file
    assert stat.S_IMODE((tree / "eval").stat().st_mode) == 0o777 & ~mask


# --- 3. file-system errors: a message naming the path and the fix, nothing written -----------------------


def test_evaluation_output_is_a_file(tree, capsys):
    blocker = tree / "eval_file"
    blocker.write_text("keep me")
    expect_failure(evaluate_main, pred_args(tree) + ["-o", str(blocker)], capsys,
                   f"-o {blocker} is a file, not a folder", "Nothing was written.")
    assert blocker.read_text() == "keep me"
    expect_failure(evaluate_main, pred_args(tree) + ["-o", str(blocker / "sub")], capsys,
                   f"{blocker} is a file, not a folder")


def refuse_writes_below(monkeypatch, folder: Path, error: int = errno.EACCES) -> None:
    """What a read-only (EACCES) or full (ENOSPC) folder does to mkdir and open (tests may run as root)."""
    real_mkdir, real_open = os.mkdir, os.open

    def mkdir(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise OSError(error, os.strerror(error), str(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if Path(path).parent == folder and flags & os.O_CREAT:
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_evaluation_output_read_only(tree, monkeypatch, capsys):
    (tree / "shared").mkdir()
    refuse_writes_below(monkeypatch, tree / "shared")
    expect_failure(evaluate_main, pred_args(tree) + ["-o", str(tree / "shared" / "eval")], capsys,
                   "cannot write", "Permission denied", "pass -o with a folder you can write to")
    assert list((tree / "shared").iterdir()) == []


def test_plot_output_folder_read_only_or_full(tree, monkeypatch, capsys):
    torch.save(hand_made_state_dict(), tree / "weights.pth")
    (tree / "figures").mkdir()
    refuse_writes_below(monkeypatch, tree / "figures")
    expect_failure(plot_activations_main, ["-i", str(tree / "weights.pth"), "-o", str(tree / "figures" / "a.png")],
                   capsys, "cannot write", str(tree / "figures"), "Permission denied", "pass -o with a folder")
    monkeypatch.undo()
    (tree / "full").mkdir()
    refuse_writes_below(monkeypatch, tree / "full", errno.ENOSPC)
    expect_failure(plot_activations_main, ["-i", str(tree / "weights.pth"), "-o", str(tree / "full" / "a.png")],
                   capsys, "No space left on device", "Free space")
    assert list((tree / "figures").iterdir()) == [] and list((tree / "full").iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_for_real(tree, capsys):
    (tree / "ro").mkdir()
    (tree / "ro").chmod(0o555)
    try:
        expect_failure(evaluate_main, pred_args(tree) + ["-o", str(tree / "ro" / "eval")], capsys, "not writable")
    finally:
        (tree / "ro").chmod(0o755)


# --- 6. split files: structure checked, the problem named -----------------------------------------------


@pytest.mark.parametrize("splits, fragment", [
    ([{"train": [], "val": 5}], 'split 0: "val" is the number 5, not a list of case ids'),
    ([{"train": [], "val": "cvc_0001"}], 'split 0: "val" is the string "cvc_0001", not a list'),
    ([{"train": 3, "val": ["a"]}], 'split 0: "train" is the number 3'),
    ([{"val": ["a", 7]}], 'split 0: "val" holds the number 7 among its case ids'),
    ([["a", "b"]], "split 0 is a list of 2, not an object"),
    ([{"train": ["a"]}], 'split 0 has no "val" entry'),
    ({"val": ["a"]}, "holds an object, not a list of splits"),
    ([], "holds an empty list, not a list of splits"),
    ([{"val": []}], '"val" is an empty list'),
    ([{"val": ["a", "a"]}], "lists ['a'] more than once"),
])
def test_malformed_split_files(tmp_path, splits, fragment):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(EvaluationError) as error:
        load_split_val_lists(path)
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_malformed_split_file_through_the_command(tree, capsys):
    splits = [dict(s) for s in SPLITS]
    splits[1]["val"] = "benign_004"
    (tree / "splits.json").write_text(json.dumps(splits))
    expect_failure(evaluate_main, pred_args(tree) + ["--splits", str(tree / "splits.json"), "-o", str(tree / "e")],
                   capsys, 'split 1: "val" is the string "benign_004"', "paper_splits.json")
    assert not (tree / "e").exists()


# --- 7. clearer messages, SIGTERM, weights_only, read warnings ------------------------------------------


def test_checkpoint_folder_given_as_checkpoint(tree, capsys):
    fold = tree / "fold_0"
    fold.mkdir()
    torch.save(hand_made_state_dict(), fold / "checkpoint_best.pth")
    expect_failure(plot_activations_main, ["-i", str(fold)], capsys,
                   f"{fold} is a folder: give the checkpoint file with -i", "checkpoint_best.pth")


def test_missing_dataset_name_and_negative_id(tree, capsys):
    expect_failure(evaluate_main, ["-d", "Dataset999_Nope", "-tr", *TRAINERS], capsys,
                   "-d Dataset999_Nope: no folder of that name")
    expect_failure(evaluate_main, ["-d", "-5", "-tr", *TRAINERS], capsys, "-d -5: dataset ids are non-negative")


def test_dataset_id_resolution_errors(tree, capsys, monkeypatch):
    """nnU-Net's maybe_convert_to_dataset_name resolves -d; its ValueError / RuntimeErrors become ERROR lines."""
    expect_failure(evaluate_main, ["-d", "busi", "-tr", *TRAINERS], capsys,
                   "ERROR: -d 'busi': give a dataset id (e.g. 601) or a name (e.g. Dataset601_BUSI).")
    (tree / "raw" / "Dataset601_Other").mkdir()
    err = expect_failure(evaluate_main, ["-d", "601", "-tr", *TRAINERS], capsys,
                         "ERROR: -d 601: expected exactly one folder named Dataset601_* in $nnUNet_results / "
                         "$nnUNet_preprocessed / $nnUNet_raw, found Dataset601_BUSI, Dataset601_Other.")
    assert "Traceback" not in err
    (tree / "raw" / "Dataset601_Other").rmdir()
    monkeypatch.delenv("nnUNet_results")
    expect_failure(evaluate_main, ["-d", "601", "-tr", *TRAINERS], capsys,
                   "ERROR: nnUNet_results is not set. Export it")
    expect_failure(plot_activations_main, ["-d", "601", "-tr", TRAINERS[0]], capsys,
                   "ERROR: nnUNet_results is not set. Export it")


def test_sigterm_prints_a_message(tree, capsys):
    def terminated_midway(args):
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        evaluation_cli.run_reporting_errors(terminated_midway, evaluation_cli.evaluate_parser(), [])
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert "Terminated (SIGTERM); nothing was written." in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is previous


class RunsCodeWhenUnpickled:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_are_loaded_weights_only(tree, capsys):
    # an nnU-Net-like checkpoint (numpy scalars in the training log, a torch.device) loads
    nnunet_like = {"network_weights": hand_made_state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
                   "logging": {"train_losses": [np.float64(0.7), np.float32(0.5)], "epoch": [np.int64(3)]},
                   "init_args": {"fold": 0, "device": torch.device("cpu")}, "current_epoch": 4}
    torch.save(nnunet_like, tree / "checkpoint_final.pth")
    plot_activations_main(["-i", str(tree / "checkpoint_final.pth"), "--list"])
    assert "final: u (1, 8, 1, 1)" in capsys.readouterr().out
    # one holding an arbitrary object is refused without running it
    marker = tree / "code_ran"
    torch.save({"network_weights": hand_made_state_dict(), "extra": RunsCodeWhenUnpickled(str(marker))},
               tree / "evil.pth")
    expect_failure(plot_activations_main, ["-i", str(tree / "evil.pth"), "--list"], capsys,
                   "holds objects other than tensors", "Unsupported global", "state_dict")
    assert not marker.exists()


def test_read_warnings_become_one_line_naming_the_file(tree, monkeypatch, capsys):
    import nnunet_allukan.evaluation.collect as collect

    real_open = Image.open
    victim = tree / "results" / DATASET / f"{TRAINERS[0]}__nnUNetPlans__2d" / "fold_0" / "validation" / "benign_007.png"

    def open_with_warning(path, *args, **kwargs):  # as Pillow does for a file with damaged metadata
        if Path(path) == victim:
            warnings.warn("Corrupt EXIF data.  Expecting to read 12 bytes but only got 4. ", UserWarning)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(collect.Image, "open", open_with_warning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping the command would fail here
        evaluate_main(pred_args(tree) + ["-o", str(tree / "eval")])
    err = capsys.readouterr().err
    expected = f"Warning: {victim}: Corrupt EXIF data. Expecting to read 12 bytes but only got 4. (pixels read)"
    assert err.count("Corrupt EXIF data") == 1 and expected in err.splitlines()
