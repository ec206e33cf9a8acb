"""What the checks read of each cell, once per cell (one parse).

An exported cell is translated (kit.export.ipython), transformed
(kit.export.transforms) and read into `CellFacts`: its top-level definitions,
imports, the names it binds and reads, its RUNPOD_CONFIG. A test cell is read
into a `TestCell`. Neither keeps its syntax tree, which takes ~150 times the
size of the code; a long cell is read a piece at a time (kit.export.pieces).
"""

from __future__ import annotations

import ast
import dataclasses
import symtable
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from kit.export.ipython import TranslatedCell, translate
from kit.export.notebook import Cell, Notebook
from kit.export.pieces import Piece, read_in_pieces
from kit.export.start_options import StartCode, may_call_start, start_aliases
from kit.export.transforms import hoist_future_imports, without_start_calls
from kit.workerdir import HandlerKind

# The names the handler checks look up among a cell's top-level definitions.
BATCH_SETTINGS = ("MAX_BATCH_SIZE", "MAX_BATCH_WAIT_MS")
LOOKED_UP = ("handler", "batch_handler", *BATCH_SETTINGS)


@dataclass
class Function:
    """What the checks need of a top-level `def` (not its body)."""

    name: str
    line: int
    kind: HandlerKind
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
class Import:
    module: str  # top-level module name
    dotted: str  # the full dotted name imported
    cell: int
    line: int
    optional: bool  # inside a try that catches ImportError


@dataclass
class CellFacts:
    """An exported cell: its transformed code and what the checks read of it (not its syntax tree)."""

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
        role = self.translated.cell.role
        if role is None:
            raise ValueError(f"cell {self.index} is not exported")  # a kit bug: only setup and handler cells are read so
        return role

    def add_piece(self, tree: ast.Module, offset: int, text: str) -> None:
        """Add what the checks need of a piece (its line numbers counted from `offset`)."""
        self.definitions += filter(None, (_definition(node, offset) for node in tree.body))
        self.start_code.add(tree, offset)
        self.bindings |= module_bindings(tree)
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
                line = node.lineno + offset
                if line < first_use.get(node.id, line + 1):
                    first_use[node.id] = line
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                self.star_import |= any(alias.name == "*" for alias in node.names)
                self.imports += _imports(node, self.index, offset, node.lineno in optional_lines)
        # Only in annotations: so far in the cell (not mentioned before, or only in annotations) and in this piece.
        only_here = {name for name in in_annotations - elsewhere if name not in self.first_use or name in self.annotation_only}
        self.annotation_only = (self.annotation_only - elsewhere) | only_here
        for name, line in first_use.items():
            self.first_use.setdefault(name, line)  # an earlier piece's lines come first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # parse_piece already reported them, located
            table = symtable.symtable(text, f"<cell {self.index}>", "exec")
        self.defined |= _table_bindings(table)
        self.reads |= _global_reads(table)


def read_exported(notebook: Notebook, cell: Cell) -> CellFacts:
    """An exported cell translated, with its start calls rewritten and its `from __future__` imports hoisted, read."""
    translated = translate(notebook, cell, "export")

    def read(known: dict[str, set[str]]) -> tuple[CellFacts, str, list[tuple[int, str]], dict[str, set[str]], bool]:
        return read_in_pieces(lambda pieces: _read_exported(notebook, translated, pieces, known), notebook, translated)

    facts, source, located, aliases, late = read({"serverless": set(), "start": set()})
    if late:  # a piece imports an alias of runpod.serverless.start that the pieces before it may call
        facts, source, located, aliases, late = read(aliases)
    return dataclasses.replace(facts, translated=translated.derived(source, located))


def _read_exported(
    notebook: Notebook, translated: TranslatedCell, pieces: Iterator[Piece], known: dict[str, set[str]]
) -> tuple[CellFacts, str, list[tuple[int, str]], dict[str, set[str]], bool]:
    """(CellFacts, the new source, Python's warnings and the rewrites' notes, the cell's start aliases, whether one came late).

    `known` are the cell's names for runpod.serverless and its start found by an earlier read.
    """
    aliases = {kind: set(names) for kind, names in known.items()}
    facts = CellFacts(translated)
    texts: list[str] = []
    parsing: list[tuple[int, str]] = []
    compiling: list[tuple[int, str]] = []
    notes: list[tuple[int, str]] = []
    reparsing: list[tuple[int, str]] = []
    late = False
    for number, piece in enumerate(pieces):
        parsing += piece.parse_warnings
        compiling += piece.compile_warnings
        if aliases["start"] or may_call_start(piece.text):
            found = start_aliases(piece.tree)
            late |= number > 0 and any(found[kind] - aliases[kind] for kind in aliases)
            aliases = {kind: aliases[kind] | found[kind] for kind in aliases}
            rewrite = without_start_calls(notebook, facts.index, piece, aliases)
            piece = rewrite.piece
            notes += rewrite.notes
            reparsing += rewrite.python_warnings
        piece, futures = hoist_future_imports(piece)
        facts.future_imports += [name for name in futures if name not in facts.future_imports]
        facts.add_piece(piece.tree, piece.offset, piece.text)
        texts.append(piece.text)
    facts.reads -= facts.defined  # read in one piece, bound in another
    return facts, "".join(texts), parsing + compiling + notes + reparsing, aliases, late


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
        names: tuple[str, ...] = (node.name,)
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
    return Definition(names, node.lineno + offset, value=node.value if keep_value and isinstance(node, ast.Assign) else None)


