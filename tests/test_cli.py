"""The `kit` command line: every command is listed, errors are one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_kit


@pytest.mark.process
def test_help_lists_every_command():
    result = run_kit("--help")
    assert result.returncode == 0
    for command in ("export", "deps", "test", "serve", "bench", "deploy"):
        assert command in result.stdout


@pytest.mark.process
def test_serve_help_shows_the_defaults_of_every_option():
    text = " ".join(run_kit("serve", "--help").stdout.split())  # argparse wraps lines
    for option, default in [("--host", "127.0.0.1"), ("--port", "8000"), ("--workers", "1"), ("--execution-timeout", "600")]:
        assert re.search(rf"{option} \S+ .*?\(default {re.escape(default)}\b", text), option


def test_version_and_usage_errors():
    assert run_kit("--version").stdout.startswith("kit ")
    result = run_kit("export")
    assert result.returncode == 2 and "the following arguments are required: notebook" in result.stderr


@pytest.mark.process
def test_export_speed_benchmark_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/export_speed.py", "--rounds", "1", "--json", "notebooks/hello.ipynb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["results"][0]
    assert row["notebook"] == "notebooks/hello.ipynb" and row["kit_export_s"] > 0 and row["nbconvert_to_python_s"] > 0


@pytest.mark.process
def test_output_cut_short_by_the_reader_is_not_a_traceback():
    """`kit test NB | head -1`: the reader leaves early; the kit stops quietly."""
    result = subprocess.run(
        f"{sys.executable} -m kit test notebooks/hello.ipynb | head -1",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["serve", "nb.ipynb", "--port", "99999"], "argument --port: 99999 is not a port"),
        (["serve", "nb.ipynb", "--port", "-1"], "argument --port: -1 is not a port"),
        (["serve", "nb.ipynb", "--workers", "0"], "argument --workers: must be at least 1, not 0"),
        (["bench", "nb.ipynb", "--jobs", "-3"], "argument --jobs: must be at least 1, not -3"),
        (["test", "nb.ipynb", "--timeout", "0"], "argument --timeout: must be a positive number of seconds, not 0"),
        (["test", "nb.ipynb", "--timeout", "nan"], "argument --timeout: must be a positive number of seconds, not nan"),
        (["test", "nb.ipynb", "--timeout", "-1"], "argument --timeout: must be a positive number of seconds, not -1"),
        (["test", "nb.ipynb", "--timeout", "inf"], "argument --timeout: must be a positive number of seconds, not inf"),
    ],
)
def test_out_of_range_options_are_one_line_errors(args, message):
    result = run_kit(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: kit ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
