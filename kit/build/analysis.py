"""Static checks on the exported code, before anything is written.

The worker is the `setup` and `handler` cells run top to bottom as one
module. These checks catch, at export time, what would otherwise only fail
in production: no handler, a handler that cannot take a job, a name that
only an untagged cell defines ("works in my notebook, NameError in the
worker"), a syntax error, a top-level `await` a module cannot run.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import symtable
import warnings
from dataclasses import dataclass, field

from kit.build.ipython import TranslatedCell, translate
from kit.errors import KitWarning
from kit.build.notebook import ROLES, Notebook
from kit.build.start_options import StartOptions, check_start_options, rewrite_start_calls

MODULE_NAMES = {"__name__", "__file__", "__doc__", "__builtins__", "__spec__", "__loader__", "__package__", "__path__", "__annotations__", "__dict__"}
NOTEBOOK_ONLY_NAMES = {
    "display": "display() exists only in IPython: use print(), or return the value",
    "get_ipython": "get_ipython() is None outside IPython: a worker cannot use it",
    "In": "In is IPython's input history, which a worker does not have",
    "Out": "Out is IPython's output history, which a worker does not have",
}


@dataclass
class ParsedCell:
    translated: TranslatedCell
    tree: ast.Module

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


def parse(notebook: Notebook, translated: TranslatedCell, top_level_await: bool = False) -> ast.Module:
    flags = ast.PyCF_ONLY_AST | (ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if top_level_await else 0)
    cell = translated.cell
    filename = f"<cell {cell.index}>"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tree = compile(translated.source, filename, "exec", flags, dont_inherit=True)
            if not top_level_await:
                # The compiler, not the parser, rejects `await` or `return` outside a function.
                compile(tree, filename, "exec", dont_inherit=True)
        # Python's own warnings about the cell's code (e.g. an invalid escape sequence), located.
        for warning in caught:
            translated.warn(warning.lineno, f"Python: {warning.message}")
        return tree
    except SyntaxError as error:
        message = error.msg
        hint = "fix the cell so it runs as plain Python"
        if "outside function" in message and "await" in message:
            hint = "a worker module cannot await at import time: wrap the call in asyncio.run(...)"
        raise notebook.error(f"syntax error: {message}", hint, cell=cell.index, line=error.lineno) from None
    except ValueError as error:  # e.g. null bytes in the source
        raise notebook.error(f"cannot parse the cell: {error}", None, cell=cell.index) from None
    except (RecursionError, MemoryError):
        raise notebook.error(
            "the cell's code is nested too deeply (or is too long an expression) for Python to compile",
            "split the expression into smaller statements",
            cell=cell.index,
        ) from None


def analyse(notebook: Notebook) -> Analysis:
    """Translate, parse and check the exported cells. Raises KitError on the first problem."""
    check_near_miss_tags(notebook)
    if not notebook.with_role("handler"):
        where = _defined_in(notebook, "handler", roles=(None, "setup", "test"))
        hint = "tag the cell that defines handler(job) with `handler`"
        if where:
            hint = f"handler is defined in cell {where}: add the tag `handler` to that cell"
        raise notebook.error("no cell is tagged `handler`", hint)

    cells = []
    for cell in notebook.exported_cells:
        translated = translate(notebook, cell, "export")
        cells.append(_without_start_calls(notebook, ParsedCell(translated, parse(notebook, translated))))

    batch_def = _check_batch_handler(notebook, cells)
    defines_handler = batch_def is None or any(_defines(n, "handler") for c in cells for n in c.tree.body)
    handler_def = _check_handler(notebook, cells) if defines_handler else batch_def[1]
    start = check_start_options(notebook, cells)
    future = _hoist_future_imports(cells)
    _check_names(notebook, cells, lazy_annotations="annotations" in future)

    analysis = Analysis(
        cells=cells,
        handler_kind=_handler_kind(_resolve_handler(notebook, cells, handler_def, start)),
        has_concurrency_modifier=any("concurrency_modifier" in _module_bindings(c.tree) for c in cells),
        future_imports=future,
        imports=_imports(cells),
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


# --------------------------------------------------------------------------- handler


def _definition_in_handler_cells(notebook: Notebook, cells: list[ParsedCell], name: str):
    """(cell, node) of the last top-level definition of `name`, or None; it must be in a `handler` cell."""
    definition = None
    for parsed in cells:
        for node in parsed.tree.body:
            if _defines(node, name):
                if parsed.role != "handler":
                    raise notebook.error(
                        f"{name} is defined in a cell tagged `{parsed.role}`",
                        "tag that cell `handler` instead",
                        cell=parsed.index,
                        line=node.lineno,
                    )
                definition = (parsed, node)
    return definition


def _check_handler(notebook: Notebook, cells: list[ParsedCell]):
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
        found = [n.name for c in cells if c.role == "handler" for n in c.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
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
    parsed, node = definition
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        _check_signature(notebook, parsed, node)
        return node
    return None  # `handler = something`: its kind cannot be known statically


def _without_start_calls(notebook: Notebook, parsed: ParsedCell) -> ParsedCell:
    """The cell with a pasted runpod.serverless.start(...) turned into RUNPOD_CONFIG (see start_options)."""
    source, notes = rewrite_start_calls(notebook, parsed.index, parsed.translated.source, parsed.tree)
    if not notes:
        return parsed
    parsed.translated.source = source
    for line, message in notes:
        parsed.translated.warn(line, message)
    parsed.tree = parse(notebook, parsed.translated)
    return parsed


def _resolve_handler(notebook: Notebook, cells: list[ParsedCell], definition, start: StartOptions):
    """The function the worker starts with: `handler`, through aliases (`handler = async_generator_handler`)
    and RUNPOD_CONFIG's "handler", so its kind (a generator?) is known. None when it cannot be known."""
    functions = {}
    for parsed in cells:
        for node in parsed.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[node.name] = (parsed, node)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        functions[target.id] = (parsed, node)
    name = start.handler_name or "handler"
    node = functions.get(name, (None, definition))[1]
    for _ in range(10):  # alias chains are short; a cycle is not followed forever
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in functions):
            break
        parsed, node = functions[node.value.id]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            _check_signature(notebook, parsed, node)
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Name) and t.id == name for t in targets)
    return False


