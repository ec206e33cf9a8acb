"""Reading notebooks into cells with roles.

A notebook is read with the standard library's json so that the CLI stays
fast and so that odd notebooks found in the wild (sources as strings or line
lists, missing metadata, tags that are not lists) never crash the kit: what
cannot be understood is a `KitError` naming the file.

Roles come from cell tags (``metadata.tags``): ``setup``, ``handler`` and
``test``. Everything else (untagged code, markdown, raw cells) is scratch.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError

ROLES = ("setup", "handler", "test")
EXPORTED_ROLES = ("setup", "handler")


@dataclass
class Cell:
    index: int  # 1-based position, counting every cell (markdown too)
    kind: str  # "code", "markdown", "raw"
    source: str
    tags: tuple[str, ...] = ()

    @property
    def role(self) -> str | None:
        """The kit role of this cell, from its tags (None for scratch)."""
        if self.kind != "code":
            return None
        for role in ROLES:
            if role in self.tags:
                return role
        return None


@dataclass
class Notebook:
    name: str  # how the user named the file; used in every message
    path: Path | None
    cells: list[Cell] = field(default_factory=list)

    def with_role(self, *roles: str) -> list[Cell]:
        return [cell for cell in self.cells if cell.role in roles]

    @property
    def exported_cells(self) -> list[Cell]:
        return self.with_role(*EXPORTED_ROLES)

    @property
    def test_cells(self) -> list[Cell]:
        return self.with_role("test")

    @property
    def directory(self) -> Path | None:
        return self.path.parent if self.path else None

    def error(self, message: str, hint: str | None = None, cell: int | None = None, line: int | None = None) -> KitError:
        return KitError(message, hint, notebook=self.name, cell=cell, line=line)


def read_notebook(path: str | Path) -> Notebook:
    """Read an .ipynb file. Raises `KitError` for a missing or malformed file."""
    name = str(path)
    path = Path(path)
    if not path.exists():
        raise KitError("no such file", "check the path", notebook=name)
    if path.is_dir():
        raise KitError("is a directory, not a notebook", "give the path of an .ipynb file", notebook=name)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the file type is checked on
        # what was opened, so /dev/zero or a pipe is refused before anything is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise KitError(f"cannot read the file ({error.strerror})", None, notebook=name) from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KitError("not a notebook (not a regular file)", "give the path of an .ipynb file", notebook=name)
        try:
            raw = file.read()
        except OSError as error:
            raise KitError(f"cannot read the file ({error.strerror})", None, notebook=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KitError("not a notebook (the file is not UTF-8 text)", "give the path of an .ipynb file", notebook=name) from None
    del raw
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise KitError(
            f"not a notebook (invalid JSON at line {error.lineno}, column {error.colno})",
            "give the path of an .ipynb file saved by Jupyter",
            notebook=name,
        ) from None
    except RecursionError:
        raise KitError(
            "not a notebook (its JSON is nested too deeply)", "give the path of an .ipynb file saved by Jupyter", notebook=name
        ) from None
    return notebook_from_dict(data, name=name, path=path)


def notebook_from_dict(data, name: str = "notebook", path: Path | None = None) -> Notebook:
    """Build a `Notebook` from parsed notebook JSON (or an nbformat NotebookNode)."""
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise KitError("not a notebook (no cells)", "give the path of an .ipynb file saved by Jupyter", notebook=name)
    major = data.get("nbformat")
    if "cells" not in data or (isinstance(major, int) and major < 4):
        raise KitError(
            f"nbformat {major} notebooks are not supported",
            "open and save it in JupyterLab, which upgrades it to nbformat 4",
            notebook=name,
        )
    raw_cells = data["cells"]
    if not isinstance(raw_cells, list):
        raise KitError("not a notebook ('cells' is not a list)", None, notebook=name)
    notebook = Notebook(name=name, path=path)
    for position, raw in enumerate(raw_cells, start=1):
        if not isinstance(raw, dict):
            raise KitError("malformed cell (not a JSON object)", None, notebook=name, cell=position)
        cell = Cell(
            index=position,
            kind=str(raw.get("cell_type", "code")),
            source=_join_source(raw.get("source", "")),
            tags=_tags(raw.get("metadata")),
        )
        roles = [role for role in ROLES if role in cell.tags]
        if cell.kind == "code" and len(roles) > 1:
            raise KitError(
                f"the cell is tagged {' and '.join(f'`{r}`' for r in roles)}; a cell has one role",
                "keep one of the tags (split the cell if it does both)",
                notebook=name,
                cell=position,
            )
        notebook.cells.append(cell)
    return notebook


def _join_source(source) -> str:
    if isinstance(source, list):
        return "".join(str(part) for part in source)
    if source is None:
        return ""
    return str(source)


def _tags(metadata) -> tuple[str, ...]:
    if not isinstance(metadata, dict):
        return ()
    tags = metadata.get("tags")
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list):
        return ()
    return tuple(str(tag).strip() for tag in tags)
