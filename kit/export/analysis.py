"""Static checks on the exported code, before anything is written.

The worker is the `setup` and `handler` cells run top to bottom as one
module. These checks catch, at export time, what would otherwise only fail
in production: no handler, a handler that cannot take a job, a name that
only an untagged cell defines ("works in my notebook, NameError in the
worker"), a syntax error, a top-level `await` a module cannot run.

A cell is read a piece at a time: a long cell is cut between top-level
statements into pieces of about PIECE_LINES lines, each parsed on its own,
and only what the checks need is kept of it (its definitions, imports, the
names it binds and reads), not its syntax tree, which takes ~150 times the
size of the code. At module level a statement means the same in a piece as
in the whole cell, but for the few things that span statements (a misplaced
`from __future__` import, a module-level `global`) and for every error,
which is reported as Python reports it for the whole cell: then the whole
cell is read as one piece.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import difflib
import io
import symtable
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from kit.errors import KitError, KitWarning
from kit.export.ipython import TranslatedCell, translate
from kit.export.notebook import ROLES, Notebook
from kit.export.start_options import (
    StartCode,
    StartOptions,
    check_start_options,
    may_call_start,
    module_level_statements,
    rewrite_start_calls,
    start_aliases,
)

MODULE_NAMES = {
    "__name__",
    "__file__",
    "__doc__",
    "__builtins__",
    "__spec__",
    "__loader__",
    "__package__",
    "__path__",
    "__annotations__",
    "__dict__",
}
NOTEBOOK_ONLY_NAMES = {
    "display": "display() exists only in IPython: use print(), or return the value",
    "get_ipython": "get_ipython() is None outside IPython: a worker cannot use it",
    "In": "In is IPython's input history, which a worker does not have",
    "Out": "Out is IPython's output history, which a worker does not have",
}


# The names the handler checks look up among a cell's top-level definitions.
BATCH_SETTINGS = ("MAX_BATCH_SIZE", "MAX_BATCH_WAIT_MS")
LOOKED_UP = ("handler", "batch_handler", *BATCH_SETTINGS)
# A cell longer than this is read in pieces of about this many lines (see the module's docstring).
PIECE_LINES = 1000


@dataclass
class Function:
    """What the checks need of a top-level `def` (not its body)."""

    name: str
    line: int
    kind: str  # "function", "async", "generator", "async_generator"
    takes_one_argument: bool


@dataclass
class Definition:
    """A top-level statement binding a name the checks look up: every `def`, every
    `name = other_name`, and the classes and assignments that bind a name of LOOKED_UP."""

    names: tuple[str, ...]
    line: int
    function: Function | None = None
    value: ast.expr | None = None  # of an `=` statement that names another (`handler = f`) or binds a batch setting


@dataclass
class ParsedCell:
    """An exported cell: its translated code and what the checks read of it (not its syntax tree)."""

    translated: TranslatedCell
    definitions: list[Definition] = field(default_factory=list)  # in order
    start_code: StartCode = field(default_factory=StartCode)
    future_imports: list[str] = field(default_factory=list)  # hoisted out of translated.source
    imports: list[Import] = field(default_factory=list)
    bindings: set[str] = field(default_factory=set)  # the names its top-level statements bind
    first_use: dict[str, int] = field(default_factory=dict)  # each name it mentions -> the first line that does
    annotation_only: set[str] = field(default_factory=set)  # the names it mentions only in annotations
    star_import: bool = False  # `from x import *` somewhere
    defined: set[str] = field(default_factory=set)  # the module-level names it binds (symtable's view)
    reads: set[str] = field(default_factory=set)  # the names it reads from the module or builtins and does not bind

    @property
    def index(self) -> int:
        return self.translated.cell.index

    @property
    def role(self) -> str:
        return self.translated.cell.role


@dataclass
class Import:
    module: str  # top-level module name
    dotted: str  # the full dotted name imported
    cell: int
    line: int
    optional: bool  # inside a try that catches ImportError


@dataclass
class Analysis:
    cells: list[ParsedCell]  # exported cells, in notebook order
    handler_kind: str  # "function", "async", "generator", "async_generator"
    has_concurrency_modifier: bool
    future_imports: list[str]
    imports: list[Import]
    warnings: list[KitWarning] = field(default_factory=list)
    start: StartOptions = field(default_factory=StartOptions)  # RUNPOD_CONFIG, the options of the worker's start
    batch_handler_kind: str | None = None  # "function" or "async" when a handler cell defines batch_handler(jobs)
    defines_handler: bool = True  # False: only batch_handler, and the export provides handler(job)


def analyse(notebook: Notebook) -> Analysis:
    """Translate, parse and check the exported cells. Raises KitError on the first problem."""
    check_near_miss_tags(notebook)
    if not notebook.with_role("handler"):
        where = _defined_in(notebook, "handler", roles=(None, "setup", "test"))
        hint = "tag the cell that defines handler(job) with `handler`"
        if where:
            hint = f"handler is defined in cell {where}: add the tag `handler` to that cell"
        raise notebook.error("no cell is tagged `handler`", hint)

    cells = [_read_exported(notebook, translate(notebook, cell, "export")) for cell in notebook.exported_cells]

    batch_def = _check_batch_handler(notebook, cells)
    defines_handler = batch_def is None or any("handler" in d.names for c in cells for d in c.definitions)
    handler_def = _check_handler(notebook, cells) if defines_handler else batch_def[1]
    start = check_start_options(notebook, cells)
    future: list[str] = []
    for parsed in cells:
        future += [name for name in parsed.future_imports if name not in future]
    _check_names(notebook, cells, lazy_annotations="annotations" in future)

    analysis = Analysis(
        cells=cells,
        handler_kind=_handler_kind(_resolve_handler(notebook, cells, handler_def, start)),
        has_concurrency_modifier=any("concurrency_modifier" in c.bindings for c in cells),
        future_imports=future,
        imports=sorted((i for c in cells for i in c.imports), key=lambda i: (i.cell, i.line)),
        warnings=[KitWarning(message, notebook.name, cell, line) for cell, line, message in start.warnings],
        start=start,
        batch_handler_kind=None if batch_def is None else _handler_kind(batch_def[1]),
        defines_handler=defines_handler,
    )
    for parsed in cells:
        analysis.warnings += parsed.translated.warnings
    return analysis


def check_near_miss_tags(notebook: Notebook) -> None:
    """A tag a letter or a case away from a role (`tests`, `Setup`) is a mistake, not scratch.

    Ignored, it would drop a setup cell or skip every test in silence (a green CI
    with nothing tested), so it is an export error naming the tag.
    """
    for cell in notebook.cells:
        if cell.kind != "code":
            continue
        for tag in cell.tags:
            if tag in ROLES:
                continue
            close = [tag.lower()] if tag.lower() in ROLES else difflib.get_close_matches(tag.lower(), ROLES, n=1, cutoff=0.8)
            if close and close[0] != cell.role:
                raise notebook.error(
                    f"tag `{tag}` is not a kit role, so the cell would be ignored",
                    f"did you mean `{close[0]}`? (the roles are `setup`, `handler` and `test`, in lower case)",
                    cell=cell.index,
                )


def _role_name(cell) -> str:
    """How a message names a cell's role: its role, or what its tags are when it has none."""
    if cell.role:
        return cell.role
    if cell.tags:
        return "tagged " + ", ".join(f"`{t}`" for t in cell.tags) + ", not a kit role"
    return "untagged"


