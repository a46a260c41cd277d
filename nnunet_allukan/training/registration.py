"""``nnUNetv2_allukan_register``: make nnU-Net find the nnunet-allukan trainers in an editable install.

nnU-Net resolves ``-tr NAME`` (training and prediction) by importing the modules of
``nnunetv2/training/nnUNetTrainer/`` and looking for a class called NAME. The wheel of nnunet-allukan installs
:mod:`nnunet_allukan.training.nnunet_trainer_shim` there as ``nnUNetTrainerAllUKAN.py`` (pip uninstall removes
it). ``pip install -e .`` cannot place that file; this command writes it (or ``--remove`` deletes it again).
See docs/nnunet_integration.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHIM_MODULE_NAME = "nnUNetTrainerAllUKAN.py"
SHIM_SOURCE = Path(__file__).with_name("nnunet_trainer_shim.py")


def shim_text() -> str:
    """The shim's text: its source file in a checkout (editable install), else the copy the wheel installed (the
    wheel moves the file to nnU-Net's trainer folder and lists it among this distribution's files)."""
    if SHIM_SOURCE.is_file():
        return SHIM_SOURCE.read_text()
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("nnunet-allukan").files or []
    except PackageNotFoundError:
        files = []
    for file in files:
        if file.name == SHIM_MODULE_NAME:
            return file.read_text()
    raise FileNotFoundError(f"neither {SHIM_SOURCE} nor the wheel's {SHIM_MODULE_NAME} is present: reinstall "
                            "nnunet-allukan (pip install .)")


def nnunet_trainer_folder() -> Path:
    """``nnunetv2/training/nnUNetTrainer`` of the nnunetv2 installed in this Python environment."""
    import nnunetv2

    return Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"


def is_our_shim(path: Path) -> bool:
    """True if ``path`` is the shim: a link to its source, or a file with its exact text (the wheel's copy)."""
    if path.is_symlink():
        return path.resolve() == SHIM_SOURCE.resolve()
    return path.is_file() and path.read_text() == shim_text()


def register(trainer_folder: Path | None = None) -> tuple[Path, str]:
    """Writes the shim module into ``trainer_folder``; returns (path, what happened). Idempotent."""
    folder = Path(trainer_folder) if trainer_folder is not None else nnunet_trainer_folder()
    target = folder / SHIM_MODULE_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"nnU-Net trainer folder {folder} does not exist: is nnunetv2 installed here?")
    if target.exists() or target.is_symlink():
        if is_our_shim(target):
            return target, "already registered"
        raise FileExistsError(
            f"{target} exists and is not nnunet-allukan's trainer module. Remove or rename it, then run "
            "nnUNetv2_allukan_register again.")
    tmp = folder / (SHIM_MODULE_NAME + ".tmp")
    try:
        tmp.write_text(shim_text())
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PermissionError(f"Cannot write {target}: {e}. Run with permission to write into the "
                              "environment's site-packages (or install the wheel: pip install .).") from e
    return target, "registered"


def unregister(trainer_folder: Path | None = None) -> tuple[Path, str]:
    """Removes the shim module if it is ours; returns (path, what happened)."""
    folder = Path(trainer_folder) if trainer_folder is not None else nnunet_trainer_folder()
    target = folder / SHIM_MODULE_NAME
    if not (target.exists() or target.is_symlink()):
        return target, "was not registered"
    if not is_our_shim(target):
        raise FileExistsError(f"{target} is not nnunet-allukan's trainer module; left untouched.")
    target.unlink()
    return target, "removed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_allukan_register",
        description="Make nnUNetv2_train / nnUNetv2_predict find -tr nnUNetTrainerAllUKAN (and the baselines) in an "
                    "editable install by writing a one-line re-export module into nnU-Net's trainer folder. "
                    "Not needed after a regular 'pip install' (the wheel ships that module).")
    parser.add_argument("--remove", action="store_true", help="remove the module again (before pip uninstall of an "
                                                               "editable install)")
    parser.add_argument("--trainer_folder", type=Path, default=None,
                        help="nnU-Net trainer folder to write into (default: nnunetv2/training/nnUNetTrainer of this "
                             "Python environment)")
    args = parser.parse_args(argv)
    try:
        path, outcome = (unregister if args.remove else register)(args.trainer_folder)
    except (OSError, FileExistsError) as e:
        print(f"nnUNetv2_allukan_register: error: {e}", file=sys.stderr)
        return 1
    print(f"{outcome}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
