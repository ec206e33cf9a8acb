"""Static checks on the exported cells: the handler, names defined where they are exported, a long cell's errors."""

from __future__ import annotations

import pytest

from kit.errors import KitError
from kit.export.checks import analyse
from kit.export.notebook import Cell, Notebook
from kit.workerdir import HandlerKind


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
    assert analyse(notebook(("handler", source))).handler_kind is HandlerKind(kind)


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


LONG = "".join(f"row_{i} = {i}\n" for i in range(2500))  # more than pieces.PIECE_LINES: read in pieces


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


def test_a_name_defined_only_in_a_test_cell_is_moved_not_tagged_setup():
    # Tagging the test cell `setup` would run its handler call at every worker start.
    test_cell = "model = 1\nhandler({'input': 1})"
    with pytest.raises(KitError) as caught:
        analyse(notebook(("test", test_cell), ("handler", "def handler(job):\n    return model")))
    assert "`model` is defined only in cell 1 (test), which is not exported" in str(caught.value)
    assert "move the definition into a `setup` or `handler` cell" in caught.value.hint
    assert "tag cell 1 `setup`" not in caught.value.hint
    assert (caught.value.cell, caught.value.line) == (2, 2)


def test_a_name_defined_only_in_an_untagged_cell_may_still_be_tagged_setup():
    with pytest.raises(KitError) as caught:
        analyse(notebook((None, "model = 1"), ("handler", "def handler(job):\n    return model")))
    assert caught.value.hint == "tag cell 1 `setup`, or move the definition into a `setup` or `handler` cell"


@pytest.mark.parametrize(
    "cells",
    [
        [("test", "def handler(job):\n    return 1\nhandler({'input': 1})"), ("handler", "x = 1")],  # no handler in the handler cells
        [("test", "def handler(job):\n    return 1\nhandler({'input': 1})")],  # no handler cell at all
    ],
)
def test_a_handler_defined_only_in_a_test_cell_is_moved_not_retagged(cells):
    with pytest.raises(KitError) as caught:
        analyse(notebook(*cells))
    assert "move the definition into a cell tagged `handler`" in caught.value.hint or caught.value.hint.startswith(
        "move the definition into the cell tagged `handler`"
    )
    assert "cell 1 would run its test calls at every worker start" in caught.value.hint
    assert "tag that cell" not in caught.value.hint and "add the tag" not in caught.value.hint