# --------------------------------------------------------------------------- reading a cell in pieces


class _WholeCell(Exception):
    """A piece cannot be read on its own (an error, or code whose meaning spans pieces): read the whole cell."""


@dataclass
class _Piece:
    offset: int  # the number of the cell's lines before the piece
    text: str
    tree: ast.Module  # its line numbers count from the piece's first line: what is read of it adds the offset
    flags: int  # the compiler flags of the cell's `from __future__` imports, for the pieces after them
    whole: bool  # the piece is the whole cell
    parse_warnings: list[tuple[int, str]]  # (line in the cell, message): Python's while parsing it
    compile_warnings: list[tuple[int, str]]  # and while compiling it


def _statement_pieces(source: str) -> Iterable[tuple[int, str]]:
    """The source as (lines before, text) pieces of about PIECE_LINES lines, cut where a top-level statement starts.

    A short source, or one with a carriage return (which tokenize and compile count as
    lines differently), is one piece. A wrong cut leaves a piece that does not parse,
    which reads the whole cell instead: nothing depends on the tokenizer being right.
    """
    if _one_piece(source):
        return [(0, source)]
    return _cut(source, _statement_starts(source))


def _one_piece(source: str) -> bool:
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


def _compile(text: str, filename: str, flags: int, top_level_await: bool):
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


