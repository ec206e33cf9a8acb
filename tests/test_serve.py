"""`kit serve`: a notebook served as a local RunPod endpoint, driven with the real runpod client.

Each served notebook is exported by `kit serve` itself and run by real SDK
worker processes; the client is `runpod.Endpoint` pointed at the local base URL.
Every test runs on both worker loops: the exported fast loop and the SDK's
stock loop (KIT_WORKER_LOOP=stock).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import runpod
from conftest import build_notebook, process_gone

pytestmark = pytest.mark.process  # every test here starts worker or server processes

# An async handler: cancellation interrupts its awaits, as it would on RunPod.
SERVE_CELLS = [
    ("setup", "import asyncio\nimport os\nfrom pathlib import Path"),
    (
        "handler",
        """
async def handler(job):
    job_input = job["input"]
    record = os.environ.get("RECORD_DIR")
    if record:  # one line per job run, per process: proves nothing ran twice
        with open(Path(record) / f"{os.getpid()}.ids", "a") as ids:
            ids.write(job["id"] + "\\n")
    if "pid_file" in job_input:
        Path(job_input["pid_file"]).write_text(str(os.getpid()))
    if "sleep" in job_input:
        try:
            await asyncio.sleep(job_input["sleep"])
        except asyncio.CancelledError:
            Path(job_input["cancelled_file"]).write_text(job["id"])
            raise
    if "raise" in job_input:
        raise ValueError(job_input["raise"])
    if "error" in job_input:
        return {"error": job_input["error"], "partial": 1}
    if job_input.get("refresh"):
        return {"echo": job_input, "refresh_worker": True}
    return {"echo": job_input}
