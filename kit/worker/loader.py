"""Loading an exported worker's handler.py cell by cell, with its lines mapped back to the notebook.

The two children that run a worker's code inside the kit's own process use it:
`kit test`'s harness (`kit.worker.harness`) and `kit serve --watch`'s reloader
(`kit.worker.reloader`). Each ``# %% cell N [tag]`` chunk of handler.py is
compiled with handler.py's file name and its own line numbers (blank lines in
front), so a traceback points at the real line of handler.py, which
`SourceMap` turns into "notebook cell N, line L". A handler.py written by hand
(no cell markers) is one chunk. The header (comments and ``from __future__``
imports) is compiled on its own, and its future flags apply to every cell.
"""

from __future__ import annotations
import __future__

import re
import shlex
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from kit import percent, workerdir
from kit.percent import PercentCell
from kit.test.events import Frame

FUTURE_FLAGS = 0  # every `from __future__` flag: the ones handler.py's header set carry over to its cells
for _name in __future__.all_feature_names:
    FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag

_FILE_LINE = re.compile(r'(\s*)File "(.+)", line (\d+)(.*)')


@dataclass(frozen=True)
class WorkerSource:
    """handler.py split as the loader runs it: header, cells (one chunk for a file written by hand), footer."""

    path: Path
    header: str
    cells: list[PercentCell] = field(default_factory=list)
    footer: str = ""

    @property
    def exported(self) -> bool:
        """Written by `kit export` (cells with notebook numbers), not by hand."""
        return bool(self.cells) and self.cells[0].cell is not None

    @classmethod
    def read(cls, path: Path) -> WorkerSource:
        text = path.read_text(encoding="utf-8")
        parsed = percent.parse(text)
        if parsed.cells:
            return cls(path, parsed.header, list(parsed.cells), parsed.footer)
        return cls(path, "", [PercentCell(None, "module", text, 1)])  # by hand: one chunk, start call and all


def run_header(source: WorkerSource, namespace: dict) -> int:
    """Run handler.py's header in `namespace`; returns the future flags its cells are compiled with."""
    code = compile(source.header, str(source.path), "exec", dont_inherit=True)
    exec(code, namespace)
    return code.co_flags & FUTURE_FLAGS


def run_cell(path: Path, cell: PercentCell, namespace: dict, flags: int) -> None:
    """Run one cell of `path` in `namespace`, compiled at its own line numbers in that file."""
    code = compile("\n" * (cell.start_line - 1) + cell.source, str(path), "exec", flags, dont_inherit=True)
    exec(code, namespace)


class SourceMap:
    """Maps lines of handler.py and tests.py (and each handler.py a reload ran) back to notebook cells."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[str, list[PercentCell]]] = {}

    def add(self, path: Path, cells: list[PercentCell]) -> None:
        self._files[str(path)] = (path.name, cells)

    def frame(self, filename: str, lineno: int, code: str | None) -> Frame | None:
        if filename not in self._files:
            return None
        name, cells = self._files[filename]
        where = Frame(file=name, file_line=lineno, code=(code or "").strip())
        for cell in reversed(cells):
            if cell.start_line <= lineno:
                where.cell, where.tag, where.line = cell.cell, cell.tag, lineno - cell.start_line + 1
                break
        return where

    def frames_of(self, error: BaseException) -> list[Frame]:
        """The frames of `error`'s traceback that are the user's code, outermost first."""
        found = []
        for entry in traceback.extract_tb(error.__traceback__):
            where = self.frame(entry.filename, entry.lineno or 0, entry.line)
            if where:
                found.append(where)
        if isinstance(error, SyntaxError) and error.filename and error.lineno:
            where = self.frame(error.filename, error.lineno, error.text)
            if where:
                found.append(where)
        return found

    def frames_in_text(self, text: str) -> list[Frame]:
        """The same, from a traceback the SDK formatted as text."""
        found = []
        lines = text.splitlines()
        for number, line in enumerate(lines):
            match = _FILE_LINE.match(line)
            if match:
                code = lines[number + 1] if number + 1 < len(lines) else ""
                where = self.frame(match.group(2), int(match.group(3)), code)
                if where:
                    found.append(where)
        return found

    def mapped_text(self, text: str) -> str:
        """A formatted traceback with each frame of the worker's code named by its notebook cell and line,
        and the worker directory's path (a temporary one, for a notebook) left out."""
        out = []
        for line in text.splitlines(keepends=True):
            match = _FILE_LINE.match(line)
            where = self.frame(match.group(2), int(match.group(3)), None) if match else None
            if match and where:
                cell = f" (notebook cell {where.cell}, line {where.line})" if where.cell is not None else ""
                line = f'{match.group(1)}File "{where.file}", line {where.file_line}{match.group(4)}{cell}\n'
            out.append(line)
        return "".join(out)

    def locate(self, error: BaseException) -> str:
        """`error` in one line: "cell N, line L: Type: message" (its innermost frame in the notebook)."""
        frames = self.frames_of(error)
        where = ""
        if frames and frames[-1].cell is not None:
            where = f"cell {frames[-1].cell}, line {frames[-1].line}: "
        return f"{where}{type(error).__name__}: {error}"


_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def missing_requirements(worker: Path) -> list[tuple[str, str]]:
    """(requirement, why it is there) for each line of the worker's requirements.txt whose
    distribution is not installed in this Python: an import of the worker that fails for want of it."""
    from importlib import metadata  # only after a failed import: it is slow to import

    try:
        lines = (worker / workerdir.REQUIREMENTS).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    missing = []
    for line in lines:
        requirement, _, why = line.partition("#")
        requirement = requirement.strip()
        name = _NAME.match(requirement)
        if not requirement or requirement.startswith("-") or name is None:
            continue
        try:
            metadata.version(name.group(0))
        except metadata.PackageNotFoundError:
            missing.append((requirement, why.strip()))
    return missing


def missing_requirements_hint(worker: Path) -> str | None:
    """What to say after an ImportError in the worker's code when requirements.txt names what is missing."""
    missing = missing_requirements(worker)
    if not missing:
        return None
    named = ", ".join(f"{requirement} (requirements.txt: {why})" if why else requirement for requirement, why in missing)
    install = " ".join(shlex.quote(requirement) for requirement, _ in missing)
    return (
        f"the worker needs {named}, which is not installed in the Python running the kit ({sys.executable}); "
        f"install it there: {shlex.quote(sys.executable)} -m pip install {install}"
    )
