"""Writing outputs so that a failure leaves nothing half-written behind, with the modes a plain ``mkdir`` /
``open`` gives under the user's umask (``tempfile.mkdtemp`` / ``mkstemp`` would make them 0700 / 0600, which
the rename into place would keep: unreadable for the rest of a group sharing ``nnUNet_results``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

from nnunet_allukan.filesystem import make_fresh_file, make_fresh_folder, write_error_message
from nnunet_allukan.evaluation.collect import EvaluationError


def output_error(error: OSError, folder: Path, option: str) -> EvaluationError:
    """A clear message for a failed write into ``folder`` (read-only, full, or a file where a folder belongs)."""
    return EvaluationError(write_error_message(error, folder, option) + ".")


def check_output_folder(folder: Path, option: str = "-o") -> None:
    """Fail before the (long) evaluation if ``folder`` cannot be created or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise EvaluationError(f"{option} {folder} is a file, not a folder: pass a folder, or move the file away.")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EvaluationError(f"{option} {folder}: {existing} is a file, not a folder: pass another {option}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EvaluationError(f"{option} {folder}: {existing} is not writable for you: pass a folder you can "
                              "write to.")


def write_text_files(folder: Path, files: Mapping[str, str], option: str = "-o") -> list[Path]:
    """Write all files into a temporary sibling folder first, then move them into ``folder`` together.
    A file-system error becomes an :class:`EvaluationError` naming the path (``option``: the command-line
    option that chose ``folder``, named in the fix)."""
    folder = Path(folder)
    check_output_folder(folder, option)
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = make_fresh_folder(folder.parent, f".{folder.name}.tmp-")
        for name, text in files.items():
            (staging / name).write_text(text)
        folder.mkdir(exist_ok=True)
        written = []
        for name in files:
            os.replace(staging / name, folder / name)
            written.append(folder / name)
        return written
    except OSError as error:
        raise output_error(error, folder, option) from error
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def save_atomically(path: Path, save: Callable[[Path], None], option: str = "-o") -> Path:
    """Call ``save(temporary_path)`` (e.g. a figure's savefig) and move the result to ``path``."""
    path = Path(path)
    if path.is_dir():
        raise EvaluationError(f"{option} {path} is a folder: give the PNG file to write, e.g. {path / 'figure.png'}.")
    check_output_folder(path.parent, option)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = make_fresh_file(path.parent, f".{path.stem}.tmp-", path.suffix)
        save(temporary)
        os.replace(temporary, path)
    except OSError as error:
        raise output_error(error, path.parent, option) from error
    finally:
        if temporary is not None and temporary.exists():
            temporary.unlink()
    return path
