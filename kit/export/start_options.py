"""The options the exported worker passes to `runpod.serverless.start`.

A notebook sets them in a `setup` or `handler` cell as a dict named
`RUNPOD_CONFIG` (harmless in Jupyter, where starting a worker is not):

    RUNPOD_CONFIG = {"refresh_worker": True, "return_aggregate_stream": False}

handler.py's start block passes `{"handler": handler, "concurrency_modifier": ...,
**RUNPOD_CONFIG}`, so every option of the SDK's start (below) can be set and
each one the notebook sets wins over the kit's default.

A `runpod.serverless.start({...})` call pasted from a worker's handler.py (every
original has one) would start a second worker loop; it is rewritten, in the
exported code only, into `RUNPOD_CONFIG = ({...})` with a warning, so its
options are kept. A key one letter away from an option is an export error (the
SDK ignores unknown keys in silence); a function named like the docs'
`adjust_concurrency` that nothing uses is a warning.
"""

from __future__ import annotations

import ast
import copy
import difflib
from dataclasses import dataclass, field

from kit.export.notebook import Notebook

CONFIG_NAME = "RUNPOD_CONFIG"
# What runpod 1.12.0's start() and its JobScaler read from the config (rp_args is the SDK's own).
OPTIONS = (
    "handler",
    "concurrency_modifier",
    "return_aggregate_stream",
    "refresh_worker",
    "jobs_fetcher",
    "jobs_fetcher_timeout",
    "jobs_handler",
    "stop_signals_fetcher",
    "stop_signals_fetcher_timeout",
)
BOOLEAN_OPTIONS = ("return_aggregate_stream", "refresh_worker")
FUNCTION_OPTIONS = ("handler", "concurrency_modifier", "jobs_fetcher", "jobs_handler", "stop_signals_fetcher")
# Names the docs and examples give a concurrency modifier; the worker uses it only under its own name.
MODIFIER_NAMES = ("adjust_concurrency", "concurrency_modifier")


@dataclass
class StartOptions:
    config_name: str | None = None  # CONFIG_NAME when the exported code binds it
    handler_name: str | None = None  # the function RUNPOD_CONFIG names as "handler", if a plain name
    warnings: list[tuple[int, int, str]] = field(default_factory=list)  # (cell, line, message)


@dataclass
class StartCode:
    """What check_start_options reads of a cell: its module-level functions and RUNPOD_CONFIG assignments."""

    functions: list[tuple[str, int]] = field(default_factory=list)  # (name, line)
    configs: list[ast.Assign] = field(default_factory=list)

    def add(self, tree: ast.Module, offset: int = 0) -> None:
        """Add (a piece of) the cell's code, whose line numbers count from `offset`."""
        for node in module_level_statements(tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.append((node.name, node.lineno + offset))
            if _assigns(node, CONFIG_NAME):
                self.configs.append(ast.increment_lineno(copy.deepcopy(node), offset))


def rewrite_start_calls(
    notebook: Notebook, cell_index: int, source: str, tree: ast.Module, aliases: dict[str, set[str]]
) -> tuple[str, list[tuple[int, str]]]:
    """`source` with each pasted `runpod.serverless.start(X)` statement turned into `RUNPOD_CONFIG = (X)`.

    `aliases` are the cell's names for runpod.serverless and its start (`start_aliases`).
    Returns the new source and (line, warning) pairs. Raises KitError for a start
    call the kit cannot take over (inside a function, or not one dict argument).
    """
    module_level = {id(node.value) for node in module_level_statements(tree.body) if isinstance(node, ast.Expr)}
    lines = source.split("\n")
    notes = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _is_start(node.func, aliases)):
            continue
        if id(node) not in module_level:
            raise notebook.error(
                "runpod.serverless.start is called inside a function or expression",
                "remove the call: the exported handler.py starts the worker itself; set its options in RUNPOD_CONFIG = {...}",
                cell=cell_index,
                line=node.lineno,
            )
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise notebook.error(
                "runpod.serverless.start must be given its options as one dict",
                'write them as RUNPOD_CONFIG = {"handler": handler, ...} and remove the call',
                cell=cell_index,
                line=node.lineno,
            )
        if node.func.end_lineno != node.lineno:
            raise notebook.error("runpod.serverless.start: keep the call's name on one line", None, cell=cell_index, line=node.lineno)
        row = lines[node.lineno - 1].encode("utf-8")
        lines[node.lineno - 1] = (row[: node.col_offset] + f"{CONFIG_NAME} = ".encode() + row[node.func.end_col_offset :]).decode("utf-8")
        lines[(node.end_lineno or node.lineno) - 1] += "  # kit: was runpod.serverless.start(...); handler.py starts the worker at its end"
        notes.append(
            (
                node.lineno,
                "runpod.serverless.start(...) is not run in the exported worker: its options became "
                f"{CONFIG_NAME}, which handler.py passes to the worker loop at its end "
                f"(in the notebook, write `{CONFIG_NAME} = {{...}}` instead: the call would start a worker in the kernel)",
            )
        )
    return "\n".join(lines), notes


