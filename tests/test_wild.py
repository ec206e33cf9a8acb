"""Real notebooks from public repositories never crash the kit.

Whatever they contain (magics, Python 2, Colab forms, invalid cells), every
outcome is a worker or a KitError with a location: never a traceback.
"""

from __future__ import annotations

import json

import pytest
from conftest import WILD, needs_shared, run_kit

from kit.errors import KitError
from kit.export.export import build_worker
from kit.export.notebook import notebook_from_dict, read_notebook

NOTEBOOKS = sorted(WILD.glob("*.ipynb"))
pytestmark = needs_shared


def retagged(data: dict, layout: str) -> dict:
    """The notebook with its code cells tagged as a user might tag them."""
    data = json.loads(json.dumps(data))
    code = [c for c in data["cells"] if c.get("cell_type") == "code"]
    for position, cell in enumerate(code):
        last = position == len(code) - 1
        tag = {
            "all-setup": "handler" if last else "setup",
            "all-handler": "handler",
            "all-test": "test",
            "setup-plus-handler": "setup",
            "alternate": ("setup", "handler", "test")[position % 3],
        }[layout]
        cell.setdefault("metadata", {})["tags"] = [tag]
    if layout in ("all-test", "setup-plus-handler"):
        data["cells"].append(
            {
                "cell_type": "code",
                "metadata": {"tags": ["handler"]},
                "source": "def handler(job):\n    return job",
                "outputs": [],
                "execution_count": None,
            }
        )
    return data


def test_wild_notebooks_are_present():
    assert len(NOTEBOOKS) >= 17


@pytest.mark.parametrize("layout", ["as-is", "all-setup", "all-handler", "all-test", "alternate", "setup-plus-handler"])
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_export_gives_a_worker_or_a_located_kit_error(path, layout):
    data = json.loads(path.read_text(encoding="utf-8"))
    if layout != "as-is":
        data = retagged(data, layout)
    notebook = notebook_from_dict(data, name=path.name, path=path)
    try:
        worker = build_worker(notebook)
    except KitError as error:
        assert str(error).startswith(path.name + ": ")
        assert "\n" not in str(error)
        return
    compile(worker.files["handler.py"], "handler.py", "exec")
    json.loads(worker.files["kit.json"])


@pytest.mark.process
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cli_on_wild_notebooks_exits_cleanly(path, tmp_path):
    read_notebook(path)  # every wild notebook reads
    result = run_kit("export", path, "-o", tmp_path / "out")
    assert result.returncode in (0, 2), result.stderr
    assert "Traceback" not in result.stderr
