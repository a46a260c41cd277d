"""File-system helpers of the converter and the evaluation: outputs are written into a fresh folder and moved
into place only once complete, with the modes a plain ``mkdir`` / ``open`` gives under the user's umask, and a
failed write is described with its fix."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporary folders are then only named
    fcntl = None


def write_error_message(error: OSError, folder: Path, variable: str) -> str:
    """A clear message for a failed write below ``folder`` (read-only, full, or not a folder), with the fix;
    ``variable`` is the environment variable that chose ``folder``."""
    path = error.filename or folder
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = f"Free space on that file system, or set {variable} to a folder on another disk"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"Make {folder} writable for you, or set {variable} to a folder you can write to"
    elif error.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = f"{variable} must name a folder ({folder}): point it to a folder, or move the file away"
    else:
        fix = f"Check {folder} and its file system"
    return f"cannot write {path}: {reason}. {fix}"


def make_fresh_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder created like a plain ``mkdir``: its mode follows the user's umask
    (``tempfile.mkdtemp`` makes 0700, which would stay on the dataset after the rename into place)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(parent / prefix))


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