def _takes_one_argument(node) -> bool:
    args = node.args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    required_keyword = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
    return bool(positional or args.vararg) and required <= 1 and not required_keyword


def _check_signature(notebook: Notebook, parsed: ParsedCell, node) -> None:
    if not _takes_one_argument(node):
        raise notebook.error(
            "handler must accept exactly one positional argument, the job",
            "define it as `def handler(job):`",
            cell=parsed.index,
            line=node.lineno,
        )


BATCH_SETTINGS = ("MAX_BATCH_SIZE", "MAX_BATCH_WAIT_MS")


def _check_batch_handler(notebook: Notebook, cells: list[ParsedCell]):
    """(cell, node) of the `batch_handler(jobs)` a handler cell defines, or None; its settings checked."""
    definition = _definition_in_handler_cells(notebook, cells, "batch_handler")
    settings = [
        (parsed, node, name)
        for parsed in cells
        for node in parsed.tree.body
        for name in BATCH_SETTINGS
        if isinstance(node, ast.Assign) and _defines(node, name)
    ]
    if definition is None:
        return None
    for parsed_setting, node, name in settings:
        _check_batch_setting(notebook, parsed_setting, node, name)
    parsed, node = definition
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return parsed, None  # `batch_handler = something`: the worker finds out at run time
    if not _takes_one_argument(node):
        raise notebook.error(
            "batch_handler must accept exactly one positional argument, the list of jobs",
            "define it as `def batch_handler(jobs):`, returning one result per job in the same order",
            cell=parsed.index,
            line=node.lineno,
        )
    if _handler_kind(node) in ("generator", "async_generator"):
        raise notebook.error(
            "batch_handler cannot be a generator: it returns a list with one result per job",
            "return the list; for streaming, write a generator `handler(job)` instead",
            cell=parsed.index,
            line=node.lineno,
        )
    return parsed, node


def _check_batch_setting(notebook: Notebook, parsed: ParsedCell, node: ast.Assign, name: str) -> None:
    value = _literal(node.value)
    if value is None and not isinstance(node.value, ast.Constant):
        return  # computed (e.g. from os.environ): checked when the worker starts
    if name == "MAX_BATCH_SIZE":
        ok, needed = isinstance(value, int) and not isinstance(value, bool) and value >= 1, "a whole number of at least 1"
    else:
        ok, needed = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"), "a number of milliseconds, 0 or more"
    if not ok:
        raise notebook.error(f"{name} must be {needed}, not {value!r}", f"set e.g. `{name} = {16 if name == 'MAX_BATCH_SIZE' else 10}`", cell=parsed.index, line=node.lineno)


def _handler_kind(node) -> str:
    if node is None:
        return "function"
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


def _hoist_future_imports(cells: list[ParsedCell]) -> list[str]:
    """Remove `from __future__` imports from the cells; return the feature names."""
    features: list[str] = []
    for parsed in cells:
        lines = parsed.translated.source.split("\n")
        kept = []
        for node in parsed.tree.body:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                features.extend(alias.name for alias in node.names if alias.name not in features)
                for number in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                    lines[number - 1] = "# kit: __future__ import hoisted to the top of handler.py" if number == node.lineno else ""
            else:
                kept.append(node)
        parsed.tree.body = kept
        parsed.translated.source = "\n".join(lines)
    return features


