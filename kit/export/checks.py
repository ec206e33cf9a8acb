"""Static checks on the exported code, before anything is written.

The worker is the `setup` and `handler` cells run top to bottom as one
module. These checks, over the facts read of each cell (kit.export.facts),
catch at export time what would otherwise only fail in production: no
handler, a handler that cannot take a job, a name that only an untagged cell
defines ("works in my notebook, NameError in the worker"), a syntax error, a
top-level `await` a module cannot run, a tag a letter away from a role.
"""

from __future__ import annotations

import ast
import builtins
import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from kit.errors import KitWarning
from kit.export.facts import BATCH_SETTINGS, CellFacts, Definition, Function, Import, TestCell, literal, read_exported, scratch_bindings
from kit.export.notebook import ROLES, Cell, Notebook
from kit.export.start_options import StartOptions, check_start_options
from kit.workerdir import HandlerKind

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


@dataclass
class Analysis:
    cells: list[CellFacts]  # exported cells, in notebook order
    handler_kind: HandlerKind
    has_concurrency_modifier: bool
    future_imports: list[str]
    imports: list[Import]
    warnings: list[KitWarning] = field(default_factory=list)
    start: StartOptions = field(default_factory=StartOptions)  # RUNPOD_CONFIG, the options of the worker's start
    batch_handler_kind: HandlerKind | None = None  # FUNCTION or ASYNC when a handler cell defines batch_handler(jobs)
    defines_handler: bool = True  # False: only batch_handler, and the export provides handler(job)


def analyse(notebook: Notebook) -> Analysis:
    """Translate, transform, read and check the exported cells. Raises KitError on the first problem."""
    check_near_miss_tags(notebook)
    if not notebook.with_role("handler"):
        where = _defined_in(notebook, "handler", roles=(None, "setup", "test"))
        hint = "tag the cell that defines handler(job) with `handler`"
        if where and notebook.cells[where - 1].role == "test":
            hint = f"handler is defined in cell {where}: move the definition into a cell tagged `handler` {_not_the_test_cell(where, 'handler')}"
        elif where:
            hint = f"handler is defined in cell {where}: add the tag `handler` to that cell"
        raise notebook.error("no cell is tagged `handler`", hint)

    cells = [read_exported(notebook, cell) for cell in notebook.exported_cells]

    batch_def = _check_batch_handler(notebook, cells)
    defines_handler = batch_def is None or any("handler" in d.names for c in cells for d in c.definitions)
    handler_def = _check_handler(notebook, cells) if defines_handler or batch_def is None else batch_def[1]
    start = check_start_options(notebook, cells)
    future: list[str] = []
    for parsed in cells:
        future += [name for name in parsed.future_imports if name not in future]
    _check_names(notebook, cells, lazy_annotations="annotations" in future)

    warnings = [KitWarning(message, notebook.name, cell, line) for cell, line, message in start.warnings]
    for parsed in cells:
        warnings += parsed.translated.warnings
    return Analysis(
        cells=cells,
        handler_kind=_handler_kind(_resolve_handler(notebook, cells, handler_def, start)),
        has_concurrency_modifier=any("concurrency_modifier" in c.bindings for c in cells),
        future_imports=future,
        imports=sorted((i for c in cells for i in c.imports), key=lambda i: (i.cell, i.line)),
        warnings=warnings,
        start=start,
        batch_handler_kind=None if batch_def is None else _handler_kind(batch_def[1]),
        defines_handler=defines_handler,
    )


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


def _role_name(cell: Cell) -> str:
    """How a message names a cell's role: its role, or what its tags are when it has none."""
    if cell.role:
        return cell.role
    if cell.tags:
        return "tagged " + ", ".join(f"`{t}`" for t in cell.tags) + ", not a kit role"
    return "untagged"


def _not_the_test_cell(cell: int, tag: str) -> str:
    """Why a definition found only in a `test` cell is moved rather than its cell tagged (a cell has one role)."""
    return f"(tagged `{tag}` instead of `test`, cell {cell} would run its test calls at every worker start)"


