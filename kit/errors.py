"""The one exception type for mistakes a user can make and fix.

A `KitError` carries where the problem is (notebook, 1-based cell position
counting every cell, 1-based line inside the cell) and how to fix it. The CLI
prints ``str(error)`` and exits 2; anything else escaping is a kit bug.
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
    """A mistake in the user's notebook, input or environment."""

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
