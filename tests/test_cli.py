"""The `kit` command line: every command is listed, errors are one line."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys

from conftest import ROOT, run_kit


@pytest.mark.process
def test_help_lists_every_command():
    result = run_kit("--help")
    assert result.returncode == 0
    for command in ("export", "deps", "test", "serve", "bench"):
        assert command in result.stdout


@pytest.mark.process
def test_version_and_usage_errors():
    assert run_kit("--version").stdout.startswith("kit ")
    result = run_kit("export")
    assert result.returncode == 2 and "the following arguments are required: notebook" in result.stderr


@pytest.mark.process
def test_export_speed_benchmark_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/export_speed.py", "--rounds", "1", "--json", "notebooks/hello.ipynb"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["results"][0]
    assert row["notebook"] == "notebooks/hello.ipynb" and row["kit_export_s"] > 0 and row["nbconvert_to_python_s"] > 0


@pytest.mark.process
def test_output_cut_short_by_the_reader_is_not_a_traceback():
    """`kit test NB | head -1`: the reader leaves early; the kit stops quietly."""
    result = subprocess.run(
        f"{sys.executable} -m kit test notebooks/hello.ipynb | head -1",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.stdout.startswith("kit test: ")
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr


@pytest.mark.process
def test_a_problem_of_the_machine_exits_3_not_2(tmp_path):
    """Exit 2 means "the notebook cannot be exported"; a busy port is not the notebook's fault."""
    import socket

    from conftest import HELLO_CELLS, build_notebook

    nb = build_notebook(tmp_path / "w.ipynb", HELLO_CELLS)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_kit("serve", nb, "--port", busy.getsockname()[1], timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot listen on 127.0.0.1:")