def _check_names(notebook: Notebook, cells: list[ParsedCell], lazy_annotations: bool) -> None:
    if any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for c in cells for n in ast.walk(c.tree)):
        return  # `from x import *`: what it defines cannot be known without importing x
    defined: set[str] = set()
    tables = []
    for parsed in cells:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # parse() already reported them, located
            table = symtable.symtable(parsed.translated.source, f"<cell {parsed.index}>", "exec")
        tables.append((parsed, table))
        defined |= _table_bindings(table)
    known = defined | set(dir(builtins)) | MODULE_NAMES
    if lazy_annotations:  # `from __future__ import annotations`: annotations are never evaluated
        known |= _annotation_only_names([c.tree for c in cells])
    for parsed, table in tables:
        for name in sorted(_global_reads(table)):
            if name in known:
                continue
            line = _first_use(parsed.tree, name)
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


def _annotation_only_names(trees: list[ast.Module]) -> set[str]:
    in_annotations: set[str] = set()
    annotation_nodes: set[int] = set()
    for tree in trees:
        for node in ast.walk(tree):
            annotations = []
            if isinstance(node, ast.arg):
                annotations.append(node.annotation)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                annotations.append(node.returns)
            elif isinstance(node, ast.AnnAssign):
                annotations.append(node.annotation)
            for annotation in filter(None, annotations):
                for n in ast.walk(annotation):
                    annotation_nodes.add(id(n))
                    if isinstance(n, ast.Name):
                        in_annotations.add(n.id)
    elsewhere = {
        n.id for tree in trees for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in annotation_nodes
    }
    return in_annotations - elsewhere


def _table_bindings(table: symtable.SymbolTable) -> set[str]:
    """Module-level names a module's code binds (including `global x` assignments in functions)."""
    names = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()}
    for child in _nested_scopes(table):
        names |= {s.get_name() for s in child.get_symbols() if s.is_declared_global() and s.is_assigned()}
    return names


def _global_reads(table: symtable.SymbolTable) -> set[str]:
    """Names a module's code reads from the module namespace or builtins."""
    reads = {
        s.get_name()
        for s in table.get_symbols()
        if s.is_referenced() and not (s.is_assigned() or s.is_imported() or s.is_namespace())
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


def _first_use(tree: ast.AST, name: str) -> int | None:
    lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name]
    return min(lines) if lines else None


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
            tree = parse(notebook, translate(notebook, cell, "scan"), top_level_await=True)
            bound = _module_bindings(tree)
        except Exception:  # scratch cells may hold anything; they only help explain
            continue
        if name in bound:
            return cell.index
    return None


# --------------------------------------------------------------------------- imports


def _imports(cells: list[ParsedCell]) -> list[Import]:
    found: list[Import] = []
    for parsed in cells:
        optional_lines = _optional_import_lines(parsed.tree)
        for node in ast.walk(parsed.tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.append(Import(module.split(".")[0], module, parsed.index, node.lineno, node.lineno in optional_lines))
    found.sort(key=lambda i: (i.cell, i.line))
    return found


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
    translated: TranslatedCell
    tree: ast.Module


def parse_test_cells(notebook: Notebook) -> list[TestCell]:
    cells = []
    for cell in notebook.test_cells:
        translated = translate(notebook, cell, "test")
        cells.append(TestCell(translated, parse(notebook, translated, top_level_await=True)))
    return cells


def test_name_warnings(notebook: Notebook, analysis: Analysis, test_cells: list[TestCell]) -> list[tuple[int, int, str]]:
    """(cell, line, message) for names a test cell reads that only an untagged cell defines.

    kit test runs the test cells in the worker's namespace, without the untagged
    cells, so such a name is a NameError there: say where it is defined.
    """
    known = set(dir(builtins)) | MODULE_NAMES
    for parsed in analysis.cells:
        known |= {n.id for n in ast.walk(parsed.tree) if isinstance(n, ast.Name)} | _module_bindings(parsed.tree)
    for test in test_cells:
        known |= _all_bindings(test.tree)
    found = []
    for test in test_cells:
        for name in sorted({n.id for n in ast.walk(test.tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - known):
            where = _defined_in(notebook, name, roles=(None,))
            if where:
                found.append(
                    (
                        test.translated.cell.index,
                        _first_use(test.tree, name),
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


def find_jobs(trees: list[tuple[int, ast.Module]]) -> list[dict]:
    """Job literals passed to `handler(...)` in test code, in order.

    `trees` is a list of (cell number, parsed test cell). A job is a dict
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