def _compile_error(notebook: Notebook, cell: int, error: Exception):
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


def _parse_piece(notebook: Notebook, cell: int, offset: int, text: str, flags: int, whole: bool, top_level_await: bool) -> _Piece:
    try:
        tree, parsing, compiling = _compile(text, f"<cell {cell}>", flags, top_level_await)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        if not whole:
            raise _WholeCell() from None  # reported as Python reports it for the whole cell
        raise _compile_error(notebook, cell, error) from None
    # Python's own warnings about the cell's code (e.g. an invalid escape sequence), located.
    located = [[(w.lineno + offset, f"Python: {w.message}") for w in caught] for caught in (parsing, compiling)]
    return _Piece(offset, text, tree, flags, whole, *located)


def _pieces(
    notebook: Notebook, translated: TranslatedCell, pieces: Iterable[tuple[int, str]], whole: bool, top_level_await: bool
) -> Iterator[_Piece]:
    flags = 0
    for number, (offset, text) in enumerate(pieces):
        piece = _parse_piece(notebook, translated.cell.index, offset, text, flags, whole, top_level_await)
        if not whole:
            futures = _future_imports(piece.tree)
            if number and futures or any(isinstance(n, ast.Global) for n in module_level_statements(piece.tree.body)):
                raise _WholeCell()  # where a `from __future__` import may stand, and what a module-level `global` may follow
            for node in futures:
                for alias in node.names:
                    flags |= getattr(__future__, alias.name).compiler_flag
        yield piece


def _read_in_pieces(
    read: Callable[[Iterator[_Piece]], object], notebook: Notebook, translated: TranslatedCell, top_level_await: bool = False
):
    """read(pieces) over the cell's pieces, or over the whole cell as one piece when a piece needs it."""
    if not _one_piece(translated.source):
        try:
            return read(_pieces(notebook, translated, _statement_pieces(translated.source), False, top_level_await))
        except _WholeCell:
            pass
    return read(_pieces(notebook, translated, [(0, translated.source)], True, top_level_await))


def _future_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "__future__"]


def _read_exported(notebook: Notebook, translated: TranslatedCell) -> ParsedCell:
    """An exported cell with its start calls rewritten and its `from __future__` imports hoisted, read."""
    aliases: dict[str, set[str]] = {"serverless": set(), "start": set()}  # the cell's names for runpod.serverless and its start

    def read(pieces):
        return _read_exported_pieces(notebook, translated, pieces, aliases)

    parsed, source, python_warnings, late = _read_in_pieces(read, notebook, translated)
    if late:  # a piece imports an alias of runpod.serverless.start that the pieces before it may call
        parsed, source, python_warnings, late = _read_in_pieces(read, notebook, translated)
    translated.source = source
    for line, message in python_warnings:
        translated.warn(line, message)
    return parsed


def _read_exported_pieces(notebook: Notebook, translated: TranslatedCell, pieces: Iterator[_Piece], aliases: dict[str, set[str]]):
    """(ParsedCell, the new source, Python's warnings and the rewrites' notes, whether an alias came late)."""
    parsed = ParsedCell(translated)
    texts: list[str] = []
    parsing, compiling, notes, reparsing = [], [], [], []
    late = False
    for number, piece in enumerate(pieces):
        parsing += piece.parse_warnings
        compiling += piece.compile_warnings
        text, tree = piece.text, piece.tree
        if aliases["start"] or may_call_start(piece.text):
            found = start_aliases(piece.tree)
            late |= number > 0 and any(found[kind] - aliases[kind] for kind in aliases)
            for kind in aliases:
                aliases[kind] |= found[kind]
            text, tree = _without_start_calls(notebook, translated, piece, aliases, notes, reparsing)
        text = _hoist_future_imports(parsed, text, tree)
        _read_facts(parsed, tree, piece.offset)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # _parse_piece already reported them, located
            table = symtable.symtable(text, f"<cell {parsed.index}>", "exec")
        parsed.defined |= _table_bindings(table)
        parsed.reads |= _global_reads(table)
        texts.append(text)
    parsed.reads -= parsed.defined  # read in one piece, bound in another
    return parsed, "".join(texts), parsing + compiling + notes + reparsing, late


