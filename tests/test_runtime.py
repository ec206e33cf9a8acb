"""The exported worker's start: worker_loop.py, its fast loop and its fallback to the SDK's stock loop."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys

import pytest
from conftest import HELLO_CELLS

from kit.export.export import export_notebook
from kit.serve.emulator import QueueEmulator

pytestmark = pytest.mark.process  # every test here starts worker or server processes


@pytest.fixture
def exported(make_notebook, tmp_path):
    return export_notebook(make_notebook(HELLO_CELLS), tmp_path / "worker").out_dir


def serve_jobs(worker_dir, count: int, env: dict | None = None, command: list[str] | None = None) -> tuple[list[dict], str]:
    """Run the worker directory's handler.py against a queue; return the finished jobs and the worker's log."""
    with QueueEmulator() as emu:
        log_path = worker_dir / "worker.log"
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                command or [sys.executable, "handler.py"],
                cwd=worker_dir,
                env={**os.environ, **emu.worker_env("w1"), "RUNPOD_LOG_LEVEL": "INFO", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            ids = [emu.submit({"input": {"name": str(i)}}) for i in range(count)]
            states = [emu.wait(job_id, timeout=120) for job_id in ids]
        finally:
            worker.send_signal(signal.SIGTERM)
            emu.release_worker("w1")
            worker.wait(60)
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return states, log_path.read_text()


def test_exported_worker_never_imports_the_kit(exported):
    assert (exported / "worker_loop.py").is_file()
    for name in ("handler.py", "worker_loop.py"):
        tree = ast.parse((exported / name).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert "kit" not in imported, name


def test_the_exported_worker_starts_on_the_fast_loop_and_runs_jobs_in_order(exported):
    # How much faster it is, is kit bench's to measure (`--loop both`), side by side.
    states, log = serve_jobs(exported, 20, {"CONCURRENCY_MODIFIER": "1"})
    assert [s["status"] for s in states] == ["COMPLETED"] * 20
    assert [s["output"]["name"] for s in states] == [str(i) for i in range(20)]
    assert "worker_loop: running the fast worker loop" in log
    assert "stock worker loop" not in log


def test_env_var_forces_the_stock_loop_and_says_so(exported):
    states, log = serve_jobs(exported, 2, {"KIT_WORKER_LOOP": "stock"})
    assert [s["status"] for s in states] == ["COMPLETED"] * 2
    assert "running the SDK's stock worker loop: KIT_WORKER_LOOP=stock is set" in log


@pytest.mark.process
def test_an_untested_runpod_version_falls_back_to_the_stock_loop(exported, tmp_path):
    # A runpod that reports another version (its metadata first on the path), with the real code.
    fake = tmp_path / "fake-metadata"
    (fake / "runpod-0.0.1.dist-info").mkdir(parents=True)
    (fake / "runpod-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: runpod\nVersion: 0.0.1\n")
    states, log = serve_jobs(exported, 2, {"PYTHONPATH": str(fake)})
    assert [s["status"] for s in states] == ["COMPLETED"] * 2
    assert "running the SDK's stock worker loop: runpod 0.0.1 is not a version the fast loop was tested with" in log


# handler.py run as RunPod runs it, after a change to the SDK made in the same process.
RUN_HANDLER = "\nimport runpy\nrunpy.run_path('handler.py', run_name='__main__')\n"

# An SDK whose worker binds JobScaler when it is imported: replacing rp_scale.JobScaler would do nothing.
BOUND_SCALER = """
import inspect
import runpod.serverless.worker as worker
from runpod.serverless.modules import rp_scale
namespace = {**vars(worker), "JobScaler": rp_scale.JobScaler}
exec(inspect.getsource(worker.run_worker).replace("rp_scale.JobScaler(", "JobScaler("), namespace)
worker.run_worker = namespace["run_worker"]
"""

# An SDK whose JobScaler keeps its shutdown flag under another name.
RENAMED_EVENT = """
from runpod.serverless.modules import rp_scale
class JobScaler(rp_scale.JobScaler):
    def __init__(self, config):
        super().__init__(config)
        self._stopping = self.__dict__.pop("_shutdown_event")
