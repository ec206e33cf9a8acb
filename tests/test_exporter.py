"""The `runpod` nbconvert exporter: `jupyter nbconvert --to runpod` and the library class."""

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import build_notebook as write_notebook
from nbconvert.exporters import get_export_names, get_exporter
from traitlets.config import Config

from kit.errors import KitError

JUPYTER = Path(sys.executable).with_name("jupyter")


ECHO = [
    (None, "import kit\nkit.panel()"),
    ("setup", "import json\nPREFIX = 'echo'"),
    ("handler", "def handler(job):\n    return {PREFIX: job['input']}"),
    ("test", "print(handler({'input': {'x': 1}}))"),
]


def test_jupyterlab_lists_the_runpod_exporter():
    assert "runpod" in get_export_names()
    exporter = get_exporter("runpod")
    # JupyterLab's "Save and Export Notebook As" menu shows this label.
    assert exporter.export_from_notebook == "RunPod worker"
    assert exporter().file_extension == ".zip"


@pytest.mark.process
def test_nbconvert_cli_writes_a_zip_of_the_worker(tmp_path):
    notebook = write_notebook(tmp_path / "echo.ipynb", ECHO)
    (tmp_path / "helpers.py").write_text("VALUE = 1\n")
    subprocess.run(
        [str(JUPYTER), "nbconvert", "--to", "runpod", notebook.name],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    with zipfile.ZipFile(tmp_path / "echo.zip") as archive:
        names = set(archive.namelist())
        assert {"handler.py", "requirements.txt", "test_input.json", "tests.py", "kit.json"} <= names
        handler = archive.read("handler.py").decode()
        assert "# %% cell 3 [handler]" in handler
        assert "import kit" not in handler  # the untagged panel cell is scratch
        assert json.loads(archive.read("test_input.json")) == {"input": {"x": 1}}
        assert archive.read("requirements.txt").decode().startswith("# Requirements")


@pytest.mark.process
def test_the_zipped_worker_runs_its_test_job(tmp_path):
    notebook = write_notebook(tmp_path / "echo.ipynb", ECHO)
    data, _ = get_exporter("runpod")().from_filename(str(notebook))
    worker = tmp_path / "worker"
    zipfile.ZipFile(io.BytesIO(data)).extractall(worker)
    done = subprocess.run(
        [sys.executable, "handler.py", "--rp_log_level", "INFO"],
        cwd=worker,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "'echo': {'x': 1}" in done.stdout + done.stderr


def test_local_modules_beside_the_notebook_are_zipped(tmp_path):
    (tmp_path / "textutils").mkdir()
    (tmp_path / "textutils" / "__init__.py").write_text("def shout(s):\n    return s.upper()\n")
    (tmp_path / "textutils" / "__pycache__").mkdir()
    (tmp_path / "textutils" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    notebook = write_notebook(
        tmp_path / "shout.ipynb",
        [("setup", "from textutils import shout"), ("handler", "def handler(job):\n    return shout(job['input'])")],
    )
    data, _ = get_exporter("runpod")().from_filename(str(notebook))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "textutils/__init__.py" in names
    assert not any("__pycache__" in name for name in names)


def test_same_notebook_gives_the_same_zip(tmp_path):
    notebook = write_notebook(tmp_path / "echo.ipynb", ECHO)
    exporter = get_exporter("runpod")()
    first, _ = exporter.from_filename(str(notebook))
    second, _ = exporter.from_filename(str(notebook))
    assert first == second


@pytest.mark.process
def test_cli_reports_a_user_mistake_as_one_line(tmp_path):
    notebook = write_notebook(tmp_path / "bad.ipynb", [("handler", "import no_such_module_xyz\ndef handler(job):\n    return 1")])
    done = subprocess.run(
        [str(JUPYTER), "nbconvert", "--to", "runpod", notebook.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "error: bad.ipynb: cell 1, line 1: `import no_such_module_xyz`" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "bad.zip").exists()


def test_library_callers_get_the_kit_error(tmp_path):
    notebook = write_notebook(tmp_path / "nohandler.ipynb", [("setup", "x = 1")])
    with pytest.raises(KitError) as raised:
        get_exporter("runpod")().from_filename(str(notebook))
    assert "nohandler.ipynb" in str(raised.value)


def test_a_file_name_with_backslashes_never_becomes_a_zip_entry(tmp_path, caplog):
    """`..\\..\\evil.py` in a local package is one file on Linux, but a Windows unzip tool splits it
    at the backslashes and writes outside the folder: the file is left out, with one warning."""
    (tmp_path / "textutils").mkdir()
    (tmp_path / "textutils" / "__init__.py").write_text("def shout(s):\n    return s.upper()\n")
    (tmp_path / "textutils" / "..\\..\\evil.py").write_text("print('outside')\n")
    notebook = write_notebook(
        tmp_path / "shout.ipynb",
        [("setup", "from textutils import shout"), ("handler", "def handler(job):\n    return shout(job['input'])")],
    )
    with caplog.at_level("WARNING"):
        data, _ = get_exporter("runpod")().from_filename(str(notebook))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "textutils/__init__.py" in names
    assert not any("\\" in name or "evil" in name for name in names), names
    warnings = [r.getMessage() for r in caplog.records if "evil" in r.getMessage()]
    assert len(warnings) == 1 and "a backslash in its name, which Windows unzip tools read as a folder separator" in warnings[0]


def test_the_exporter_takes_include_globs_as_kit_export_does(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.txt").write_text("a")
    notebook = write_notebook(tmp_path / "echo.ipynb", ECHO)
    exporter = get_exporter("runpod")(config=Config({"RunpodExporter": {"include": ["prompts/*.txt"]}}))
    data, _ = exporter.from_filename(str(notebook))
    assert "prompts/a.txt" in zipfile.ZipFile(io.BytesIO(data)).namelist()