def _without_start_calls(notebook: Notebook, translated: TranslatedCell, piece: _Piece, aliases, notes: list, reparsing: list):
    """(text, tree) of the piece with a pasted runpod.serverless.start(...) turned into RUNPOD_CONFIG (see start_options)."""
    try:
        text, found = rewrite_start_calls(notebook, translated.cell.index, piece.text, piece.tree, aliases)
    except KitError:
        if piece.whole:
            raise
        raise _WholeCell() from None  # reported as for the whole cell: after any syntax error, the first of several bad calls
    if not found:
        return piece.text, piece.tree
    notes += [(line + piece.offset, message) for line, message in found]
    again = _parse_piece(notebook, translated.cell.index, piece.offset, text, piece.flags, piece.whole, False)
    reparsing += again.parse_warnings + again.compile_warnings
    return text, again.tree


def _hoist_future_imports(parsed: ParsedCell, text: str, tree: ast.Module) -> str:
    """The piece without its `from __future__` imports, which handler.py has at its top; their features noted."""
    futures = _future_imports(tree)
    if not futures:
        return text
    lines = text.split("\n")
    for node in futures:
        parsed.future_imports += [alias.name for alias in node.names if alias.name not in parsed.future_imports]
        first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
        head = lines[first].encode()[: node.col_offset].decode()  # ast's columns count UTF-8 bytes
        tail = lines[last].encode()[node.end_col_offset :].decode()
        if head.strip() or tail.strip():  # it shares a line with other code: `from __future__ import x; y = 1`
            lines[first] = head + "pass" + tail
        else:
            lines[first] = "# kit: __future__ import hoisted to the top of handler.py"
        for number in range(first + 1, last + 1):
            lines[number] = ""
    tree.body = [node for node in tree.body if node not in futures]
    return "\n".join(lines)


def _read_facts(parsed: ParsedCell, tree: ast.Module, offset: int) -> None:
    """Add what the checks need of a piece (its line numbers counted from `offset`) to `parsed`."""
    parsed.definitions += filter(None, (_definition(node, offset) for node in tree.body))
    parsed.start_code.add(tree, offset)
    parsed.bindings |= _module_bindings(tree)
    optional_lines = _optional_import_lines(tree)
    first_use: dict[str, int] = {}
    in_annotations: set[str] = set()
    elsewhere: set[str] = set()
    annotation_nodes: set[int] = set()
    for node in ast.walk(tree):  # parents before children: an annotation is marked before its names are met
        for annotation in _annotations(node):
            for n in ast.walk(annotation):
                annotation_nodes.add(id(n))
                if isinstance(n, ast.Name):
                    in_annotations.add(n.id)
        if isinstance(node, ast.Name):
            if id(node) not in annotation_nodes:
                elsewhere.add(node.id)
            _note_first_use(first_use, node, offset)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            parsed.star_import |= any(alias.name == "*" for alias in node.names)
            parsed.imports += _imports(node, parsed.index, offset, node.lineno in optional_lines)
    # Only in annotations: so far in the cell (not mentioned before, or only in annotations) and in this piece.
    only_here = {name for name in in_annotations - elsewhere if name not in parsed.first_use or name in parsed.annotation_only}
    parsed.annotation_only = (parsed.annotation_only - elsewhere) | only_here
    for name, line in first_use.items():
        parsed.first_use.setdefault(name, line)  # an earlier piece's lines come first


