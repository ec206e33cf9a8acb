"""Reading notebooks into cells with roles: odd files are one KitError naming the file, never a crash."""

from __future__ import annotations

import json
import re

import pytest

from kit.errors import KitError
from kit.export.notebook import notebook_from_dict, read_notebook


def nb(*cells, **top):
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": list(cells), **top}


def code(source, tags=None, **extra):
    cell = {"cell_type": "code", "source": source, "metadata": {"tags": tags} if tags is not None else {}, **extra}
    return cell


def test_cells_are_numbered_from_one_counting_markdown_and_roles_come_from_tags():
    notebook = notebook_from_dict(
        nb(
            {"cell_type": "markdown", "source": "# t"},
            code("x = 1", ["setup"]),
            code("def handler(job): ...", ["handler", "other"]),
            code("y", ["test"]),
            code("z"),
        )
    )
    assert [c.index for c in notebook.cells] == [1, 2, 3, 4, 5]
    assert [c.role for c in notebook.cells] == [None, "setup", "handler", "test", None]
    assert [c.index for c in notebook.exported_cells] == [2, 3] and [c.index for c in notebook.test_cells] == [4]


def test_sources_as_line_lists_strings_or_missing_are_all_read():
    notebook = notebook_from_dict(nb(code(["a = 1\n", "b = 2"]), code(None), {"cell_type": "code"}))
    assert [c.source for c in notebook.cells] == ["a = 1\nb = 2", "", ""]


@pytest.mark.parametrize("tags, expected", [("setup", ("setup",)), ([" setup "], ("setup",)), ({"a": 1}, ()), ([1, "test"], ("1", "test"))])
def test_tags_of_any_shape(tags, expected):
    assert notebook_from_dict(nb(code("x", tags))).cells[0].tags == expected


def test_a_markdown_cell_tagged_handler_has_no_role():
    assert notebook_from_dict(nb({"cell_type": "markdown", "source": "x", "metadata": {"tags": ["handler"]}})).cells[0].role is None


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "not a notebook (no cells)"),
        ({"worksheets": [], "nbformat": 3}, "nbformat 3 notebooks are not supported"),
        ({"cells": {}}, "'cells' is not a list"),
        ({"cells": [1]}, "malformed cell"),
    ],
)
def test_malformed_notebooks_are_one_kit_error(data, message):
    with pytest.raises(KitError, match=re.escape(message)):
        notebook_from_dict(data, name="x.ipynb")


def test_files_that_are_not_notebooks(tmp_path):
    (tmp_path / "bin.ipynb").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "bad.ipynb").write_text("{")
    for name, message in [("missing.ipynb", "no such file"), ("bin.ipynb", "not UTF-8"), ("bad.ipynb", "invalid JSON at line 1")]:
        with pytest.raises(KitError, match=message) as caught:
            read_notebook(tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name))
    with pytest.raises(KitError, match="is a directory"):
        read_notebook(tmp_path)


def test_a_saved_notebook_round_trips(tmp_path):
    path = tmp_path / "w.ipynb"
    path.write_text(json.dumps(nb(code("x = 1", ["setup"]))))
    notebook = read_notebook(path)
    assert notebook.name == str(path) and notebook.directory == tmp_path and notebook.cells[0].role == "setup"