def _defined_in(notebook: Notebook, name: str, roles: Iterable[str | None]) -> int | None:
    """The first cell with one of `roles` that binds `name` at module level."""
    roles = tuple(roles)
    for cell in notebook.cells:
        if cell.kind != "code" or cell.role not in roles:
            continue
        try:
            bound = scratch_bindings(notebook, cell)
        except Exception:  # scratch cells may hold anything; they only help explain
            continue
        if name in bound:
            return cell.index
    return None


# --------------------------------------------------------------------------- handler


def _definition_in_handler_cells(notebook: Notebook, cells: list[CellFacts], name: str) -> tuple[CellFacts, Definition] | None:
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


def _check_handler(notebook: Notebook, cells: list[CellFacts]) -> Function | None:
    definition = _definition_in_handler_cells(notebook, cells, "handler")
    if definition is None:
        where = _defined_in(notebook, "handler", roles=(None, "test"))
        if where:
            in_test = notebook.cells[where - 1].role == "test"
            raise notebook.error(
                f"handler is defined only in cell {where}, which is not exported",
                f"move the definition into the cell tagged `handler` {_not_the_test_cell(where, 'handler')}"
                if in_test
                else "move the definition into the cell tagged `handler`, or tag that cell `handler`",
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
    parsed, found_def = definition
    if found_def.function:
        _check_signature(notebook, parsed, found_def.function)
    return found_def.function  # None for `handler = something`: its kind cannot be known statically


def _resolve_handler(notebook: Notebook, cells: list[CellFacts], definition: Function | None, start: StartOptions) -> Function | None:
    """The function the worker starts with: `handler`, through aliases (`handler = async_generator_handler`)
    and RUNPOD_CONFIG's "handler", so its kind (a generator?) is known. None when it cannot be known."""
    functions: dict[str, tuple[CellFacts, Definition]] = {}
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


def _check_signature(notebook: Notebook, parsed: CellFacts, function: Function) -> None:
    if not function.takes_one_argument:
        raise notebook.error(
            "handler must accept exactly one positional argument, the job",
            "define it as `def handler(job):`",
            cell=parsed.index,
            line=function.line,
        )


def _check_batch_handler(notebook: Notebook, cells: list[CellFacts]) -> tuple[CellFacts, Function | None] | None:
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
    if function.kind.streaming:
        raise notebook.error(
            "batch_handler cannot be a generator: it returns a list with one result per job",
            "return the list; for streaming, write a generator `handler(job)` instead",
            cell=parsed.index,
            line=function.line,
        )
    return parsed, function


def _check_batch_setting(notebook: Notebook, parsed: CellFacts, setting: Definition, name: str) -> None:
    value = literal(setting.value)
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


def _handler_kind(function: Function | None) -> HandlerKind:
    return HandlerKind.FUNCTION if function is None else function.kind


# --------------------------------------------------------------------------- names


def _check_names(notebook: Notebook, cells: list[CellFacts], lazy_annotations: bool) -> None:
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
                    f"move the definition into a `setup` or `handler` cell {_not_the_test_cell(where, 'setup')}"
                    if role == "test"
                    else f"tag cell {where} `setup`, or move the definition into a `setup` or `handler` cell",
                    cell=parsed.index,
                    line=line,
                )
            raise notebook.error(
                f"`{name}` is not defined anywhere in the notebook",
                "define or import it in a `setup` cell",
                cell=parsed.index,
                line=line,
            )


def _annotation_only_names(cells: list[CellFacts]) -> set[str]:
    """The names the cells mention only in annotations: in one cell's annotations, and in no cell elsewhere."""
    return {
        name
        for parsed in cells
        for name in parsed.annotation_only
        if all(name not in c.first_use or name in c.annotation_only for c in cells)
    }


def test_name_warnings(notebook: Notebook, analysis: Analysis, test_cells: list[TestCell]) -> list[tuple[int, int | None, str]]:
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