def _note_first_use(first_use: dict[str, int], node: ast.Name, offset: int) -> None:
    """Keep in `first_use` the earliest line (counted from `offset`) that mentions `node`'s name."""
    line = node.lineno + offset
    if line < first_use.get(node.id, line + 1):
        first_use[node.id] = line


def _annotations(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.arg):
        annotations = [node.annotation]
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        annotations = [node.returns]
    elif isinstance(node, ast.AnnAssign):
        annotations = [node.annotation]
    else:
        return []
    return [a for a in annotations if a is not None]


def _definition(node: ast.stmt, offset: int) -> Definition | None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        function = Function(node.name, node.lineno + offset, _function_kind(node), _takes_one_argument(node))
        return Definition((node.name,), function.line, function)
    if isinstance(node, ast.ClassDef):
        names = (node.name,)
    elif isinstance(node, ast.Assign):
        names = tuple(dict.fromkeys(t.id for t in node.targets if isinstance(t, ast.Name)))
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        names = (node.target.id,)
    else:
        return None
    alias = isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
    if not names or not alias and not any(name in LOOKED_UP for name in names):
        return None
    keep_value = isinstance(node, ast.Assign) and (alias or any(name in BATCH_SETTINGS for name in names))
    return Definition(names, node.lineno + offset, value=node.value if keep_value else None)


# --------------------------------------------------------------------------- handler


def _definition_in_handler_cells(notebook: Notebook, cells: list[ParsedCell], name: str):
    """(cell, Definition) of the last top-level definition of `name`, or None; it must be in a `handler` cell."""
    definition = None
    for parsed in cells:
        for candidate in parsed.definitions:
            if name in candidate.names:
                if parsed.role != "handler":
                    raise notebook.error(
                        f"{name} is defined in a cell tagged `{parsed.role}`",
                        "tag that cell `handler` instead",
                        cell=parsed.index,
                        line=candidate.line,
                    )
                definition = (parsed, candidate)
    return definition


def _check_handler(notebook: Notebook, cells: list[ParsedCell]) -> Function | None:
    definition = _definition_in_handler_cells(notebook, cells, "handler")
    if definition is None:
        where = _defined_in(notebook, "handler", roles=(None, "test"))
        if where:
            raise notebook.error(
                f"handler is defined only in cell {where}, which is not exported",
                "move the definition into the cell tagged `handler`, or tag that cell `handler`",
                cell=where,
            )
        first = notebook.with_role("handler")[0]
        found = [d.function.name for c in cells if c.role == "handler" for d in c.definitions if d.function]
        if found:
            raise notebook.error(
                f"no function named `handler` in the cells tagged `handler` (found `{'`, `'.join(found)}`)",
                f"rename it `def handler(job):`, or add `handler = {found[-1]}`",
                cell=first.index,
            )
        raise notebook.error(
            "no handler function is defined in the cells tagged `handler`",
            "define `def handler(job):` in a cell tagged `handler`",
            cell=first.index,
        )
    parsed, found = definition
    if found.function:
        _check_signature(notebook, parsed, found.function)
    return found.function  # None for `handler = something`: its kind cannot be known statically


def _resolve_handler(notebook: Notebook, cells: list[ParsedCell], definition: Function | None, start: StartOptions) -> Function | None:
    """The function the worker starts with: `handler`, through aliases (`handler = async_generator_handler`)
    and RUNPOD_CONFIG's "handler", so its kind (a generator?) is known. None when it cannot be known."""
    functions: dict[str, tuple[ParsedCell, Definition]] = {}
    for parsed in cells:
        for candidate in parsed.definitions:
            if candidate.function:
                functions[candidate.function.name] = (parsed, candidate)
            elif isinstance(candidate.value, ast.Name):
                for name in candidate.names:
                    functions[name] = (parsed, candidate)
    started = functions.get(start.handler_name or "handler")
    if started is None:
        return definition
    current = started[1]
    for _ in range(10):  # alias chains are short; a cycle is not followed forever
        if current.function or not (isinstance(current.value, ast.Name) and current.value.id in functions):
            break
        parsed, current = functions[current.value.id]
        if current.function:
            _check_signature(notebook, parsed, current.function)
    return current.function


