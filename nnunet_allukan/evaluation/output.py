"""Writing outputs so that a failure leaves nothing half-written behind."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping


def write_text_files(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Write all files into a temporary sibling folder first, then move them into ``folder`` together."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        for name, text in files.items():
            (staging / name).write_text(text)
        folder.mkdir(exist_ok=True)
        written = []
        for name in files:
            os.replace(staging / name, folder / name)
            written.append(folder / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_atomically(path: Path, save: Callable[[Path], None]) -> Path:
    """Call ``save(temporary_path)`` (e.g. a figure's savefig) and move the result to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        save(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
