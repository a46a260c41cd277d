"""nnUNetv2_allukan_trainers: every trainer, grouped, with what it changes; a misspelled name gets the closest names
(the command, and nnU-Net's own lookup through the shim)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_allukan.commands import trainers as command
from nnunet_allukan.training import trainers

REPOSITORY = Path(__file__).resolve().parents[1]


def test_list_names_every_trainer_once_with_what_it_changes(capsys):
    assert command.main([]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == list(trainers.TRAINER_NAMES) and len(listed) == len(set(listed)) == 133
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.startswith("  ")}
    assert lines["nnUNetTrainerAllUKAN"].startswith("ALL U-KAN (every conv a KAonv layer")
    assert lines["nnUNetTrainerTable2Row7"] == "Table 2 row 7: vanilla KAN fc, Grad-Free Spline."
    assert lines["nnUNetTrainerTable2Row13"].startswith("= nnUNetTrainerAllUKAN (the same trainer")
    assert lines["nnUNetTrainerTable2Row5_20epochs"].startswith("= nnUNetTrainerUKAN_20epochs ")
    assert lines["nnUNetTrainerKAUNet_10epochs"] == "nnUNetTrainerKAUNet for 10 epochs."
    assert "``" not in out
    for title in trainers.TRAINER_GROUPS:
        assert f"\n{title}:\n" in out


def test_a_trainer_name_prints_its_line(capsys):
    assert command.main(["nnUNetTrainerTable2Row4"]) == 0
    assert capsys.readouterr().out.startswith("nnUNetTrainerTable2Row4: = nnUNetTrainerUKAN_MLP")


@pytest.mark.parametrize("name, first", [("nnUNetTrainerAllUkan", "nnUNetTrainerAllUKAN"),
                                         ("nnUNetTrainerUKAN_5epoch", "nnUNetTrainerUKAN_5epochs"),
                                         ("nnUNetTrainerTable2Row9_20epoch", "nnUNetTrainerTable2Row9_20epochs")])
def test_a_misspelled_name_gets_the_closest_names_and_fails(name, first, capsys):
    assert command.main([name]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nnUNetv2_allukan_trainers: {name} is not a trainer of nnunet-allukan; the closest: "
                          f"{first}, ")
    assert trainers.closest_trainer_names(name)[0] == first


def test_console_command_is_declared():
    import tomllib

    scripts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["nnUNetv2_allukan_trainers"] == "nnunet_allukan.commands.trainers:main"


def test_module_lookup_hints_only_for_names_nobody_defines(capsys):
    assert not hasattr(trainers, "nnUNetTrainer_5epochs")  # nnU-Net's own variant: no hint
    assert capsys.readouterr().err == ""
    assert not hasattr(trainers, "nnUNetTrainerAllUkan_2epochs")  # outside nnU-Net's search: a hint, no exit
    assert "the closest of nnunet-allukan: nnUNetTrainerAllUKAN_2epochs" in capsys.readouterr().err
    assert trainers.nnunet_defines("nnUNetTrainer_5epochs") and not trainers.nnunet_defines("nnUNetTrainerAllUkan")


def test_nnunet_lookup_of_a_misspelled_name_names_the_closest_trainers():
    """nnU-Net's own lookup (nnUNetv2_train -tr NAME) in a fresh interpreter: the shim names the closest trainers
    on the first line of stderr, before nnU-Net searches its sub-packages (whatever that search then does)."""
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name\n"
            "recursive_find_trainer_class_by_name('nnUNetTrainerAllUkan')\n")
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("nnunet-allukan: no trainer is called nnUNetTrainerAllUkan; the closest of "
                            "nnunet-allukan: nnUNetTrainerAllUKAN, "), result.stderr