def _takes_one_argument(node) -> bool:
    args = node.args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    required_keyword = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    return bool(positional or args.vararg) and required <= 1 and not required_keyword


def _check_signature(notebook: Notebook, parsed: ParsedCell, function: Function) -> None:
    if not function.takes_one_argument:
        raise notebook.error(
            "handler must accept exactly one positional argument, the job",
            "define it as `def handler(job):`",
            cell=parsed.index,
            line=function.line,
        )


def _check_batch_handler(notebook: Notebook, cells: list[ParsedCell]):
    """(cell, Function or None) of the `batch_handler(jobs)` a handler cell defines, or None; its settings checked."""
    definition = _definition_in_handler_cells(notebook, cells, "batch_handler")
    settings = [
        (parsed, candidate, name)
        for parsed in cells
        for candidate in parsed.definitions
        for name in BATCH_SETTINGS
        if candidate.value is not None and name in candidate.names
    ]
    if definition is None:
        return None
    for parsed_setting, candidate, name in settings:
        _check_batch_setting(notebook, parsed_setting, candidate, name)
    parsed, found = definition
    function = found.function
    if function is None:
        return parsed, None  # `batch_handler = something`: the worker finds out at run time
    if not function.takes_one_argument:
        raise notebook.error(
            "batch_handler must accept exactly one positional argument, the list of jobs",
            "define it as `def batch_handler(jobs):`, returning one result per job in the same order",
            cell=parsed.index,
            line=function.line,
        )
    if function.kind in ("generator", "async_generator"):
        raise notebook.error(
            "batch_handler cannot be a generator: it returns a list with one result per job",
            "return the list; for streaming, write a generator `handler(job)` instead",
            cell=parsed.index,
            line=function.line,
        )
    return parsed, function


def _check_batch_setting(notebook: Notebook, parsed: ParsedCell, setting: Definition, name: str) -> None:
    value = _literal(setting.value)
    if value is None and not isinstance(setting.value, ast.Constant):
        return  # computed (e.g. from os.environ): checked when the worker starts
    if name == "MAX_BATCH_SIZE":
        ok, needed = isinstance(value, int) and not isinstance(value, bool) and value >= 1, "a whole number of at least 1"
    else:
        ok, needed = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"),
            "a number of milliseconds, 0 or more",
        )
    if not ok:
        raise notebook.error(
            f"{name} must be {needed}, not {value!r}",
            f"set e.g. `{name} = {16 if name == 'MAX_BATCH_SIZE' else 10}`",
            cell=parsed.index,
            line=setting.line,
        )


def _handler_kind(function: Function | None) -> str:
    return "function" if function is None else function.kind


def _function_kind(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    generator = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _walk_own_body(node))
    if isinstance(node, ast.AsyncFunctionDef):
        return "async_generator" if generator else "async"
    return "generator" if generator else "function"


def _walk_own_body(function):
    """Nodes of a function's body, not descending into nested scopes."""
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    stack = [node for node in function.body if not isinstance(node, scopes)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, scopes))


# --------------------------------------------------------------------------- names


def _check_names(notebook: Notebook, cells: list[ParsedCell], lazy_annotations: bool) -> None:
    if any(c.star_import for c in cells):
        return  # `from x import *`: what it defines cannot be known without importing x
    known = set().union(*(c.defined for c in cells)) | set(dir(builtins)) | MODULE_NAMES
    if lazy_annotations:  # `from __future__ import annotations`: annotations are never evaluated
        known |= _annotation_only_names(cells)
    for parsed in cells:
        for name in sorted(parsed.reads):
            if name in known:
                continue
            line = parsed.first_use.get(name)
            if name in NOTEBOOK_ONLY_NAMES:
                raise notebook.error(f"`{name}` is not defined in a worker", NOTEBOOK_ONLY_NAMES[name], cell=parsed.index, line=line)
            where = _defined_in(notebook, name, roles=(None, "test"))
            if where:
                role = _role_name(notebook.cells[where - 1])
                raise notebook.error(
                    f"`{name}` is defined only in cell {where} ({role}), which is not exported",
                    f"tag cell {where} `setup`, or move the definition into a `setup` or `handler` cell",
                    cell=parsed.index,
                    line=line,
                )
            raise notebook.error(
                f"`{name}` is not defined anywhere in the notebook",
                "define or import it in a `setup` cell",
                cell=parsed.index,
                line=line,
            )


