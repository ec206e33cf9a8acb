"""kit.test.hub: `kit test DIR` runs .runpod/tests.json as the Hub would, through the local endpoint."""

from __future__ import annotations

import json

import pytest
from conftest import build_notebook, run_kit

CELLS = [
    ("md", "# Echo\n\nEchoes its input after a pause."),
    ("setup", "import os, time\nPAUSE = float(os.environ.get('PAUSE', '0'))\nMODE = os.environ['MODE']"),
    (
        "handler",
        "def handler(job):\n"
        "    time.sleep(job['input'].get('sleep', PAUSE))\n"
        "    if job['input'].get('fail'):\n"
        "        raise ValueError('asked to fail')\n"
        "    return {'echo': job['input'], 'mode': MODE}",
    ),
    ("test", "import os\nassert MODE == os.environ['MODE']"),
    ("test", "assert handler({'input': {'word': 'hi'}})['echo'] == {'word': 'hi'}\nhandler({'input': {'word': 'again'}})"),
]


@pytest.fixture
def repo(tmp_path):
    notebook = build_notebook(tmp_path / "echo.ipynb", CELLS)
    out = tmp_path / "repo"
    result = run_kit("export", notebook, "-o", out, "--repo", "--category", "language")
    assert result.returncode == 0, result.stderr
    assert "MODE is required and has no default" in result.stderr
    tests_path = out / ".runpod" / "tests.json"
    tests = json.loads(tests_path.read_text())
    tests["config"]["env"] = [*tests["config"].get("env", []), {"key": "MODE", "value": "hub"}]
    tests_path.write_text(json.dumps(tests, indent=2))
    return out


def hub_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "hub test " in line]


@pytest.mark.process
@pytest.mark.timeout(300)
def test_kit_test_runs_every_hub_test_through_the_local_endpoint(repo):
    result = run_kit("test", repo, "--json", repo.parent / "report.json", timeout=240, env={"MODE": "local"})
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((repo.parent / "report.json").read_text())
    assert [(t["name"], t["status"], t["ok"]) for t in report["hub_tests"]] == [
        ("cell_5_line_1", "COMPLETED", True),
        ("cell_5_line_2", "COMPLETED", True),
    ]
    lines = hub_lines(result.stdout)
    assert [line.split()[:3] for line in lines] == [["PASS", "hub", "test"]] * 2
    assert "cell_5_line_1" in lines[0] and "cell_5_line_2" in lines[1]
    assert "of 300 s" in lines[0] and "COMPLETED" in lines[0]
    assert "hub tests: 2 of 2 passed" in result.stdout


@pytest.mark.process
@pytest.mark.timeout(300)
def test_a_hub_test_fails_when_its_job_fails_or_outlives_its_timeout(repo):
    tests_path = repo / ".runpod" / "tests.json"
    tests = json.loads(tests_path.read_text())
    tests["tests"] = [
        {"name": "fails", "input": {"fail": True}, "timeout": 60_000},
        {"name": "slow", "input": {"sleep": 8}, "timeout": 2_000},
        {"name": "fine", "input": {"word": "ok"}, "timeout": 60_000},
    ]
    tests_path.write_text(json.dumps(tests))
    result = run_kit("test", repo, "--json", repo.parent / "report.json", timeout=240, env={"MODE": "local"})
    assert result.returncode == 1
    assert json.loads((repo.parent / "report.json").read_text())["ok"] is False  # the notebook's own tests passed
    lines = hub_lines(result.stdout)
    assert lines[0].startswith("FAIL  hub test fails") and "FAILED" in lines[0] and "asked to fail" in lines[0]
    assert lines[1].startswith("FAIL  hub test slow") and "TIMED_OUT" in lines[1] and "not done within its timeout of 2000 ms" in lines[1]
    assert lines[2].startswith("PASS  hub test fine")
    assert "hub tests: 1 of 3 passed" in result.stdout


@pytest.mark.process
@pytest.mark.timeout(300)
def test_hub_tests_start_the_worker_with_tests_json_env_only(repo, tmp_path):
    # Without MODE in config.env the setup's os.environ["MODE"] fails, as on the Hub.
    tests_path = repo / ".runpod" / "tests.json"
    tests = json.loads(tests_path.read_text())
    tests["config"]["env"] = [item for item in tests["config"]["env"] if item["key"] != "MODE"]
    tests_path.write_text(json.dumps(tests))
    result = run_kit("test", repo, timeout=240, env={"MODE": "from-the-shell"})  # the notebook's tests pass with it
    assert result.returncode == 3
    assert result.stderr.startswith(f"error: {repo}/.runpod/tests.json: the worker did not start: ") and "KeyError: 'MODE'" in result.stderr
    assert "config.env" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.process
@pytest.mark.timeout(300)
def test_hub_tests_are_not_run_when_the_worker_does_not_start(repo):
    result = run_kit("test", repo, timeout=240)  # no MODE anywhere: the setup raises KeyError
    assert result.returncode == 1
    assert "hub tests: not run (.runpod/tests.json): the worker does not start" in result.stdout
    assert not hub_lines(result.stdout)
