"""Transforms return a new piece of a cell and leave the one they were given as it was."""

from __future__ import annotations

import ast
import copy

import pytest

from kit.errors import KitError
from kit.export.notebook import Notebook
from kit.export.pieces import parse_piece
from kit.export.transforms import HOISTED, hoist_future_imports, without_start_calls

NOTEBOOK = Notebook(name="w.ipynb", path=None)
RUNPOD = {"serverless": set(), "start": set()}


def piece(text: str):
    return parse_piece(NOTEBOOK, 1, 0, text, 0, True, False)


def frozen(p) -> tuple[str, str, list]:
    return p.text, ast.dump(p.tree, include_attributes=True), list(p.tree.body)


def test_future_imports_are_hoisted_into_a_new_piece_with_the_lines_kept():
    given = piece("from __future__ import annotations\nfrom __future__ import division; x = 1\nimport os\n")
    before = frozen(given)
    new, names = hoist_future_imports(given)
    assert names == ["annotations", "division"]
    assert new.text == f"{HOISTED}\npass; x = 1\nimport os\n"
    assert [type(node).__name__ for node in new.tree.body] == ["Assign", "Import"]
    assert frozen(given) == before  # the piece given still has its imports, in text and tree


def test_a_piece_without_future_imports_is_returned_as_it_is():
    given = piece("import os\n")
    assert hoist_future_imports(given) == (given, [])


def test_a_pasted_start_call_becomes_runpod_config_in_a_new_piece():
    given = piece("import runpod\ndef handler(job):\n    return 1\nrunpod.serverless.start({'handler': handler})\n")
    before = frozen(given)
    rewrite = without_start_calls(NOTEBOOK, 1, given, copy.deepcopy(RUNPOD))
    assert rewrite.piece is not given
    assert rewrite.piece.text.split("\n")[3].startswith("RUNPOD_CONFIG = ({'handler': handler})  # kit: was runpod.serverless.start")
    assert [line for line, _ in rewrite.notes] == [4]
    assert frozen(given) == before


def test_a_start_call_inside_a_function_is_a_located_error():
    given = piece("import runpod\ndef main():\n    runpod.serverless.start({'handler': main})\n")
    with pytest.raises(KitError, match="called inside a function") as caught:
        without_start_calls(NOTEBOOK, 1, given, copy.deepcopy(RUNPOD))
    assert (caught.value.cell, caught.value.line) == (1, 3)