""".strip(),
    ),
    ("test", 'import asyncio\nasyncio.run(handler({"input": {"x": 1}}))'),
]

STREAM_CELLS = [
    ("setup", "import time"),
    ("handler", 'def handler(job):\n    for i in range(job["input"]["n"]):\n        yield {"token": i}'),
    ("test", 'list(handler({"input": {"n": 2}}))'),
]


class Served:
    """A running `kit serve` subprocess and a runpod client pointed at it."""

    def __init__(self, process: subprocess.Popen, url: str, lines: list[str]):
        self.process = process
        self.url = url
        self.lines = lines

    def endpoint(self, api_key: str = "unused") -> runpod.Endpoint:
        runpod.endpoint_url_base = self.url + "/v2"
        return runpod.Endpoint("any-endpoint-id", api_key=api_key)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in kit serve output:\n{self.output()}")


@contextmanager
def kit_serve(target: Path, *args: str, env: dict | None = None):
    process = subprocess.Popen(
        [sys.executable, "-m", "kit", "serve", str(target), "--port", "0", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in process.stdout), daemon=True)
    reader.start()
    served = Served(process, "", lines)
    try:
        served.url = re.search(r"endpoint: (http://\S+)/v2", served.wait_for_line(r"^endpoint: ")).group(1)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # only if something was left behind
        except ProcessLookupError:
            pass
        process.wait()
        reader.join(5)


def wait_for_file(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def wait_for_status(job: runpod.endpoint.Job, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job._fetch_job()["status"]
        if status in wanted:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job.job_id} never reached {wanted}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module", params=["fast", "stock"])
def loop(request):
    return request.param


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("record")


@pytest.fixture(scope="module")
def served(tmp_path_factory, record_dir, loop):
    notebook = build_notebook(tmp_path_factory.mktemp("nb") / "worker.ipynb", SERVE_CELLS)
    env = {"CONCURRENCY_MODIFIER": "16", "RECORD_DIR": str(record_dir), "KIT_WORKER_LOOP": loop}
    with kit_serve(notebook, "--workers", "3", env=env) as served:
        yield served


def test_run_sync_returns_the_output(served):
    assert served.endpoint().run_sync({"name": "ada"}, timeout=60) == {"echo": {"name": "ada"}}


def test_run_then_status_and_output(served):
    job = served.endpoint().run({"input": {"n": 1}})
    assert job.status() in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    assert job.output(timeout=60) == {"echo": {"n": 1}}
    assert job.status() == "COMPLETED"
    served.wait_for_line(rf"COMPLETED\s+{job.job_id}\s+worker-\d")  # one log line per job


def test_a_raised_exception_fails_the_job_with_the_error(served):
    job = served.endpoint().run({"raise": "no such model"})
    wait_for_status(job, {"FAILED"})
    error = job._fetch_job()["error"]
    assert "no such model" in error and "ValueError" in error
    served.wait_for_line(rf"FAILED\s+{job.job_id}.*ValueError: no such model")


def test_a_returned_error_fails_the_job(served):
    job = served.endpoint().run({"error": "input too long"})
    wait_for_status(job, {"FAILED"})
    state = job._fetch_job()
    assert state["error"] == "input too long" and state["output"] == {"partial": 1}


def test_cancel_stops_the_running_job_and_the_worker_stays_usable(served, tmp_path):
    endpoint = served.endpoint()
    cancelled_file = tmp_path / "cancelled"
    job = endpoint.run({"sleep": 120, "cancelled_file": str(cancelled_file)})
    wait_for_status(job, {"IN_PROGRESS"})
    assert job.cancel()["status"] == "CANCELLED"
    assert wait_for_file(cancelled_file) == job.job_id  # the handler's task really was cancelled
    assert job._fetch_job()["status"] == "CANCELLED"
    assert endpoint.run_sync({"after": "cancel"}, timeout=60) == {"echo": {"after": "cancel"}}


def test_health_counts_jobs_and_workers(served):
    endpoint = served.endpoint()
    before = endpoint.health()
    endpoint.run_sync({"health": 1}, timeout=60)
    after = endpoint.health()
    assert after["jobs"]["completed"] == before["jobs"]["completed"] + 1
    # Workers restarted by earlier tests count as ready once they poll again.
    deadline = time.monotonic() + 60
    while after["workers"]["ready"] != 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = endpoint.health()
    assert after["workers"]["ready"] == 3
    assert set(after["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}


def test_refresh_worker_restarts_the_worker_as_runpod_does(served, tmp_path):
    endpoint = served.endpoint()
    before = tmp_path / "before"
    assert endpoint.run_sync({"refresh": True, "pid_file": str(before)}, timeout=60) == {"echo": {"refresh": True, "pid_file": str(before)}}
    served.wait_for_line(r"worker-\d restarted: its job returned refresh_worker: true")
    # Every worker serves again; the refreshed one is a new process (its module state starts over).
    pids = set()
    for i in range(12):
        pid_file = tmp_path / f"after-{i}"
        assert endpoint.run_sync({"after": i, "pid_file": str(pid_file)}, timeout=60) == {"echo": {"after": i, "pid_file": str(pid_file)}}
        pids.add(pid_file.read_text())
    assert before.read_text() not in pids
    assert "exited with code" not in served.output()


def test_a_killed_worker_fails_its_job_and_is_restarted(served, tmp_path):
    endpoint = served.endpoint()
    pid_file = tmp_path / "pid"
    job = endpoint.run({"pid_file": str(pid_file), "sleep": 120, "cancelled_file": str(tmp_path / "c")})
    pid = int(wait_for_file(pid_file))
    os.kill(pid, signal.SIGKILL)
    wait_for_status(job, {"FAILED"})
    assert "exited with code -9" in job._fetch_job()["error"]
    served.wait_for_line(rf"worker-\d exited with code -9 .*FAILED its job\(s\) {job.job_id}; restarting")
    # The pool is whole again: every job still completes.
    assert [endpoint.run_sync({"i": i}, timeout=60) for i in range(3)] == [{"echo": {"i": i}} for i in range(3)]


def test_a_load_of_500_jobs_over_3_workers_loses_and_duplicates_nothing(served, record_dir):
    endpoint = served.endpoint()
    jobs = {endpoint.run({"i": i}).job_id: i for i in range(500)}
    pending = dict(jobs)
    states = {}
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            state = endpoint.rp_client.get(f"any-endpoint-id/status/{job_id}")
            if state["status"] in {"COMPLETED", "FAILED", "CANCELLED"}:
                states[job_id] = state
                del pending[job_id]
        time.sleep(0.2)
    assert not pending, f"{len(pending)} jobs never finished"
    assert all(state["status"] == "COMPLETED" for state in states.values())
    assert all(states[job_id]["output"] == {"echo": {"i": i}} for job_id, i in jobs.items())
    runs = [line for ids in record_dir.glob("*.ids") for line in ids.read_text().split()]
    load_runs = [job_id for job_id in runs if job_id in jobs]
    assert sorted(load_runs) == sorted(jobs)  # each job ran exactly once
    assert len({states[job_id]["workerId"] for job_id in jobs}) > 1


def test_a_generator_handler_streams_its_chunks(tmp_path, loop):
    notebook = build_notebook(tmp_path / "stream.ipynb", STREAM_CELLS)
    with kit_serve(notebook, env={"KIT_WORKER_LOOP": loop}) as served:
        job = served.endpoint().run({"n": 4})
        assert list(job.stream()) == [{"token": i} for i in range(4)]
        assert job.output(timeout=30) == [{"token": i} for i in range(4)]


def test_sigterm_drains_jobs_in_flight_and_leaves_no_process(tmp_path, loop):
    notebook = build_notebook(tmp_path / "worker.ipynb", SERVE_CELLS)
    with kit_serve(notebook, "--workers", "2", env={"KIT_WORKER_LOOP": loop}) as served:
        pid_file = tmp_path / "pid"
        job = served.endpoint().run({"pid_file": str(pid_file), "sleep": 2, "cancelled_file": str(tmp_path / "c")})
        worker_pid = int(wait_for_file(pid_file))
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0
        served.wait_for_line(rf"COMPLETED\s+{job.job_id}", timeout=5)
        assert served.lines[-1] == "stopped"
        assert not process_alive(worker_pid)
        with pytest.raises(ProcessLookupError):
            os.killpg(worker_pid, 0)  # nothing left of the worker: not even the SDK heartbeat process


def test_api_key_is_enforced(tmp_path, loop):
    notebook = build_notebook(tmp_path / "worker.ipynb", SERVE_CELLS)
    with kit_serve(notebook, "--api-key", "s3cret", env={"KIT_WORKER_LOOP": loop}) as served:
        with pytest.raises(RuntimeError, match="401"):
            served.endpoint(api_key="wrong").health()
        assert served.endpoint(api_key="s3cret").run_sync({"k": 1}, timeout=60) == {"echo": {"k": 1}}


def test_a_worker_that_cannot_start_is_a_one_line_error(tmp_path, loop):
    notebook = build_notebook(
        tmp_path / "broken.ipynb",
        [("setup", "raise RuntimeError('model file missing')"), ("handler", "def handler(job):\n    return 1")],
    )
    result = subprocess.run(
        [sys.executable, "-m", "kit", "serve", str(notebook), "--port", "0"],
        env={**os.environ, "KIT_WORKER_LOOP": loop},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3  # the export worked; the worker cannot start: exit 3, not 2
    assert "model file missing" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.process
def test_execution_timeout_sets_the_endpoint_default(tmp_path):
    notebook = build_notebook(tmp_path / "worker.ipynb", SERVE_CELLS)
    with kit_serve(notebook, "--execution-timeout", "5") as served:
        endpoint = served.endpoint()
        job = endpoint.run({"sleep": 60, "cancelled_file": str(tmp_path / "stopped")})
        assert wait_for_status(job, {"TIMED_OUT"}, timeout=30) == "TIMED_OUT"
        assert wait_for_file(tmp_path / "stopped") == job.job_id  # the handler's task was stopped
        served.wait_for_line(rf"TIMED_OUT\s+{job.job_id}.*policy.executionTimeout")
        assert endpoint.run_sync({"after": 1}, timeout=60) == {"echo": {"after": 1}}


@pytest.mark.process
@pytest.mark.parametrize(
    "args, message",
    [(["--api-key", ""], "--api-key is empty"), (["--execution-timeout", "1"], "between 5 s and 7 days")],
)
def test_serve_refuses_options_that_would_mislead(tmp_path, args, message):
    notebook = build_notebook(tmp_path / "worker.ipynb", SERVE_CELLS)
    result = subprocess.run(
        [sys.executable, "-m", "kit", "serve", str(notebook), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(
    not hasattr(runpod.serverless, "register_prestart_hook"),
    reason=f"runpod {runpod.__version__} has no prestart-failure path (runpod 2.0 has; make test-rp2 runs this)",
)
def test_on_runpod_2_a_setup_that_raises_fails_the_waiting_job_with_its_error(tmp_path, loop):
    import requests

    notebook = build_notebook(
        tmp_path / "broken.ipynb",
        [("setup", "raise RuntimeError('model file missing')"), ("handler", "def handler(job):\n    return 1")],
    )
    with kit_serve(notebook, env={"KIT_WORKER_LOOP": loop}) as served:
        answer = requests.post(f"{served.url}/v2/local/runsync", json={"input": {}}, timeout=120).json()
        assert answer["status"] == "FAILED"
        # runpod's prestart_failed payload, or (when the job's take raced the worker's exit) the pool's note
        assert "model file missing" in answer["error"]
        served.wait_for_line(r"setup failed: RuntimeError: model file missing")
        served.process.wait(120)  # no endless restarts: kit serve gives up, naming the error
        assert served.process.returncode == 3  # the machine-side failure: the worker cannot start
        served.wait_for_line(r"^error: the worker's setup failed 3 times in a row: RuntimeError: model file missing")


def test_the_banner_curl_line_sends_the_test_job_without_its_made_up_id(tmp_path, loop):
    nb = build_notebook(
        tmp_path / "w.ipynb",
        [("handler", "def handler(job):\n    return job['input']"), ("test", "handler({'id': 'made-up-id', 'input': {'name': 'ada'}})")],
    )
    with kit_serve(nb, env={"KIT_WORKER_LOOP": loop}) as served:
        curl = served.wait_for_line(r"^  curl ")
    assert curl.endswith(""" -d '{"input": {"name": "ada"}}'""")


def test_each_worker_says_when_it_takes_jobs_and_how_long_it_took_to_start(served):
    for n in (1, 2, 3):
        line = served.wait_for_line(rf"^worker-{n} is taking jobs: ")
        assert re.fullmatch(rf"worker-{n} is taking jobs: start-up took \d+\.\d\d s", line)


def test_the_banner_shows_the_openai_client_only_for_a_worker_that_handles_openai_routes(served, tmp_path, loop):
    served.wait_for_line(r"^Ctrl-C to stop")
    assert "OpenAI client" not in served.output()  # SERVE_CELLS never reads openai_route
    nb = build_notebook(
        tmp_path / "chat.ipynb",
        [
            ("handler", "def handler(job):\n    route = job['input'].get('openai_route')\n    return {'route': route}"),
            ("test", "handler({'input': {'prompt': 'hi'}})"),
        ],
    )
    with kit_serve(nb, env={"KIT_WORKER_LOOP": loop}) as openai_served:
        line = openai_served.wait_for_line(r"^  OpenAI client: ")
    assert f"base_url='{openai_served.url}/v2/local/openai/v1'" in line


def test_a_local_module_that_reads_openai_route_counts_and_a_venv_beside_a_hand_written_worker_does_not(tmp_path):
    from kit.export.export import export_notebook
    from kit.serve.serve import serves_openai

    (tmp_path / "routes.py").write_text("def route(job):\n    return job['input'].get('openai_route')\n")
    nb = build_notebook(
        tmp_path / "w.ipynb",
        [("setup", "import routes"), ("handler", "def handler(job):\n    return routes.route(job)"), ("test", "handler({'input': {}})")],
    )
    assert serves_openai(export_notebook(nb, tmp_path / "out").out_dir)
    hand = tmp_path / "hand"
    (hand / ".venv" / "lib").mkdir(parents=True)
    (hand / "handler.py").write_text("def handler(job):\n    return job\n")
    (hand / ".venv" / "lib" / "openai_thing.py").write_text("KEY = 'openai_route'\n")
    assert not serves_openai(hand)
    (hand / "helpers.py").write_text("KEY = 'openai_route'\n")
    assert serves_openai(hand)


def _serve_for_signal_test(tmp_path, served):
    pid_file = tmp_path / "pid"
    served.endpoint().run({"pid_file": str(pid_file), "sleep": 300, "cancelled_file": str(tmp_path / "c")})
    worker_pid = int(wait_for_file(pid_file))
    log_dir = Path(re.search(r"\(logs: (\S+)\)", served.wait_for_line(r"\(logs: ")).group(1))
    assert log_dir.is_dir()
    return worker_pid, log_dir


@pytest.mark.process
def test_workers_die_with_a_kit_serve_killed_by_sigkill_and_leave_no_logs(tmp_path):
    notebook = build_notebook(tmp_path / "worker.ipynb", SERVE_CELLS)
    with kit_serve(notebook, "--workers", "2") as served:
        worker_pid, log_dir = _serve_for_signal_test(tmp_path, served)
        served.process.kill()  # kit serve alone, as the OOM killer or `kill -9` would
        assert served.process.wait(30) == -signal.SIGKILL
        assert process_gone(worker_pid), "the busy worker outlived kit serve"
        deadline = time.monotonic() + 30
        while log_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not log_dir.exists()


@pytest.mark.process
def test_sighup_shuts_kit_serve_down_like_sigterm(tmp_path):
    notebook = build_notebook(tmp_path / "worker.ipynb", SERVE_CELLS)
    with kit_serve(notebook, "--workers", "2") as served:
        worker_pid, log_dir = _serve_for_signal_test(tmp_path, served)
        served.process.send_signal(signal.SIGHUP)  # the terminal closed, the SSH session dropped
        assert served.process.wait(60) == 0
        served.wait_for_line(r"^stopping \(SIGHUP\): draining jobs in flight", timeout=5)
        assert served.lines[-1] == "stopped"
        assert process_gone(worker_pid, timeout=5)
        assert not log_dir.exists()


@pytest.mark.process
def test_the_kill_test_loses_and_duplicates_nothing():
    """bench/kill_test.py, small: SIGKILLed workers fail only the jobs they held; nothing lost or run twice."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "bench/kill_test.py", "--jobs", "120", "--kills", "2", "--timeout", "150"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert (report["submitted"], report["lost"], report["duplicated"], report["kills"]) == (120, 0, 0, 2)
    assert report["completed"] + report["failed"] == 120 and report["failed"] == report["failed_because_a_worker_died"]


@pytest.mark.process
def test_a_bare_fork_in_the_handler_does_not_stall_the_worker(tmp_path, loop):
    notebook = build_notebook(
        tmp_path / "fork.ipynb",
        [
            ("setup", "import os"),
            ("handler", "def handler(job):\n    os.fork()  # no exec, no branch: both copies return\n    return job['input']['i']"),
        ],
    )
    with kit_serve(notebook, env={"KIT_WORKER_LOOP": loop}) as served:
        endpoint = served.endpoint()
        assert [endpoint.run_sync({"i": i}, timeout=30) for i in range(4)] == [0, 1, 2, 3]
        assert endpoint.health()["jobs"]["completed"] == 4
