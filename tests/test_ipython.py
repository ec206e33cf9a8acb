"""IPython syntax in cells: requirements, dropped and unwrapped magics, errors; line numbers never move."""

from __future__ import annotations

import pytest

from kit.errors import KitError
from kit.export.ipython import parse_pip_install, translate
from kit.export.notebook import Cell, Notebook

NOTEBOOK = Notebook(name="w.ipynb", path=None)


def run(source, mode="export", tag="setup"):
    return translate(NOTEBOOK, Cell(index=3, kind="code", source=source, tags=(tag,)), mode)


def test_pip_lines_become_requirements_and_keep_the_line_count():
    source = "import os\n%pip install 'numpy>=1.26' torch==2.13.0 -q\n!pip install --upgrade requests\nx = 1\n"
    result = run(source)
    assert [(r.spec, r.cell, r.line) for r in result.pip] == [("numpy>=1.26", 3, 2), ("torch==2.13.0", 3, 2), ("requests", 3, 3)]
    assert result.source.count("\n") == source.count("\n")
    assert result.source.splitlines()[3] == "x = 1"
    compile(result.source, "<cell>", "exec")


def test_notebook_only_magics_are_dropped_with_a_located_warning():
    result = run("%matplotlib inline\nx = 1")
    assert [str(w) for w in result.warnings] == ["w.ipynb: cell 3, line 1: `%matplotlib inline` dropped: it only matters in a notebook"]


def test_wrapping_magics_are_unwrapped():
    assert run("%%time\nx = 1\n").source.splitlines()[1] == "x = 1"
    assert run("%time y = f()").source == "y = f()"


@pytest.mark.parametrize(
    "source, what", [("!ls -la", "a shell command"), ("%cd /tmp", "an IPython magic"), ("%%bash\necho hi", "a cell magic")]
)
def test_other_magics_in_exported_cells_are_errors_naming_the_line(source, what):
    with pytest.raises(KitError, match=f"{what}, which a worker cannot run") as caught:
        run(source)
    assert (caught.value.cell, caught.value.line) == (3, 1)


def test_in_test_cells_they_are_skipped_with_a_warning_and_in_scratch_cells_masked():
    result = run("x = 1\n!ls\n", mode="test", tag="test")
    assert "skipped" in str(result.warnings[0]) and result.source.splitlines()[0] == "x = 1"
    masked = run("%%javascript\nalert(1)\n", mode="scan", tag=None)
    assert masked.source.strip() == "" and masked.warnings == []


def test_magic_lookalikes_inside_strings_are_code():
    source = 's = """\n%pip install nothing\n"""\n'
    result = run(source)
    assert result.source == source and result.pip == []


def test_parse_pip_install_keeps_specs_and_names_what_it_leaves_out():
    specs, notes = parse_pip_install(" -U 'a[b]>=1' --index-url https://x c -r req.txt  # comment")
    assert specs == ["a[b]>=1", "c"]
    assert notes == ["`pip install -r ...` not followed: list those requirements in a `%pip install` line"]
