"""The percent format of the exported files (handler.py, tests.py): one home for writing and reading it.

An exported file is a header (comments, hoisted `from __future__` imports),
then for each notebook cell a marker line ``# %% cell N [tag]`` followed by
the cell's code, then (handler.py only) a footer that starts with
``# %% worker start``. Line L of notebook cell N is the marker's line + L, so
a traceback in the file maps back to the notebook. `kit.export.export` writes
it with `render`; the `kit test` harness reads it back with `parse`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"^# %% cell (\d+) \[(\w+)\]\s*$")
FOOTER = "# %% worker start"


@dataclass
class PercentCell:
    cell: int | None  # the notebook cell this code came from (1-based, every cell counted); None: not exported
    tag: str
    source: str
    start_line: int  # line number, in the file, of the cell's first code line


@dataclass
class PercentFile:
    header: str  # everything before the first marker
    cells: list[PercentCell] = field(default_factory=list)
    footer: str = ""  # from the footer marker to the end


def marker(cell: int, tag: str) -> str:
    return f"# %% cell {cell} [{tag}]"


def render(header: str, cells: list[tuple[int, str, str]], footer: str = "") -> str:
    """The file for `cells`, given as (notebook cell, tag, source); `footer` must start with FOOTER."""
    if footer and not footer.startswith(FOOTER):
        raise ValueError(f"the footer must start with {FOOTER!r}")
    parts = [header]
    for cell, tag, source in cells:
        parts.append(f"\n{marker(cell, tag)}\n")
        parts.append(source if source.endswith("\n") or not source else source + "\n")
    if footer:
        parts.append("\n\n")
        parts.append(footer)
    return "".join(parts)


def parse(text: str) -> PercentFile:
    """Split an exported file back into its header, notebook cells and footer.

    A file with no marker (a handler.py written by hand) has no cells: all of
    it is the header.
    """
    lines = text.splitlines(keepends=True)
    result = PercentFile(header="")
    current: PercentCell | None = None
    footer_at: int | None = None
    for number, line in enumerate(lines, start=1):
        match = MARKER.match(line)
        if match:
            current = PercentCell(int(match.group(1)), match.group(2), "", number + 1)
            result.cells.append(current)
        elif line.startswith(FOOTER):
            footer_at = number
            break
        elif current is not None:
            current.source += line
        else:
            result.header += line
    if footer_at is not None:
        result.footer = "".join(lines[footer_at - 1 :])
    return result


def split_percent(text: str) -> list[PercentCell]:
    """The notebook cells of an exported file (the footer is not one)."""
    return parse(text).cells


def read_percent_cells(path: str | Path) -> list[PercentCell]:
    return split_percent(Path(path).read_text(encoding="utf-8"))