def _annotation_only_names(cells: list[ParsedCell]) -> set[str]:
    """The names the cells mention only in annotations: in one cell's annotations, and in no cell elsewhere."""
    return {
        name
        for parsed in cells
        for name in parsed.annotation_only
        if all(name not in c.first_use or name in c.annotation_only for c in cells)
    }


def _table_bindings(table: symtable.SymbolTable) -> set[str]:
    """Module-level names a module's code binds (including `global x` assignments in functions)."""
    names = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    for child in _nested_scopes(table):
        names |= {s.get_name() for s in child.get_symbols() if s.is_declared_global() and s.is_assigned()}
    return names


def _global_reads(table: symtable.SymbolTable) -> set[str]:
    """Names a module's code reads from the module namespace or builtins."""
    reads = {
        s.get_name() for s in table.get_symbols() if s.is_referenced() and not (s.is_assigned() or s.is_imported() or s.is_namespace())
    }
    for child in _nested_scopes(table):
        reads |= {s.get_name() for s in child.get_symbols() if s.is_referenced() and s.is_global()}
    return reads


def _nested_scopes(table: symtable.SymbolTable):
    """Every function, class and comprehension scope below a module's table."""
    stack = list(table.get_children())
    while stack:
        child = stack.pop()
        stack.extend(child.get_children())
        yield child


