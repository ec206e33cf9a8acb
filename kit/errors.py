"""The exception types for problems a user can fix.

A `KitError` is a mistake in the user's notebook or input: it carries where
the problem is (notebook, 1-based cell position counting every cell, 1-based
line inside the cell) and how to fix it; the CLI prints ``str(error)`` and
exits 2. A `KitEnvironmentError` is a problem of the machine the kit runs on
(a busy port, a worker process that cannot start, a directory it cannot
write): the same one-line message, exit 3. Anything else escaping is a kit bug.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KitWarning:
    """A problem worth telling the user about that does not stop the export."""

    message: str
    notebook: str | None = None
    cell: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        return _locate(self.notebook, self.cell, self.line) + self.message


class KitError(Exception):
    """A mistake in the user's notebook or input."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        notebook: str | None = None,
        cell: int | None = None,
        line: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.notebook = notebook
        self.cell = cell
        self.line = line

    def __str__(self) -> str:
        text = _locate(self.notebook, self.cell, self.line) + self.message
        if self.hint:
            text += f" — {self.hint}"
        return text


def _locate(notebook: str | None, cell: int | None, line: int | None) -> str:
    parts = []
    if notebook:
        parts.append(notebook)
    if cell is not None:
        parts.append(f"cell {cell}" + (f", line {line}" if line is not None else ""))
    return (": ".join(parts) + ": ") if parts else ""


class KitEnvironmentError(KitError):
    """The notebook may be fine; the machine is not: a busy port, a worker that cannot start, a directory it cannot write."""

    exit_code = 3
