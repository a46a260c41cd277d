"""nnUNetv2_allukan_register: writes / removes the trainer re-export module (on a temporary folder)."""
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_allukan.training import registration


def test_register_is_idempotent_and_remove_deletes_only_our_module(tmp_path):
    target = tmp_path / registration.SHIM_MODULE_NAME
    assert registration.register(tmp_path) == (target, "registered")
    assert target.read_text() == registration.shim_text()
    assert "from nnunet_allukan.training.trainers import *" in target.read_text()
    assert registration.register(tmp_path) == (target, "already registered")
    assert sorted(p.name for p in tmp_path.iterdir()) == [registration.SHIM_MODULE_NAME]  # no temp file left
    assert registration.unregister(tmp_path) == (target, "removed")
    assert not target.exists()
    assert registration.unregister(tmp_path) == (target, "was not registered")


def test_shim_text_is_the_installed_shim():
    """One source: the text registration writes is the shim source, which the wheel placed in nnU-Net's folder."""
    text = registration.shim_text()
    assert text.rstrip().endswith("from nnunet_allukan.training.trainers import *  # noqa: F401,F403")
    assert (registration.nnunet_trainer_folder() / registration.SHIM_MODULE_NAME).read_text() == text


def test_a_symlink_to_the_shim_counts_as_registered(tmp_path):
    target = tmp_path / registration.SHIM_MODULE_NAME
    target.symlink_to(registration.SHIM_SOURCE)
    assert registration.register(tmp_path)[1] == "already registered"


def test_a_foreign_module_of_the_same_name_is_never_overwritten_or_removed(tmp_path, capsys):
    target = tmp_path / registration.SHIM_MODULE_NAME
    target.write_text("class SomethingElse: pass\n")
    with pytest.raises(FileExistsError):
        registration.register(tmp_path)
    with pytest.raises(FileExistsError):
        registration.unregister(tmp_path)
    assert registration.main(["--trainer_folder", str(tmp_path)]) == 1
    assert "not nnunet-allukan's trainer module" in capsys.readouterr().err
    assert target.read_text() == "class SomethingElse: pass\n"


def test_missing_trainer_folder_is_a_clear_error(tmp_path, capsys):
    assert registration.main(["--trainer_folder", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_default_folder_is_nnunets_trainer_folder_and_it_holds_the_shim():
    folder = registration.nnunet_trainer_folder()
    assert (folder / "nnUNetTrainer.py").is_file()
    # The wheel (or, in an editable install, this command) must have placed the re-export module there.
    assert registration.is_our_shim(folder / registration.SHIM_MODULE_NAME)


def test_console_command_runs(tmp_path):
    exe = Path(sys.executable).with_name("nnUNetv2_allukan_register")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "nnunet_allukan.training.registration"]
    result = subprocess.run(command + ["--trainer_folder", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"registered: {tmp_path / registration.SHIM_MODULE_NAME}"


def test_wheel_installs_the_shim_into_nnunets_trainer_folder_and_declares_the_commands():
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    config = tomllib.loads(pyproject.read_text())
    force_include = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include["nnunet_allukan/training/nnunet_trainer_shim.py"] == \
        f"nnunetv2/training/nnUNetTrainer/{registration.SHIM_MODULE_NAME}"
    scripts = config["project"]["scripts"]
    assert scripts["nnUNetv2_allukan_register"] == "nnunet_allukan.training.registration:main"
    assert scripts["nnUNetv2_allukan_demo"] == "nnunet_allukan.commands.demo:main"
