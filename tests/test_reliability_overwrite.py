"""--overwrite removes only a folder that the command itself made and that holds nothing else: for every command
with --overwrite (the demo, the converter, benchmarks/benchmark_learning.py) a folder of the user's files
survives, and the command's own earlier output is replaced."""
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_conversion.cli import main as convert_main
from nnunet_allukan import filesystem
from nnunet_allukan.commands import demo
from nnunet_allukan.filesystem import OUTPUT_MARKER, OverwriteRefused, check_replaceable, mark_output_folder

REPOSITORY = Path(__file__).resolve().parents[1]
LEARNING_SCRIPT = REPOSITORY / "benchmarks" / "benchmark_learning.py"


def user_folder(folder: Path) -> Path:
    """A folder of the user's own work: a notes.txt and a sub-folder with a file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "work").mkdir()
    (folder / "work" / "draft.txt").write_text("my draft")
    return folder


def assert_user_files_intact(folder: Path) -> None:
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "work" / "draft.txt").read_text() == "my draft"


# --- the shared rule ---------------------------------------------------------------------------------------


def test_marked_folder_with_only_its_own_files_may_be_replaced(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    mark_output_folder(folder, "cmd")
    (folder / "result.json").write_text("{}")
    check_replaceable(folder, "cmd", ["result.json"], "pick another -o")
    filesystem.remove_output_folder(folder, "cmd", ["result.json"], "pick another -o")
    assert not folder.exists()


@pytest.mark.parametrize("marker, fragment", [(None, f"has no {OUTPUT_MARKER} of cmd"),
                                              ("other_command", f"has no {OUTPUT_MARKER} of cmd")])
def test_unmarked_or_foreign_marked_folder_is_refused(tmp_path, marker, fragment):
    folder = user_folder(tmp_path / "out")
    if marker:
        mark_output_folder(folder, marker)
    with pytest.raises(OverwriteRefused, match=fragment) as refused:
        filesystem.remove_output_folder(folder, "cmd", ["notes.txt", "work"], "pick another -o")
    assert str(folder) in str(refused.value) and "pick another -o" in str(refused.value)
    assert_user_files_intact(folder)


def test_files_the_command_did_not_write_are_refused(tmp_path):
    folder = user_folder(tmp_path / "out")
    mark_output_folder(folder, "cmd")
    with pytest.raises(OverwriteRefused, match=r"it holds notes.txt, work, which cmd did not write"):
        filesystem.remove_output_folder(folder, "cmd", ["result.json"], "pick another -o")
    assert_user_files_intact(folder)


def test_current_directory_home_and_project_and_their_parents_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    cwd = home / "projects" / "here"
    cwd.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    # a checkout under the temporary folder (/tmp/clone) has a parent that holds the current directory too
    parent = "holds the current directory" if REPOSITORY.parent in cwd.resolve().parents else "nnunet-allukan"
    for folder, fragment in [(cwd, "it is the current directory"), (home, "it is your home folder"),
                             (home / "projects", "a folder that holds the current directory"),
                             (Path("/"), "a folder that holds"),
                             (REPOSITORY, "nnunet-allukan"), (REPOSITORY.parent, parent)]:
        with pytest.raises(OverwriteRefused, match=fragment):
            check_replaceable(folder, "cmd", [], "pick another -o")
    mark_output_folder(cwd, "cmd")  # marked and empty: still the current directory
    with pytest.raises(OverwriteRefused, match="current directory"):
        filesystem.remove_output_folder(cwd, "cmd", [], "pick another -o")
    assert cwd.is_dir()


def test_marker_follows_the_umask(tmp_path):
    import os

    old = os.umask(0o077)
    try:
        mark_output_folder(tmp_path, "cmd")
    finally:
        os.umask(old)
    assert (tmp_path / OUTPUT_MARKER).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / OUTPUT_MARKER).read_text() == "cmd\n"


# --- nnUNetv2_allukan_demo ---------------------------------------------------------------------------------


def test_demo_overwrite_keeps_a_folder_of_user_files(tmp_path, capsys):
    folder = user_folder(tmp_path / "mine")
    assert demo.main(["-o", str(folder), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert f"nnUNetv2_allukan_demo: error: --overwrite removes only a folder that nnUNetv2_allukan_demo made, " \
           f"and {folder}" in err
    assert "choose another folder with -o" in err
    assert_user_files_intact(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "work"]


def test_demo_overwrite_refuses_user_files_added_to_its_own_output(tmp_path, capsys):
    folder = tmp_path / "demo"
    folder.mkdir()
    mark_output_folder(folder, demo.COMMAND)
    (folder / demo.RESULTS_JSON).write_text("{}")
    user_folder(folder)
    assert demo.main(["-o", str(folder), "--overwrite"]) == 1
    assert "it holds notes.txt, work, which nnUNetv2_allukan_demo did not write" in capsys.readouterr().err
    assert_user_files_intact(folder)
    assert (folder / demo.RESULTS_JSON).exists()


def test_demo_output_of_an_earlier_version_is_refused_with_the_way_out(tmp_path, capsys):
    folder = tmp_path / "demo"
    (folder / demo.LOGS).mkdir(parents=True)
    (folder / demo.RESULTS_JSON).write_text("{}")  # as written by a version without the marker
    assert demo.main(["-o", str(folder), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "delete the folder by hand if nothing in it is yours, or choose another folder with -o" in err
    assert (folder / demo.RESULTS_JSON).exists()


def test_demo_overwrite_refuses_the_current_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mark_output_folder(tmp_path, demo.COMMAND)
    (tmp_path / demo.RESULTS_JSON).write_text("{}")
    assert demo.main(["-o", ".", "--overwrite"]) == 1
    assert f"--overwrite will not remove {tmp_path.resolve()}: it is the current directory" in capsys.readouterr().err
    assert (tmp_path / demo.RESULTS_JSON).exists()


def test_demo_replaces_its_own_earlier_output(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "demo"
    (folder / demo.LOGS).mkdir(parents=True)
    mark_output_folder(folder, demo.COMMAND)
    (folder / demo.LOGS / "train.log").write_text("old run")
    (folder / demo.RESULTS_JSON).write_text("{}")

    def stop(step, args, env, log_folder):  # the console commands are minutes; the folder is the point here
        raise demo.DemoError(f"stopped before {step}")

    monkeypatch.setattr(demo, "run_step", stop)
    assert demo.main(["-o", str(folder), "--overwrite", "--benign", "8", "--malignant", "2"]) == 1
    assert "stopped before convert" in capsys.readouterr().err
    assert not (folder / demo.RESULTS_JSON).exists() and not (folder / demo.LOGS / "train.log").exists()
    assert (folder / OUTPUT_MARKER).read_text() == f"{demo.COMMAND}\n"
    assert (folder / demo.SOURCE).is_dir()
    assert set(p.name for p in folder.iterdir()) <= set(demo.OUTPUT_CONTENTS) | {OUTPUT_MARKER}


# --- nnUNetv2_convert_allukan_dataset ----------------------------------------------------------------------


def convert(busi: Path, *extra: str) -> int:
    return convert_main(["busi", str(busi), "--size", "32", "-np", "1", *extra])


def test_converter_overwrite_keeps_user_files_in_the_dataset(raw, busi, capsys):
    assert convert(busi) == 0
    dataset = raw / "Dataset601_BUSI"
    user_folder(dataset)
    assert convert(busi, "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"--overwrite will not remove {dataset}: it holds notes.txt, work, which " \
           "nnUNetv2_convert_allukan_dataset did not write" in err
    assert "Nothing was written." in err
    assert_user_files_intact(dataset)
    assert (dataset / "dataset.json").is_file()


def test_converter_overwrite_keeps_a_folder_of_user_files(raw, busi, capsys):
    user_folder(raw / "Dataset601_BUSI")
    assert convert(busi, "--overwrite") == 1
    err = capsys.readouterr().err
    assert "--overwrite removes only a folder that nnUNetv2_convert_allukan_dataset made" in err
    assert "delete the folder by hand if nothing in it is yours, or convert under another id with -d" in err
    assert_user_files_intact(raw / "Dataset601_BUSI")
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset601_BUSI"]


def test_converter_replaces_its_own_dataset(raw, busi, capsys):
    assert convert(busi) == 0
    dataset = raw / "Dataset601_BUSI"
    assert (dataset / OUTPUT_MARKER).read_text() == "nnUNetv2_convert_allukan_dataset\n"
    before = (dataset / "conversion_record.json").read_text()
    assert convert_main(["busi", str(busi), "--size", "48", "-np", "1", "--overwrite"]) == 0
    assert (dataset / "conversion_record.json").read_text() != before
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset601_BUSI"]


# --- benchmarks/benchmark_learning.py ----------------------------------------------------------------------


def learning(output: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), **(env_extra or {})}
    env.pop("nnUNet_preprocessed", None)
    return subprocess.run([sys.executable, str(LEARNING_SCRIPT), "-d", "1", "-tr", "nnUNetTrainer",
                           "nnUNetTrainerKAUNet", "--epochs", "1", "--iterations", "1", "-o", str(output),
                           "--overwrite"], capture_output=True, text=True, env=env, timeout=120)


def test_benchmark_learning_overwrite_keeps_a_folder_of_user_files(tmp_path):
    folder = user_folder(tmp_path / "mine")
    result = learning(folder)
    assert result.returncode != 0
    assert f"--overwrite removes only a folder that benchmark_learning.py made, and {folder}" in result.stderr
    assert_user_files_intact(folder)


def test_benchmark_learning_accepts_its_own_earlier_output(tmp_path):
    folder = tmp_path / "learning"
    (folder / "logs").mkdir(parents=True)
    mark_output_folder(folder, "benchmark_learning.py")
    (folder / "learning_summary.json").write_text("{}")
    result = learning(folder)
    # past the --overwrite check; stopped by the next one, before anything is removed
    assert result.returncode != 0 and "nnUNet_preprocessed is not set" in result.stderr, result.stderr
    assert (folder / "learning_summary.json").exists()
