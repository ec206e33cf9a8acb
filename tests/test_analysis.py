"""Static checks on the exported cells: the handler, names defined where they are exported, job literals."""

from __future__ import annotations

import ast

import pytest

import kit.export.analysis
from kit.errors import KitError
from kit.export.analysis import analyse, find_jobs
from kit.export.notebook import Cell, Notebook


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
    analysis = analyse(
        notebook(("setup", "import os\nfrom json import dumps as d"), ("handler", "def handler(job):\n    return d(len(os.environ))"))
    )
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
    tree = ast.parse(
        "job = {'input': {'a': 1}}\nhandler(job)\nhandler({'input': 2})\nhandler(other)\nx.handler({'input': 3})\nhandler({'no': 'input'})"
    )
    jobs = find_jobs([(7, tree)])
    assert [(j["cell"], j["line"], j["job"]) for j in jobs] == [(7, 2, {"input": {"a": 1}}), (7, 3, {"input": 2}), (7, 5, {"input": 3})]


LONG = "".join(f"row_{i} = {i}\n" for i in range(2500))  # more than analysis.PIECE_LINES: read in pieces


@pytest.mark.parametrize(
    "setup, message, line",
    [
        (LONG + "x = (\n" + LONG, "syntax error", 2501),
        (LONG + "return 1\n" + LONG + "y = (\n", "syntax error: .\\(. was never closed", 5002),  # the parser's error before the compiler's
        (LONG + "print(nowhere)\n" + LONG, "`nowhere` is not defined anywhere", 2501),
        ("def f():\n    late = 1\n" + LONG + "print(late)\n", "`late` is not defined anywhere", 2),  # its first use
        (LONG + "from __future__ import annotations\n", "from __future__ imports must occur at the beginning of the file", 2501),
        (LONG + "global row_1\n", "name 'row_1' is assigned to before global declaration", 2501),
    ],
)
def test_a_long_cell_is_checked_with_the_lines_of_the_whole_cell(setup, message, line):
    with pytest.raises(KitError, match=message) as caught:
        analyse(notebook(("setup", setup), ("handler", "def handler(job):\n    return 1")))
    assert (caught.value.cell, caught.value.line) == (1, line)


def test_a_long_cell_read_in_pieces_gives_what_the_whole_cell_gives(monkeypatch):
    code = (
        "from __future__ import annotations\nimport runpod\n"
        + LONG
        + "@staticmethod\n# a comment between a decorator and its function\ndef helper(job: Unimported):\n    return job\n"
        + "if row_1:\n    pass\n# a comment between two clauses\nelse:\n    pass\n"
        + 's = """\ndef not_a_statement():\n"""\n'
        + LONG.replace("row_", "more_")
        + "handler = helper\ntry:\n    import yaml_nowhere\nexcept ImportError:\n    pass\nx = '\\d'\n"
        + "runpod.serverless.start({'handler': handler})\n"
    )
    line = {text: number for number, text in enumerate(code.split("\n"), start=1)}

    def read():
        analysis = analyse(notebook(("handler", code)))
        return (
            analysis.future_imports,
            analysis.handler_kind,
            [(i.module, i.line, i.optional) for i in analysis.imports],
            [(w.line, w.message) for w in analysis.warnings],
            analysis.cells[0].translated.source,
        )

    in_pieces = read()
    monkeypatch.setattr(kit.export.analysis, "PIECE_LINES", 10**9)
    assert read() == in_pieces
    future, kind, imports, warnings, source = in_pieces
    assert future == ["annotations"] and kind == "function"
    assert imports == [("runpod", 2, False), ("yaml_nowhere", line["    import yaml_nowhere"], True)]
    assert [number for number, _ in warnings] == [line["x = '\\d'"], line["runpod.serverless.start({'handler': handler})"]]
    assert source.split("\n")[0] == "# kit: __future__ import hoisted to the top of handler.py"