rp_scale.JobScaler = JobScaler
"""


@pytest.mark.process
def test_a_worker_that_binds_jobscaler_at_import_runs_the_stock_loop_and_says_why(exported):
    states, log = serve_jobs(exported, 3, command=[sys.executable, "-c", BOUND_SCALER + RUN_HANDLER])
    assert [s["output"]["name"] for s in states] == ["0", "1", "2"]
    assert (
        "running the SDK's stock worker loop: runpod.serverless.worker.run_worker does not look up rp_scale.JobScaler when it starts" in log
    )


@pytest.mark.process
def test_a_jobscaler_without_the_attributes_the_fast_loop_uses_runs_the_stock_loop(exported):
    result = subprocess.run(  # local test mode: test_input.json through the stock path
        [sys.executable, "-c", RENAMED_EVENT + RUN_HANDLER],
        cwd=exported,
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_WEBHOOK")}, "RUNPOD_LOG_LEVEL": "INFO"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "running the SDK's stock worker loop: rp_scale.JobScaler has no _shutdown_event attribute of type Event"
        in result.stdout + result.stderr
    )
    assert "completed successfully" in result.stdout + result.stderr


def test_setup_cells_that_import_runpod_still_get_the_fast_loop(make_notebook, tmp_path):
    """handler.py imports worker_loop before the setup's own `import runpod`, so no probe runs."""
    cells = [HELLO_CELLS[0], ("setup", "import runpod\nGREETING = 'hi'"), *HELLO_CELLS[2:]]
    worker = export_notebook(make_notebook(cells), tmp_path / "worker").out_dir
    states, log = serve_jobs(worker, 3)
    assert [s["output"]["name"] for s in states] == ["0", "1", "2"]
    assert "CPU probe already ran" not in log
    assert "worker_loop: running the fast worker loop" in log and "stock" not in log.lower()


def test_local_test_mode_still_runs_test_input(exported):
    result = subprocess.run(
        [sys.executable, "handler.py"],
        cwd=exported,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_WEBHOOK")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed successfully" in result.stdout + result.stderr


BIG_RESULT_CELLS = [
    ("handler", "def handler(job):\n    n = int(job['input']['name'])\n    return {'n': n, 'values': [n + i / 7 for i in range(5000)]}"),
    ("test", "assert len(handler({'input': {'name': '1'}})['values']) == 5000"),
]


@pytest.mark.parametrize("loop", ["fast", "stock"])
def test_a_large_result_is_posted_whole_but_the_sdk_debug_lines_stay_short(make_notebook, tmp_path, loop):
    """The SDK formats every result into debug f-strings, logged or not: the worker hands it a bounded repr."""
    worker = export_notebook(make_notebook(BIG_RESULT_CELLS), tmp_path / "worker").out_dir
    states, log = serve_jobs(worker, 3, {"RUNPOD_LOG_LEVEL": "DEBUG", **({"KIT_WORKER_LOOP": "stock"} if loop == "stock" else {})})
    assert [s["status"] for s in states] == ["COMPLETED"] * 3
    for number, state in enumerate(states):
        assert state["output"] == {"n": number, "values": [number + i / 7 for i in range(5000)]}
    lines = [line for line in log.splitlines() if "Handler output:" in line or "run_job return:" in line]
    assert len(lines) == 6 and all(len(line) < 1000 and "..." in line for line in lines), lines[:2]


def test_local_test_mode_logs_the_whole_result(make_notebook, tmp_path):
    worker = export_notebook(make_notebook(BIG_RESULT_CELLS), tmp_path / "worker").out_dir
    (worker / "test_input.json").write_text('{"input": {"name": "2"}}')
    result = subprocess.run(
        [sys.executable, "handler.py"],
        cwd=worker,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_WEBHOOK")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert repr(2 + 4999 / 7) in result.stdout + result.stderr  # the last value: nothing abbreviated
