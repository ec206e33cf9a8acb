"""The percent format: what export writes, the harness reads back, line for line."""

from __future__ import annotations

from kit import percent


def test_render_then_parse_gives_the_cells_back_with_their_lines():
    text = percent.render(
        "# header\n",
        [(2, "setup", "import os\nX = 1"), (4, "handler", "def handler(job):\n    return X\n")],
        percent.FOOTER + ": start\nmain()\n",
    )
    parsed = percent.parse(text)
    assert parsed.header.strip() == "# header"
    assert [(c.cell, c.tag) for c in parsed.cells] == [(2, "setup"), (4, "handler")]
    lines = text.splitlines()
    for cell in parsed.cells:
        assert lines[cell.start_line - 2] == percent.marker(cell.cell, cell.tag)
        assert lines[cell.start_line - 1] == cell.source.splitlines()[0]
    assert "main()" not in "".join(c.source for c in parsed.cells)
    assert parsed.footer.startswith(percent.FOOTER)


def test_a_file_without_markers_has_no_cells():
    parsed = percent.parse("def handler(job):\n    return 1\n")
    assert parsed.cells == [] and parsed.header.startswith("def handler")


def test_a_marker_lookalike_inside_code_is_only_a_marker_at_line_start():
    text = percent.render("", [(1, "setup", "s = '''\n  # %% cell 9 [setup]\n'''")])
    assert [c.cell for c in percent.parse(text).cells] == [1]
