"""The exported worker's start: worker_loop.py, its fast loop and its fallback to the SDK's stock loop."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys

import pytest
from conftest import HELLO_CELLS

from kit.local.emulator import QueueEmulator
from kit.build.export import export_notebook

pytestmark = pytest.mark.process  # every test here starts worker or server processes


@pytest.fixture
def exported(make_notebook, tmp_path):
    return export_notebook(make_notebook(HELLO_CELLS), tmp_path / "worker").out_dir


def serve_jobs(worker_dir, count: int, env: dict | None = None) -> tuple[list[dict], str]:
    """Run the worker directory's handler.py against a queue; return the finished jobs and the worker's log."""
    with QueueEmulator() as emu:
        log_path = worker_dir / "worker.log"
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                [sys.executable, "handler.py"],
                cwd=worker_dir,
                env={**os.environ, **emu.worker_env("w1"), "RUNPOD_LOG_LEVEL": "INFO", **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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


def test_an_untested_runpod_version_falls_back_to_the_stock_loop(exported):
    loop_file = exported / "worker_loop.py"
    text = loop_file.read_text()
    assert 'TESTED_RUNPOD = ("1.12.0",)' in text
    loop_file.write_text(text.replace('TESTED_RUNPOD = ("1.12.0",)', 'TESTED_RUNPOD = ("0.0.1",)'))
    states, log = serve_jobs(exported, 2)
    assert [s["status"] for s in states] == ["COMPLETED"] * 2
    assert "runpod 1.12.0 is not a version the fast loop was tested with (0.0.1)" in log


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
        [sys.executable, "handler.py"], cwd=exported, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_WEBHOOK")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed successfully" in result.stdout + result.stderr