def check_start_options(notebook: Notebook, cells) -> StartOptions:
    """Check every `RUNPOD_CONFIG = {...}` literal of the exported cells (their `.index` and
    `.start_code`); find unused modifier look-alikes."""
    options = StartOptions()
    used_names: set[str] = set()
    defined_functions: dict[str, tuple[int, int]] = {}
    for parsed in cells:
        for name, line in parsed.start_code.functions:
            defined_functions.setdefault(name, (parsed.index, line))
        for node in parsed.start_code.configs:
            options.config_name = CONFIG_NAME
            value = node.value
            if isinstance(value, ast.Dict):
                handler_name, used, warnings = _check_literal(notebook, parsed.index, value)
                options.handler_name = handler_name or options.handler_name
                used_names |= used
                options.warnings += warnings
            elif not isinstance(value, (ast.Call, ast.Name, ast.Attribute, ast.DictComp, ast.BinOp)):
                raise notebook.error(
                    f"{CONFIG_NAME} must be a dict of runpod.serverless.start options", None, cell=parsed.index, line=node.lineno
                )
    for name, (cell, line) in defined_functions.items():
        if name in used_names or name == "concurrency_modifier" or "concurrency_modifier" in defined_functions:
            continue
        if name in MODIFIER_NAMES or difflib.get_close_matches(name, ["concurrency_modifier"], n=1, cutoff=0.85):
            options.warnings.append(
                (
                    cell,
                    line,
                    f"`{name}` looks like a concurrency modifier, but the worker calls one only when it is named "
                    f'`concurrency_modifier` or set as {CONFIG_NAME} = {{"concurrency_modifier": {name}}}; '
                    "without either, CONCURRENCY_MODIFIER (default 1) sets how many jobs run at once",
                )
            )
    return options


def _check_literal(notebook: Notebook, cell: int, value: ast.Dict) -> tuple[str | None, set[str], list[tuple[int, int, str]]]:
    """(the function it names as "handler", the names it uses, warnings) of a RUNPOD_CONFIG literal.

    Raises KitError for a mistake: a key one letter away from an option, a value of the wrong type.
    """
    handler_name: str | None = None
    used_names: set[str] = set()
    warnings: list[tuple[int, int, str]] = []
    for key_node, item in zip(value.keys, value.values):
        if key_node is None:  # **other: cannot be checked
            continue
        if not (isinstance(key_node, ast.Constant) and isinstance(key_node.value, str)):
            raise notebook.error(f"{CONFIG_NAME}'s keys must be strings, the option names", None, cell=cell, line=key_node.lineno)
        key = key_node.value
        line = key_node.lineno
        if isinstance(item, ast.Name):
            used_names.add(item.id)
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, OPTIONS, n=1, cutoff=0.75)
            if close:
                raise notebook.error(
                    f"{CONFIG_NAME} key `{key}` is not an option of runpod.serverless.start, which would ignore it",
                    f"did you mean `{close[0]}`?",
                    cell=cell,
                    line=line,
                )
            warnings.append(
                (
                    cell,
                    line,
                    f"{CONFIG_NAME} key `{key}` is not an option of runpod.serverless.start (runpod 1.12.0): the worker ignores it",
                )
            )
            continue
        if key in BOOLEAN_OPTIONS and isinstance(item, ast.Constant) and not isinstance(item.value, bool):
            raise notebook.error(f'{CONFIG_NAME}["{key}"] must be True or False', None, cell=cell, line=line)
        if key in FUNCTION_OPTIONS and isinstance(item, ast.Constant):
            raise notebook.error(
                f'{CONFIG_NAME}["{key}"] must be a function, not {item.value!r}',
                "for a fixed concurrency write `lambda current: 4`" if key == "concurrency_modifier" else "name the function",
                cell=cell,
                line=line,
            )
        if key == "handler" and isinstance(item, ast.Name):
            handler_name = item.id
    return handler_name, used_names, warnings


def _assigns(node: ast.stmt, name: str) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)


def module_level_statements(body):
    """Statements run at import, descending into if/try/with/for blocks but not into functions or classes."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for name in ("body", "orelse", "finalbody"):
            yield from module_level_statements(getattr(node, name, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            yield from module_level_statements(handler.body)


def may_call_start(source: str) -> bool:
    """False for code that can neither import nor call runpod.serverless.start, unless its cell
    imports start under another name: it never spells `runpod` or `start`. (Python reads a
    non-ASCII name through NFKC, so `ｓtart` is `start`: only ASCII code is ruled out.)"""
    return not source.isascii() or "runpod" in source or "start" in source


def start_aliases(tree: ast.Module) -> dict[str, set[str]]:
    """Local names for runpod.serverless (`from runpod import serverless`) and its start."""
    found: dict[str, set[str]] = {"serverless": set(), "start": set()}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "runpod":
            found["serverless"] |= {a.asname or a.name for a in node.names if a.name == "serverless"}
        elif isinstance(node, ast.ImportFrom) and node.module == "runpod.serverless":
            found["start"] |= {a.asname or a.name for a in node.names if a.name == "start"}
    return found


def _is_start(func: ast.expr, aliases: dict[str, set[str]]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in aliases["start"]
    if not (isinstance(func, ast.Attribute) and func.attr == "start"):
        return False
    owner = func.value
    if isinstance(owner, ast.Attribute):
        return owner.attr == "serverless" and isinstance(owner.value, ast.Name) and owner.value.id == "runpod"
    return isinstance(owner, ast.Name) and owner.id in aliases["serverless"]
