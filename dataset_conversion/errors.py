"""The converter's errors: every problem with the user's input raises :class:`ConversionError` with a message
that names the file and says how to fix it; the command line prints it and exits non-zero. Problems of the
source data are collected over all cases and raised together (:class:`ConversionProblems`), so one run
reports them all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nnunet_allukan.filesystem import write_error_message

# At most this many problems are listed; the rest are counted.
MAX_PROBLEMS_SHOWN = 20


class ConversionError(Exception):
    """Bad input or arguments: the message names the offending file/argument and the fix."""


class ConversionProblems(ConversionError):
    """Every problem found in the source data, reported together (the message lists the first
    MAX_PROBLEMS_SHOWN and counts the rest)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more problems" if more > 0 else ""
        return f"{len(self.problems)} problems in the source data; fix all of them, then re-run:\n{shown}{tail}"


def raise_problems(problems: Sequence[str]) -> None:
    if problems:
        raise ConversionProblems(problems)


def filesystem_error(error: OSError, folder: Path, variable: str = "nnUNet_raw") -> ConversionError:
    """A failed write below ``folder`` (read-only, full, or not a folder) as a :class:`ConversionError`."""
    return ConversionError(write_error_message(error, folder, variable))
