"""Reading a cell's code a piece at a time.

A long cell is cut between top-level statements into pieces of about
PIECE_LINES lines, each parsed on its own, so that what is read of it (its
definitions, imports, the names it binds and reads) can be kept without its
syntax tree, which takes ~150 times the size of the code (a 200,000-line
cell would need gigabytes; read in pieces it exports in about the memory of
the notebook, as tests/test_export.py checks). At
module level a statement means the same in a piece as in the whole cell, but
for the few things that span statements (a misplaced `from __future__`
import, a module-level `global`) and for every error, which is reported as
Python reports it for the whole cell: then the whole cell is read as one piece.
"""

from __future__ import annotations
import __future__

import ast
import io
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from kit.errors import KitError
from kit.export.ipython import TranslatedCell
from kit.export.notebook import Notebook
from kit.export.start_options import module_level_statements

# A cell longer than this is read in pieces of about this many lines.
PIECE_LINES = 1000

Result = TypeVar("Result")


class WholeCell(Exception):
    """A piece cannot be read on its own (an error, or code whose meaning spans pieces): read the whole cell."""


@dataclass(frozen=True)
class Piece:
    offset: int  # the number of the cell's lines before the piece
    text: str
    tree: ast.Module  # its line numbers count from the piece's first line: what is read of it adds the offset
    flags: int  # the compiler flags of the cell's `from __future__` imports, for the pieces after them
    whole: bool  # the piece is the whole cell
    parse_warnings: list[tuple[int, str]]  # (line in the cell, message): Python's while parsing it
    compile_warnings: list[tuple[int, str]]  # and while compiling it


def statement_pieces(source: str) -> Iterable[tuple[int, str]]:
    """The source as (lines before, text) pieces of about PIECE_LINES lines, cut where a top-level statement starts.

    A short source, or one with a carriage return (which tokenize and compile count as
    lines differently), is one piece. A wrong cut leaves a piece that does not parse,
    which reads the whole cell instead: nothing depends on the tokenizer being right.
    """
    if one_piece(source):
        return [(0, source)]
    return _cut(source, _statement_starts(source))


def one_piece(source: str) -> bool:
    return source.count("\n") <= PIECE_LINES or "\r" in source


def _statement_starts(source: str) -> Iterator[int]:
    """The lines, after the first, where a top-level statement starts.

    A logical line at indentation 0 starts one unless it is an `else`, `elif`, `except`
    or `finally` clause or follows a decorator. What the tokenizer cannot read ends them.
    """
    depth = 0
    line_start = True
    after_decorator = False
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.INDENT:
                depth += 1
            elif token.type == tokenize.DEDENT:
                depth -= 1
            elif token.type == tokenize.NEWLINE:
                line_start = True
            elif token.type not in (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER) and line_start:
                line_start = False
                if depth == 0:
                    clause = token.type == tokenize.NAME and token.string in ("else", "elif", "except", "finally")
                    if not (after_decorator or clause) and token.start[0] > 1:
                        yield token.start[0]
                    after_decorator = token.type == tokenize.OP and token.string == "@"
    except (tokenize.TokenError, SyntaxError):
        return


def _cut(source: str, starts: Iterator[int]) -> Iterator[tuple[int, str]]:
    """Pieces of at least PIECE_LINES lines of `source`, cut at some of `starts`."""
    first, begin = 1, 0  # the line the piece starts at, and where in source
    line, position = 1, 0  # a line at or before the next cut, and where in source
    for start in starts:
        if start - first < PIECE_LINES:
            continue
        while line < start:
            position = source.index("\n", position) + 1
            line += 1
        yield first - 1, source[begin:position]
        first, begin = start, position
    yield first - 1, source[begin:]


def _compile(
    text: str, filename: str, flags: int, top_level_await: bool
) -> tuple[ast.Module, list[warnings.WarningMessage], list[warnings.WarningMessage]]:
    """(tree, warnings while parsing, warnings while compiling) of `text`; raises what compile() raises.

    The compiler, not the parser, rejects `await` or `return` outside a function. It also
    applies the cell's `from __future__` imports, given as `flags` to a piece after them.
    """
    with warnings.catch_warnings(record=True) as parsing:
        warnings.simplefilter("always")
        tree = compile(
            text, filename, "exec", ast.PyCF_ONLY_AST | (ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if top_level_await else 0), dont_inherit=True
        )
    with warnings.catch_warnings(record=True) as compiling:
        warnings.simplefilter("always")
        if not top_level_await:
            compile(tree, filename, "exec", flags, dont_inherit=True)
    return tree, parsing, compiling


def _compile_error(notebook: Notebook, cell: int, error: Exception) -> KitError:
    """The KitError for what compile() raised on a whole cell."""
    if isinstance(error, SyntaxError):
        message = error.msg
        hint = "fix the cell so it runs as plain Python"
        if "outside function" in message and "await" in message:
            hint = "a worker module cannot await at import time: wrap the call in asyncio.run(...)"
        return notebook.error(f"syntax error: {message}", hint, cell=cell, line=error.lineno)
    if isinstance(error, ValueError):  # e.g. null bytes in the source
        return notebook.error(f"cannot parse the cell: {error}", None, cell=cell)
    return notebook.error(  # RecursionError, MemoryError
        "the cell's code is nested too deeply (or is too long an expression) for Python to compile",
        "split the expression into smaller statements",
        cell=cell,
    )


def parse_piece(notebook: Notebook, cell: int, offset: int, text: str, flags: int, whole: bool, top_level_await: bool) -> Piece:
    """The piece `text` of cell `cell`, parsed; raises WholeCell (a piece) or KitError (the whole cell) if it does not compile."""
    try:
        tree, parsing, compiling = _compile(text, f"<cell {cell}>", flags, top_level_await)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        if not whole:
            raise WholeCell() from None  # reported as Python reports it for the whole cell
        raise _compile_error(notebook, cell, error) from None
    # Python's own warnings about the cell's code (e.g. an invalid escape sequence), located.
    parse_warnings = [(int(w.lineno) + offset, f"Python: {w.message}") for w in parsing]
    compile_warnings = [(int(w.lineno) + offset, f"Python: {w.message}") for w in compiling]
    return Piece(offset, text, tree, flags, whole, parse_warnings, compile_warnings)


def _pieces(
    notebook: Notebook, translated: TranslatedCell, pieces: Iterable[tuple[int, str]], whole: bool, top_level_await: bool
) -> Iterator[Piece]:
    flags = 0
    for number, (offset, text) in enumerate(pieces):
        piece = parse_piece(notebook, translated.cell.index, offset, text, flags, whole, top_level_await)
        if not whole:
            futures = future_imports(piece.tree)
            if number and futures or any(isinstance(n, ast.Global) for n in module_level_statements(piece.tree.body)):
                raise WholeCell()  # where a `from __future__` import may stand, and what a module-level `global` may follow
            for node in futures:
                for alias in node.names:
                    flags |= getattr(__future__, alias.name).compiler_flag
        yield piece


def read_in_pieces(
    read: Callable[[Iterator[Piece]], Result], notebook: Notebook, translated: TranslatedCell, top_level_await: bool = False
) -> Result:
    """read(pieces) over the cell's pieces, or over the whole cell as one piece when a piece needs it."""
    if not one_piece(translated.source):
        try:
            return read(_pieces(notebook, translated, statement_pieces(translated.source), False, top_level_await))
        except WholeCell:
            pass
    return read(_pieces(notebook, translated, [(0, translated.source)], True, top_level_await))


def future_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "__future__"]
