"""Static checks on the exported cells: the handler, names defined where they are exported, job literals."""

from __future__ import annotations

import ast

import pytest

from kit.build.analysis import analyse, find_jobs
from kit.build.notebook import Cell, Notebook
from kit.errors import KitError


def notebook(*cells):
    """(tag, source) pairs -> a Notebook whose cells are numbered from 1."""
    nb = Notebook(name="w.ipynb", path=None)
    for index, (tag, source) in enumerate(cells, start=1):
        nb.cells.append(Cell(index=index, kind="code", source=source, tags=(tag,) if tag else ()))
    return nb


@pytest.mark.parametrize(
    "source, kind",
    [
        ("def handler(job):\n    return 1", "function"),
        ("async def handler(job):\n    return 1", "async"),
        ("def handler(job):\n    yield 1", "generator"),
        ("async def handler(job):\n    yield 1", "async_generator"),
        ("def handler(job):\n    def inner():\n        yield 1\n    return list(inner())", "function"),
    ],
)
def test_handler_kind(source, kind):
    assert analyse(notebook(("handler", source))).handler_kind == kind


def test_a_name_defined_only_in_an_untagged_cell_is_named_with_that_cell():
    with pytest.raises(KitError, match=r"`model` is defined only in cell 1 \(untagged\)") as caught:
        analyse(notebook((None, "model = 1"), ("handler", "def handler(job):\n    return model")))
    assert (caught.value.cell, caught.value.line) == (2, 2)


def test_names_from_builtins_imports_and_other_exported_cells_are_fine():
    analysis = analyse(notebook(("setup", "import os\nfrom json import dumps as d"), ("handler", "def handler(job):\n    return d(len(os.environ))")))
    assert [item.module for item in analysis.imports] == ["os", "json"]


@pytest.mark.parametrize(
    "cells, message",
    [
        ([("handler", "x = 1")], "no handler function is defined"),
        ([("setup", "def handler(job): ..."), ("handler", "pass")], "handler is defined in a cell tagged `setup`"),
        ([("handler", "def handler():\n    pass")], "must accept exactly one positional argument"),
        ([("handler", "def handler(job):\n  return 1\n await x")], "syntax error"),
        ([("handler", "def handler(job): ..."), ("setup", "await setup()")], "await"),
        ([("handler", "def handler(job):\n    display(job)")], "display"),
    ],
)
def test_mistakes_are_located_kit_errors(cells, message):
    with pytest.raises(KitError, match=message):
        analyse(notebook(*cells))


def test_future_imports_are_hoisted_and_python_warnings_located():
    analysis = analyse(notebook(("setup", "from __future__ import annotations\nx = '\\d'"), ("handler", "def handler(job): ...")))
    assert analysis.future_imports == ["annotations"]
    assert any(w.cell == 1 and w.line == 2 and "invalid escape sequence" in w.message for w in analysis.warnings)


def test_concurrency_modifier_is_seen():
    assert analyse(notebook(("handler", "def handler(job): ...\ndef concurrency_modifier(n):\n    return 4"))).has_concurrency_modifier


def test_job_literals_directly_or_through_a_variable_in_order():
    tree = ast.parse("job = {'input': {'a': 1}}\nhandler(job)\nhandler({'input': 2})\nhandler(other)\nx.handler({'input': 3})\nhandler({'no': 'input'})")
    jobs = find_jobs([(7, tree)])
    assert [(j["cell"], j["line"], j["job"]) for j in jobs] == [(7, 2, {"input": {"a": 1}}), (7, 3, {"input": 2}), (7, 5, {"input": 3})]
