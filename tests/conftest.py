"""Shared test helpers: notebooks built with nbformat, the kit CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
# ../shared beside the checkout (CI has it; a fresh clone does not): KIT_SHARED points elsewhere.
SHARED = Path(os.environ.get("KIT_SHARED") or ROOT.parent / "shared")
WILD = SHARED / "wild-notebooks"
needs_shared = pytest.mark.skipif(
    not WILD.is_dir(), reason=f"needs {WILD} (../shared beside the checkout, or KIT_SHARED); a fresh clone has none"
)


def build_notebook(path: Path, cells) -> Path:
    """Write a notebook. `cells` holds (tag, source) pairs; tag None is untagged,
    "md" a markdown cell, a tuple several tags."""
    nb = new_notebook()
    for tag, source in cells:
        if tag == "md":
            nb.cells.append(new_markdown_cell(source))
            continue
        cell = new_code_cell(source)
        if tag:
            cell.metadata["tags"] = list(tag) if isinstance(tag, tuple) else [tag]
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def make_notebook(tmp_path):
    def make(cells, name="worker.ipynb"):
        return build_notebook(tmp_path / name, cells)

    return make


def run_kit(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The `kit` CLI as a user runs it, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "kit", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


HELLO_CELLS = [
    ("md", "# a worker"),
    ("setup", "import os\nGREETING = os.environ.get('GREETING', 'hi')"),
    ("handler", "def handler(job):\n    return {'greeting': GREETING, **job['input']}"),
    ("test", "result = handler({'input': {'name': 'ada'}})\nassert result['name'] == 'ada'"),
]


def process_gone(pid: int, timeout: float = 30) -> bool:
    """True once `pid` is gone (a zombie waiting for whoever adopted it counts as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False
