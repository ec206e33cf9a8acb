"""A long cell read in pieces gives what the whole cell gives."""

from __future__ import annotations

from test_checks import LONG, notebook

import kit.export.pieces
from kit.export.checks import analyse


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
    monkeypatch.setattr(kit.export.pieces, "PIECE_LINES", 10**9)
    assert read() == in_pieces
    future, kind, imports, warnings, source = in_pieces
    assert future == ["annotations"] and kind == "function"
    assert imports == [("runpod", 2, False), ("yaml_nowhere", line["    import yaml_nowhere"], True)]
    assert [number for number, _ in warnings] == [line["x = '\\d'"], line["runpod.serverless.start({'handler': handler})"]]
    assert source.split("\n")[0] == "# kit: __future__ import hoisted to the top of handler.py"