def _function_kind(node: ast.FunctionDef | ast.AsyncFunctionDef) -> HandlerKind:
    generator = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _walk_own_body(node))
    return HandlerKind.from_syntax(isinstance(node, ast.AsyncFunctionDef), generator)


def _walk_own_body(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """Nodes of a function's body, not descending into nested scopes."""
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
    stack: list[ast.AST] = [node for node in function.body if not isinstance(node, scopes)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, scopes))


def _takes_one_argument(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = node.args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    required_keyword = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    return bool(positional or args.vararg) and required <= 1 and not required_keyword


def literal(node: ast.expr | None) -> object:
    """The value of a literal expression, or None."""
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


# --------------------------------------------------------------------------- names


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


def _nested_scopes(table: symtable.SymbolTable) -> Iterator[symtable.SymbolTable]:
    """Every function, class and comprehension scope below a module's table."""
    stack = list(table.get_children())
    while stack:
        child = stack.pop()
        stack.extend(child.get_children())
        yield child


def module_bindings(tree: ast.Module) -> set[str]:
    """The names a module's top-level statements bind."""
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


def scratch_bindings(notebook: Notebook, cell: Cell) -> set[str]:
    """The names a cell binds at module level, its IPython syntax masked; raises what reading it raises."""
    translated = translate(notebook, cell, "scan")
    return read_in_pieces(
        lambda pieces: set().union(*(module_bindings(p.tree) for p in pieces)), notebook, translated, top_level_await=True
    )


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


# --------------------------------------------------------------------------- test cells


@dataclass(frozen=True, slots=True)  # a test cell may hold many: slots keep each small
class JobSite:
    """A statement of a test cell the job finder reads (kit.export.jobs): a literal assigned to a
    name, or a call of handler(...) or batch_handler([...])."""

    line: int  # in the cell
    column: int
    call: str | None  # "handler" or "batch_handler"; None for an assignment
    name: str | None  # the name assigned, or passed as the call's argument
    value: object = None  # the literal assigned or passed (None: not a literal)
    items: tuple[tuple[str | None, object], ...] | None = None  # batch_handler([...]): each job's name, or its literal


@dataclass
class TestCell:
    """A test cell: its translated code and what the checks and the job finder read of it (not its syntax tree)."""

    translated: TranslatedCell
    first_use: dict[str, int] = field(default_factory=dict)  # each name it mentions -> the first line that does
    reads: set[str] = field(default_factory=set)  # the names it reads
    bindings: set[str] = field(default_factory=set)  # every name it binds anywhere
    job_sites: list[JobSite] = field(default_factory=list)  # in the order they run


def parse_test_cells(notebook: Notebook) -> list[TestCell]:
    return [_read_test(notebook, translate(notebook, cell, "test")) for cell in notebook.test_cells]


def _read_test(notebook: Notebook, translated: TranslatedCell) -> TestCell:
    def read(pieces: Iterator[Piece]) -> tuple[TestCell, list[tuple[int, str]]]:
        first_use: dict[str, int] = {}
        reads: set[str] = set()
        bindings: set[str] = set()
        sites: list[JobSite] = []
        parsing: list[tuple[int, str]] = []
        compiling: list[tuple[int, str]] = []
        for piece in pieces:
            parsing += piece.parse_warnings
            compiling += piece.compile_warnings
            for node in ast.walk(piece.tree):
                if isinstance(node, ast.Name):
                    line = node.lineno + piece.offset
                    if line < first_use.get(node.id, line + 1):
                        first_use[node.id] = line
                    if isinstance(node.ctx, ast.Load):
                        reads.add(node.id)
            bindings |= _all_bindings(piece.tree)
            sites += job_sites(piece.tree, piece.offset)
        return TestCell(translated, first_use, reads, bindings, sites), parsing + compiling

    test, located = read_in_pieces(read, notebook, translated, top_level_await=True)
    return dataclasses.replace(test, translated=translated.derived(translated.source, located))


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


def job_sites(tree: ast.Module, offset: int = 0) -> list[JobSite]:
    """The JobSites of (a piece of) a test cell whose line numbers count from `offset`, in the order they run."""
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = literal(node.value)
            if value is not None:
                sites.append(JobSite(node.lineno + offset, node.col_offset, None, node.targets[0].id, value))
        elif isinstance(node, ast.Call) and node.args and (_calls_named(node, "handler") or _calls_named(node, "batch_handler")):
            call = "handler" if _calls_named(node, "handler") else "batch_handler"
            arg = node.args[0]
            if isinstance(arg, ast.Name):
                site = JobSite(node.lineno + offset, node.col_offset, call, arg.id)
            elif call == "handler":
                site = JobSite(node.lineno + offset, node.col_offset, call, None, literal(arg))
            elif isinstance(arg, ast.List):
                items = tuple((e.id, None) if isinstance(e, ast.Name) else (None, literal(e)) for e in arg.elts)
                site = JobSite(node.lineno + offset, node.col_offset, call, None, items=items)
            else:
                continue
            sites.append(site)
    return sorted(sites, key=lambda site: (site.line, site.column))


def _calls_named(node: ast.Call, name: str) -> bool:
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute) and func.attr == name)
