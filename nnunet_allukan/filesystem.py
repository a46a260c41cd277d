"""File-system helpers of the commands: outputs are written into a fresh folder and moved into place only once
complete, with the modes a plain ``mkdir`` / ``open`` gives under the user's umask; a failed write is described
with its fix; ``--overwrite`` removes only a folder that the command itself made."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporary folders are then only named
    fcntl = None


def write_error_message(error: OSError, folder: Path, chosen_by: str) -> str:
    """A clear message for a failed write below ``folder`` (read-only, full, or a file in the way), with the fix;
    ``chosen_by`` is what chose ``folder``: an environment variable (``nnUNet_raw``) or a command-line option
    (``-o``)."""
    path = error.filename or folder
    reason = error.strerror or str(error)
    choose = f"pass {chosen_by} with" if chosen_by.startswith("-") else f"set {chosen_by} to"
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = f"Free space on that file system, or {choose} a folder on another disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"Make {folder} writable for you, or {choose} a folder you can write to"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        fix = f"A file is in the way of {folder}: move it away, or {choose} another folder"
    else:
        fix = f"Check {folder} and its file system, or {choose} another folder"
    return f"cannot write {path}: {reason}. {fix}"


def make_fresh_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder created like a plain ``mkdir``: its mode follows the user's umask
    (``tempfile.mkdtemp`` makes 0700, which would stay on the dataset after the rename into place)."""
    return _make_fresh(parent, prefix, "", Path.mkdir)


def make_fresh_file(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new, uniquely named empty file created like a plain ``open``: its mode follows the user's umask
    (``tempfile.mkstemp`` makes 0600, which would stay on the file after the rename into place)."""
    return _make_fresh(parent, prefix, suffix,
                       lambda path: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))


def _make_fresh(parent: Path, prefix: str, suffix: str, create) -> Path:
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / prefix))


def try_lock(folder: Path) -> int | None:
    """An exclusive advisory lock on ``folder``, held by the returned descriptor (released when it is closed
    or the process dies); None where locks are unavailable. Raises BlockingIOError if another process holds it."""
    if fcntl is None:
        return None
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def move_into_place(temporary: Path, target: Path) -> None:
    """Rename the complete folder ``temporary`` to ``target``; an existing ``target`` is moved aside first and
    removed only once the new one is in place (put back if the rename fails)."""
    if not target.exists():
        os.rename(temporary, target)
        return
    old = target.parent / f".old_{target.name}_{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        os.rename(temporary, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# Written into every output folder a command of this project creates (its text: the command's name). --overwrite
# removes a folder only if it holds this file and nothing but what that command writes there.
OUTPUT_MARKER = ".nnunet_allukan_output"


class OverwriteRefused(Exception):
    """``--overwrite`` was given a folder that the command did not make (or one it must never remove); the
    message names the folder and what to do. Nothing was removed."""


def protected_folders() -> dict[Path, str]:
    """Folders that --overwrite never removes, nor any folder that contains one of them."""
    folders = {Path.cwd().resolve(): "the current directory",
               Path(__file__).resolve().parents[1]: "the folder of nnunet-allukan itself"}
    try:
        folders[Path.home().resolve()] = "your home folder"
    except RuntimeError:  # no home directory can be determined
        pass
    return folders


def mark_output_folder(folder: Path, command: str) -> None:
    """Record in ``folder`` (just created by ``command``) that ``command --overwrite`` may replace it."""
    (Path(folder) / OUTPUT_MARKER).write_text(f"{command}\n")


def check_replaceable(folder: Path, command: str, contents: Iterable[str], instead: str) -> None:
    """Raise :class:`OverwriteRefused` unless ``command --overwrite`` may remove ``folder``: it holds the marker
    of ``command``, nothing but ``contents`` besides it, and is none of :func:`protected_folders` nor contains
    one. ``instead`` is the way out the message offers (e.g. "pick another folder with -o")."""
    folder = Path(folder).resolve()
    protected = protected_folders()
    where = protected.get(folder) or next((f"a folder that holds {what} ({inner})" for inner, what in protected.items()
                                           if folder in inner.parents), None)
    if where:
        raise OverwriteRefused(f"--overwrite will not remove {folder}: it is {where}. Nothing was removed; {instead}.")
    marker = folder / OUTPUT_MARKER
    try:
        made_by = marker.read_text().strip()
    except OSError:
        made_by = None
    if made_by != command:
        raise OverwriteRefused(
            f"--overwrite removes only a folder that {command} made, and {folder} has no {OUTPUT_MARKER} of "
            f"{command} (it holds other files, or an earlier version of {command} made it). Nothing was removed; "
            f"delete the folder by hand if nothing in it is yours, or {instead}.")
    allowed = set(contents) | {OUTPUT_MARKER}
    foreign = sorted(entry.name for entry in folder.iterdir() if entry.name not in allowed)
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OverwriteRefused(f"--overwrite will not remove {folder}: it holds {listed}, which {command} did not "
                               f"write. Nothing was removed; move those out of it, or {instead}.")


def remove_output_folder(folder: Path, command: str, contents: Iterable[str], instead: str) -> None:
    """Remove ``folder`` for ``command --overwrite`` after :func:`check_replaceable` allowed it."""
    check_replaceable(folder, command, contents, instead)
    shutil.rmtree(Path(folder).resolve())
