"""The test-job finder: the job literals the `test` cells pass to the handler.

They become kit.json's `jobs` (what `kit test` sends through the SDK), the
first becomes test_input.json, and the panel pre-fills its Run box with it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from kit.export.facts import TestCell, literal


def find_test_jobs(test_cells: Iterable[TestCell]) -> list[dict]:
    """find_jobs over the test cells, read a piece at a time."""
    return find_jobs((test.translated.cell.index, tree) for test in test_cells for tree in test.trees())


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
                value = literal(node.value)
                if value is not None:
                    names[node.targets[0].id] = value
            elif isinstance(node, ast.Call) and _calls_named(node, "handler") and node.args:
                arg = node.args[0]
                job = names.get(arg.id) if isinstance(arg, ast.Name) else literal(arg)
                if isinstance(job, dict) and "input" in job:
                    jobs.append({"cell": cell, "line": node.lineno, "job": job})
            elif isinstance(node, ast.Call) and _calls_named(node, "batch_handler") and node.args:
                jobs += [{"cell": cell, "line": node.lineno, "job": job} for job in _batch_jobs(node.args[0], names)]
    return jobs


def _assignments_and_calls(tree: ast.Module) -> list[ast.Assign | ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.Call))]


def _calls_named(node: ast.Call, name: str) -> bool:
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute) and func.attr == name)


def _batch_jobs(arg: ast.expr, names: dict[str, object]) -> list[dict]:
    """The jobs of a list passed to batch_handler: a list literal, or a name assigned one, of job literals."""
    value: object
    if isinstance(arg, ast.Name):
        value = names.get(arg.id)
    elif isinstance(arg, ast.List):
        value = [names.get(e.id) if isinstance(e, ast.Name) else literal(e) for e in arg.elts]
    else:
        value = None
    return [job for job in value if isinstance(job, dict) and "input" in job] if isinstance(value, list) else []
