"""Transforms of an exported cell's code: each takes (a piece of) a cell and returns a new one.

Like nbconvert's preprocessors, a transform never changes what it was given,
and never changes the number of lines, so that line L of the result is line
L of the notebook cell. In the order they run:

- IPython syntax (magics, `!` lines, `%pip`): `kit.export.ipython.translate`;
- a `runpod.serverless.start({...})` call pasted from a worker's handler.py,
  which would start a second worker loop: `RUNPOD_CONFIG = ({...})`
  (see kit.export.start_options), with a note;
- `from __future__` imports, which handler.py has at its top: hoisted out.

A long cell is transformed a piece at a time (kit.export.pieces), each piece
parsed once for the transforms and the facts read after them (kit.export.facts).
"""

from __future__ import annotations

import ast
import dataclasses

from kit.errors import KitError
from kit.export.notebook import Notebook
from kit.export.pieces import Piece, WholeCell, future_imports, parse_piece
from kit.export.start_options import rewrite_start_calls

HOISTED = "# kit: __future__ import hoisted to the top of handler.py"


@dataclasses.dataclass(frozen=True)
class StartRewrite:
    piece: Piece  # the new piece (the one given when there was no start call)
    notes: list[tuple[int, str]]  # (line in the cell, message): one per rewritten call
    python_warnings: list[tuple[int, str]]  # Python's warnings on parsing the new piece


def without_start_calls(notebook: Notebook, cell: int, piece: Piece, aliases: dict[str, set[str]]) -> StartRewrite:
    """The piece with each pasted runpod.serverless.start(...) turned into RUNPOD_CONFIG (see start_options).

    `aliases` are the cell's names for runpod.serverless and its start. Raises KitError for a
    start call the kit cannot take over, and WholeCell when a piece of a cell holds one.
    """
    try:
        text, found = rewrite_start_calls(notebook, cell, piece.text, piece.tree, aliases)
    except KitError:
        if piece.whole:
            raise
        raise WholeCell() from None  # reported as for the whole cell: after any syntax error, the first of several bad calls
    if not found:
        return StartRewrite(piece, [], [])
    again = parse_piece(notebook, cell, piece.offset, text, piece.flags, piece.whole, False)
    notes = [(line + piece.offset, message) for line, message in found]
    return StartRewrite(again, notes, again.parse_warnings + again.compile_warnings)


def hoist_future_imports(piece: Piece) -> tuple[Piece, list[str]]:
    """(the piece without its `from __future__` imports, the features they named, in order)."""
    futures = future_imports(piece.tree)
    if not futures:
        return piece, []
    names: list[str] = []
    lines = piece.text.split("\n")
    for node in futures:
        names += [alias.name for alias in node.names if alias.name not in names]
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        head = lines[first].encode()[: node.col_offset].decode()  # ast's columns count UTF-8 bytes
        tail = lines[last].encode()[node.end_col_offset :].decode()
        if head.strip() or tail.strip():  # it shares a line with other code: `from __future__ import x; y = 1`
            lines[first] = head + "pass" + tail
        else:
            lines[first] = HOISTED
        for number in range(first + 1, last + 1):
            lines[number] = ""
    tree = ast.Module(body=[node for node in piece.tree.body if node not in futures], type_ignores=piece.tree.type_ignores)
    return dataclasses.replace(piece, text="\n".join(lines), tree=tree), names