def _module_bindings(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _defined_in(notebook: Notebook, name: str, roles) -> int | None:
    """The first cell with one of `roles` that binds `name` at module level."""
    for cell in notebook.cells:
        if cell.kind != "code" or cell.role not in roles:
            continue
        try:
            translated = translate(notebook, cell, "scan")
            bound = _read_in_pieces(
                lambda pieces: set().union(*(_module_bindings(p.tree) for p in pieces)), notebook, translated, top_level_await=True
            )
        except Exception:  # scratch cells may hold anything; they only help explain
            continue
        if name in bound:
            return cell.index
    return None


# --------------------------------------------------------------------------- imports


def _imports(node: ast.Import | ast.ImportFrom, cell: int, offset: int, optional: bool) -> list[Import]:
    if isinstance(node, ast.Import):
        modules = [alias.name for alias in node.names]
    elif node.level == 0 and node.module:
        modules = [node.module]
    else:
        return []
    return [Import(module.split(".")[0], module, cell, node.lineno + offset, optional) for module in modules]


def _optional_import_lines(tree: ast.AST) -> set[int]:
    """Lines of imports inside a `try` whose handlers catch ImportError."""
    catching = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        names = set()
        for handler in node.handlers:
            if handler.type is None:
                names.add("Exception")
            for n in ast.walk(handler.type) if handler.type else []:
                if isinstance(n, ast.Name):
                    names.add(n.id)
        if names & catching:
            for statement in node.body:
                for n in ast.walk(statement):
                    if isinstance(n, (ast.Import, ast.ImportFrom)):
                        lines.add(n.lineno)
    return lines


# --------------------------------------------------------------------------- test jobs


@dataclass
class TestCell:
    """A test cell: its translated code and what the checks read of it (not its syntax tree)."""

    translated: TranslatedCell
    first_use: dict[str, int] = field(default_factory=dict)  # each name it mentions -> the first line that does
    reads: set[str] = field(default_factory=set)  # the names it reads
    bindings: set[str] = field(default_factory=set)  # every name it binds anywhere

    def trees(self) -> Iterator[ast.Module]:
        """The cell's code parsed again, a piece at a time, with the cell's line numbers (for find_jobs)."""
        flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        for offset, text in _statement_pieces(self.translated.source):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # parse_test_cells reported them
                tree = compile(text, f"<cell {self.translated.cell.index}>", "exec", flags, dont_inherit=True)
            yield ast.increment_lineno(tree, offset)


def parse_test_cells(notebook: Notebook) -> list[TestCell]:
    return [_read_test(notebook, translate(notebook, cell, "test")) for cell in notebook.test_cells]


def _read_test(notebook: Notebook, translated: TranslatedCell) -> TestCell:
    def read(pieces):
        test = TestCell(translated)
        parsing, compiling = [], []
        for piece in pieces:
            parsing += piece.parse_warnings
            compiling += piece.compile_warnings
            for node in ast.walk(piece.tree):
                if isinstance(node, ast.Name):
                    _note_first_use(test.first_use, node, piece.offset)
                    if isinstance(node.ctx, ast.Load):
                        test.reads.add(node.id)
            test.bindings |= _all_bindings(piece.tree)
        return test, parsing + compiling

    test, python_warnings = _read_in_pieces(read, notebook, translated, top_level_await=True)
    for line, message in python_warnings:
        translated.warn(line, message)
    return test


def test_name_warnings(notebook: Notebook, analysis: Analysis, test_cells: list[TestCell]) -> list[tuple[int, int, str]]:
    """(cell, line, message) for names a test cell reads that only an untagged cell defines.

    kit test runs the test cells in the worker's namespace, without the untagged
    cells, so such a name is a NameError there: say where it is defined.
    """
    known = set(dir(builtins)) | MODULE_NAMES
    for parsed in analysis.cells:
        known |= parsed.first_use.keys() | parsed.bindings  # every name an exported cell mentions or binds
    for test in test_cells:
        known |= test.bindings

    found = []
    for test in test_cells:
        for name in sorted(test.reads - known):
            where = _defined_in(notebook, name, roles=(None,))
            if where:
                found.append(
                    (
                        test.translated.cell.index,
                        test.first_use.get(name),
                        f"`{name}` is defined only in cell {where} ({_role_name(notebook.cells[where - 1])}), which kit test does not run: "
                        f"tag cell {where} `setup` (or `test`), or define it in this cell",
                    )
                )
    return found


def _all_bindings(tree: ast.Module) -> set[str]:
    """Every name a piece of code binds anywhere (assignments, imports, defs, arguments, loop targets)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def find_jobs(trees: Iterable[tuple[int, ast.Module]]) -> list[dict]:
    """Job literals passed to `handler(...)` in test code, in order.

    `trees` holds (cell number, parsed test cell or piece of one, in order). A job is a dict
    literal with an "input" key, passed directly or through a variable that
    test code assigned a literal to earlier.
    """
    names: dict[str, object] = {}
    jobs: list[dict] = []
    for cell, tree in trees:
        for node in sorted(_assignments_and_calls(tree), key=lambda n: (n.lineno, n.col_offset)):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = _literal(node.value)
                if value is not None:
                    names[node.targets[0].id] = value
            elif isinstance(node, ast.Call) and _calls_handler(node) and node.args:
                arg = node.args[0]
                job = names.get(arg.id) if isinstance(arg, ast.Name) else _literal(arg)
                if isinstance(job, dict) and "input" in job:
                    jobs.append({"cell": cell, "line": node.lineno, "job": job})
            elif isinstance(node, ast.Call) and _calls_named(node, "batch_handler") and node.args:
                jobs += [{"cell": cell, "line": node.lineno, "job": job} for job in _batch_jobs(node.args[0], names)]
    return jobs


def _assignments_and_calls(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.Call))]


def _calls_handler(node: ast.Call) -> bool:
    func = node.func
    return (isinstance(func, ast.Name) and func.id == "handler") or (isinstance(func, ast.Attribute) and func.attr == "handler")


def _calls_named(node: ast.Call, name: str) -> bool:
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute) and func.attr == name)


def _batch_jobs(arg: ast.expr, names: dict) -> list[dict]:
    """The jobs of a list passed to batch_handler: a list literal, or a name assigned one, of job literals."""
    if isinstance(arg, ast.Name):
        value = names.get(arg.id)
    elif isinstance(arg, ast.List):
        value = [names.get(e.id) if isinstance(e, ast.Name) else _literal(e) for e in arg.elts]
    else:
        value = None
    return [job for job in value if isinstance(job, dict) and "input" in job] if isinstance(value, list) else []


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
