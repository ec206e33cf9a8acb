"""Dynamic batching (kit/worker/batching.py, exported beside handler.py for a `batch_handler`).

The queue's rules are driven on an explicit clock; the batcher runs with the
SDK's own job runner (`rp_job.run_job`, what the worker loop calls per job);
the process tests serve an exported notebook with the queue emulator and real
SDK worker processes, on the fast and the stock loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import build_notebook

from kit.export.export import export_notebook
from kit.serve.bench import read_batches
from kit.serve.emulator import FINAL_STATUSES, QueueEmulator
from kit.serve.serve import WorkerPool
from kit.worker import batching
from kit.worker.batching import Batcher, BatchQueue

# --------------------------------------------------------------------------- the queue's rules


def test_a_full_batch_goes_at_once_oldest_first_and_no_larger_than_max():
    queue = BatchQueue(max_size=3, max_wait=0.5)
    for n in range(4):
        queue.add(f"job-{n}", now=10.0)
    batch, waited = queue.take(now=10.0)
    assert batch == ["job-0", "job-1", "job-2"] and waited == 0
    assert queue.take(now=10.0) is None  # job-3 alone waits for company


def test_a_lone_job_waits_exactly_max_wait_then_goes_alone():
    queue = BatchQueue(max_size=8, max_wait=0.05)
    queue.add("lone", now=1.0)
    assert queue.deadline() == pytest.approx(1.05)
    assert queue.take(now=1.0499) is None
    assert queue.take(now=1.05) == (["lone"], pytest.approx(0.05))


def test_the_wait_runs_from_the_oldest_job_not_the_newest():
    queue = BatchQueue(max_size=8, max_wait=0.05)
    queue.add("first", now=1.0)
    queue.add("second", now=1.04)
    assert queue.take(now=1.05) == (["first", "second"], pytest.approx(0.05))


def test_a_discarded_job_leaves_the_queue():
    queue = BatchQueue(max_size=2, max_wait=1.0)
    first, second, third = object(), object(), object()
    for item in (first, second, third):
        queue.add(item, now=0.0)
    queue.discard(second)
    assert queue.take(now=0.0)[0] == [first, third]


def test_settings_come_from_the_env_var_then_the_module_then_the_default(monkeypatch):
    monkeypatch.delenv("MAX_BATCH_SIZE", raising=False)
    assert batching.setting({}, "MAX_BATCH_SIZE", 8, integer=True) == 8
    assert batching.setting({"MAX_BATCH_SIZE": 4}, "MAX_BATCH_SIZE", 8, integer=True) == 4
    monkeypatch.setenv("MAX_BATCH_SIZE", "32")
    assert batching.setting({"MAX_BATCH_SIZE": 4}, "MAX_BATCH_SIZE", 8, integer=True) == 32
    for bad in ("0", "many", "2.5"):
        monkeypatch.setenv("MAX_BATCH_SIZE", bad)
        with pytest.raises(ValueError, match=f"the env var MAX_BATCH_SIZE must be a whole number of at least 1, not '?{bad}'?"):
            batching.setting({}, "MAX_BATCH_SIZE", 8, integer=True)
    monkeypatch.setenv("MAX_BATCH_WAIT_MS", "-1")
    with pytest.raises(ValueError, match="MAX_BATCH_WAIT_MS must be a number of milliseconds, 0 or more"):
        batching.setting({}, "MAX_BATCH_WAIT_MS", 10, integer=False)


# --------------------------------------------------------------------------- the batcher, with the SDK's job runner


def run_jobs(batcher: Batcher, jobs: list[dict]) -> list[dict]:
    """The jobs through the SDK's run_job, all held at once as the worker loop holds them."""
    from runpod.serverless.modules.rp_job import run_job

    async def main():
        return await asyncio.gather(*(run_job(batcher.handle, job) for job in jobs))

    return asyncio.run(main())


def jobs_of(*inputs) -> list[dict]:
    return [{"id": f"job-{n}", "input": value} for n, value in enumerate(inputs)]


def test_each_job_gets_its_own_result_in_order_and_an_error_fails_only_its_job():
    calls = []

    def batch_handler(jobs):
        calls.append([job["id"] for job in jobs])
        return [{"error": "bad n"} if job["input"]["n"] < 0 else {"square": job["input"]["n"] ** 2} for job in jobs]

    results = run_jobs(Batcher(batch_handler, max_size=4, max_wait_ms=1000), jobs_of(*({"n": n} for n in (3, -1, 5, 7, 2))))
    assert calls == [["job-0", "job-1", "job-2", "job-3"], ["job-4"]]
    assert results == [
        {"output": {"square": 9}},
        {"error": "bad n"},
        {"output": {"square": 25}},
        {"output": {"square": 49}},
        {"output": {"square": 4}},
    ]


def test_an_async_batch_handler_runs_on_the_loop():
    async def batch_handler(jobs):
        await asyncio.sleep(0)
        return [{"n": job["input"]["n"], "batch": len(jobs)} for job in jobs]

    results = run_jobs(Batcher(batch_handler, max_size=3, max_wait_ms=1000), jobs_of({"n": 1}, {"n": 2}, {"n": 3}))
    assert results == [{"output": {"n": n, "batch": 3}} for n in (1, 2, 3)]


def test_an_exception_fails_every_job_of_its_batch_with_the_error():
    def batch_handler(jobs):
        raise ValueError("the model ran out of memory")

    results = run_jobs(Batcher(batch_handler, max_size=2, max_wait_ms=1000), jobs_of({}, {}))
    for result in results:
        error = json.loads(result["error"])  # the SDK's exception report
        assert error["error_type"] == "<class 'ValueError'>" and error["error_message"] == "the model ran out of memory"
        assert "batch_handler" in error["error_traceback"]


@pytest.mark.parametrize(
    "returned, message",
    [
        ("one", "batch_handler returned 1 result(s) for a batch of 3 job(s): it must return one result per job"),
        ("dict", "batch_handler returned dict, not a list: it must return one result per job"),
    ],
)
def test_a_result_of_the_wrong_shape_fails_every_job_saying_so(returned, message):
    def batch_handler(jobs):
        return [{"ok": 1}] if returned == "one" else {"ok": 1}

    results = run_jobs(Batcher(batch_handler, max_size=3, max_wait_ms=1000), jobs_of({}, {}, {}))
    assert [r["error"][: len(message)] for r in results] == [message] * 3


def test_a_job_stopped_while_its_batch_runs_is_cancelled_and_the_others_get_their_results():
    from runpod.serverless.modules.rp_job import run_job

    started = asyncio.Event()
    release = asyncio.Event()

    async def batch_handler(jobs):
        started.set()
        await release.wait()
        return [{"id": job["id"]} for job in jobs]

    batcher = Batcher(batch_handler, max_size=2, max_wait_ms=1000)

    async def main():
        tasks = [asyncio.create_task(run_job(batcher.handle, job)) for job in jobs_of({}, {})]
        await started.wait()
        tasks[0].cancel()  # what job-stop does to the job's task
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    stopped, kept = asyncio.run(main())
    assert isinstance(stopped, asyncio.CancelledError)
    assert kept == {"output": {"id": "job-1"}}


def test_a_job_stopped_before_its_batch_starts_is_left_out_of_it():
    from runpod.serverless.modules.rp_job import run_job

    seen = []

    def batch_handler(jobs):
        seen.append([job["id"] for job in jobs])
        return [{} for _ in jobs]

    batcher = Batcher(batch_handler, max_size=8, max_wait_ms=50)

    async def main():
        tasks = [asyncio.create_task(run_job(batcher.handle, job)) for job in jobs_of({}, {}, {})]
        await asyncio.sleep(0)
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    assert seen == [["job-0", "job-2"]]


def test_the_provided_handler_runs_a_batch_of_one():
    handler = batching.single_job_handler(lambda jobs: [{"n": len(jobs)} for _ in jobs])
    assert handler({"input": {}}) == {"n": 1}
    assert batching.single_job_handler(lambda jobs: [])({"input": {}}) == {
        "error": "batch_handler returned 0 result(s) for a batch of 1 job(s): it must return one result per job, in the jobs' order"
    }

    async def batch_handler(jobs):
        return [{"async": True}]

    assert asyncio.run(batching.single_job_handler(batch_handler)({"input": {}})) == {"async": True}


# --------------------------------------------------------------------------- served: the SDK's worker loop


BATCH_CELLS = [
    ("setup", "import os\nimport time\nfrom pathlib import Path\n\nMAX_BATCH_SIZE = 8\nMAX_BATCH_WAIT_MS = 20"),
    (
        "handler",
        """
def batch_handler(jobs):
    record = os.environ.get("RECORD_DIR")
    if record:  # one line per job run, per process: proves nothing ran twice
        with open(Path(record) / f"{os.getpid()}.ids", "a") as ids:
            ids.write("".join(job["id"] + "\\n" for job in jobs))
    if any("raise" in job["input"] for job in jobs):
        raise ValueError("the model ran out of memory")
    if any("crash" in job["input"] for job in jobs):  # a segfault, an OOM kill: the process is gone at once
        os.kill(os.getpid(), 9)
    holds = [Path(job["input"]["hold"]) for job in jobs if "hold" in job["input"]]
    if holds:  # tell the test which jobs share this batch, then wait for it to say go
        holds[0].with_suffix(".started").write_text(" ".join(job["id"] for job in jobs))
        deadline = time.monotonic() + 60
        while not holds[0].exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    pid = {"pid": os.getpid()} if any("pid" in job["input"] for job in jobs) else {}
    return [{"error": job["input"]["error"]} if "error" in job["input"] else {"i": job["input"].get("i"), "batch": len(jobs), **pid} for job in jobs]
""".strip(),
    ),
    ("test", 'assert batch_handler([{"id": "a", "input": {"i": 1}}]) == [{"i": 1, "batch": 1}]'),
]


@pytest.fixture(scope="module")
def batch_worker(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batched")
    return export_notebook(build_notebook(folder / "batched.ipynb", BATCH_CELLS), folder / "worker").out_dir


class Served:
    def __init__(self, emulator: QueueEmulator, pool: WorkerPool):
        self.emulator, self.pool = emulator, pool

    def wait(self, job_ids: list[str], timeout: float = 120) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        states: dict[str, dict] = {}
        while len(states) < len(job_ids) and time.monotonic() < deadline:
            self.pool.check()
            for job_id in job_ids:
                if job_id not in states and (state := self.emulator.status(job_id))["status"] in FINAL_STATUSES:
                    states[job_id] = state
            time.sleep(0.05)
        assert len(states) == len(job_ids), f"{len(job_ids) - len(states)} jobs never finished"
        return states

    def cancel(self, job_id: str) -> dict:
        """POST /cancel, as a client does."""
        request = urllib.request.Request(f"{self.emulator.url}/v2/local/cancel/{job_id}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.pool.log_dir.glob("*.log"))


def serve(worker: Path, tmp_path: Path, workers: int = 1, **env):
    emulator = QueueEmulator().start()
    env = {"RUNPOD_LOG_LEVEL": "INFO", "KIT_BATCH_REPORT": str(tmp_path / "batches"), **env}
    pool = WorkerPool(worker, emulator, workers, log_dir=tmp_path / "logs", env=env, say=lambda line: None)
    pool.start()
    return emulator, pool


class serving:
    def __init__(self, worker: Path, tmp_path: Path, workers: int = 1, **env):
        self.args = worker, tmp_path, workers, env

    def __enter__(self) -> Served:
        worker, tmp_path, workers, env = self.args
        self.emulator, self.pool = serve(worker, tmp_path, workers, **env)
        return Served(self.emulator, self.pool)

    def __exit__(self, *exc):
        try:
            self.pool.stop()
        finally:
            self.emulator.stop()


@pytest.mark.process
@pytest.mark.parametrize("loop", ["fast", "stock"])
def test_served_jobs_are_batched_keep_their_order_and_their_own_errors(batch_worker, tmp_path, loop):
    with serving(batch_worker, tmp_path, KIT_WORKER_LOOP=loop, MAX_BATCH_WAIT_MS="200") as served:
        inputs = [{"i": i} if i % 5 else {"error": f"job {i} is bad"} for i in range(16)]
        ids = [served.emulator.submit({"input": value}) for value in inputs]
        states = served.wait(ids)
    for job_id, value in zip(ids, inputs):
        if "error" in value:
            assert states[job_id]["status"] == "FAILED" and states[job_id]["error"] == value["error"]
        else:
            assert states[job_id]["status"] == "COMPLETED" and states[job_id]["output"]["i"] == value["i"]
    batches = read_batches(tmp_path / "batches")
    assert batches["count"] < 16 and max(int(size) for size in batches["sizes"]) > 1  # jobs shared model calls


@pytest.mark.process
def test_a_lone_job_is_served_after_the_batch_wait_without_company(batch_worker, tmp_path):
    with serving(batch_worker, tmp_path, MAX_BATCH_WAIT_MS="300") as served:
        job_id = served.emulator.submit({"input": {"i": 1}})
        assert served.wait([job_id])[job_id]["output"] == {"i": 1, "batch": 1}
    batches = read_batches(tmp_path / "batches")
    assert batches["sizes"] == {"1": 1} and batches["wait_ms"]["p50"] >= 300  # it waited its MAX_BATCH_WAIT_MS, no more is promised here


@pytest.mark.process
@pytest.mark.parametrize("loop", ["fast", "stock"])
def test_a_job_cancelled_while_its_batch_runs_ends_cancelled_and_its_batch_mates_complete(batch_worker, tmp_path, loop):
    hold = tmp_path / "go"
    with serving(batch_worker, tmp_path, KIT_WORKER_LOOP=loop, MAX_BATCH_SIZE="2", MAX_BATCH_WAIT_MS="10000") as served:
        stopped = served.emulator.submit({"input": {"i": 1, "hold": str(hold)}})
        kept = served.emulator.submit({"input": {"i": 2}})
        started = hold.with_suffix(".started")
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.read_text().split() == [stopped, kept]  # one batch
        assert served.cancel(stopped)["status"] == "CANCELLED"
        deadline = time.monotonic() + 60
        while f'"requestId": "{stopped}", "message": "Job stopped."' not in served.log() and time.monotonic() < deadline:
            time.sleep(0.05)  # the SDK took the job-stop and cancelled the job's task
        assert "Job stopped." in served.log()
        hold.write_text("go")
        states = served.wait([stopped, kept])
        after = served.emulator.submit({"input": {"i": 3}})
        assert served.wait([after])[after]["status"] == "COMPLETED"  # the worker stays usable
        counters = served.emulator.counters
    assert states[stopped]["status"] == "CANCELLED" and "output" not in states[stopped]
    assert states[kept]["status"] == "COMPLETED" and states[kept]["output"] == {"i": 2, "batch": 2}
    assert counters.duplicate_results == 0


@pytest.mark.process
def test_a_load_of_1000_jobs_over_2_workers_loses_and_duplicates_nothing(batch_worker, tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    with serving(batch_worker, tmp_path, workers=2, RECORD_DIR=str(record), RUNPOD_LOG_LEVEL="WARN") as served:
        ids = [served.emulator.submit({"input": {"i": i}}) for i in range(1000)]
        states = served.wait(ids, timeout=300)
        counters = served.emulator.counters
    assert all(states[job_id]["status"] == "COMPLETED" and states[job_id]["output"]["i"] == i for i, job_id in enumerate(ids))
    runs = [line for path in record.glob("*.ids") for line in path.read_text().split()]
    assert sorted(runs) == sorted(ids)  # each job ran exactly once
    assert len({states[job_id]["workerId"] for job_id in ids}) == 2
    assert counters.duplicate_results == 0 and counters.unknown_results == 0
    assert read_batches(tmp_path / "batches")["mean_size"] > 1


@pytest.mark.process
def test_sigterm_lets_the_running_batch_finish_and_post_its_results(batch_worker, tmp_path):
    hold = tmp_path / "go"
    with serving(batch_worker, tmp_path, MAX_BATCH_SIZE="2", MAX_BATCH_WAIT_MS="10000") as served:
        ids = [served.emulator.submit({"input": {"i": 1, "hold": str(hold)}}), served.emulator.submit({"input": {"i": 2}})]
        started = hold.with_suffix(".started")
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        process = served.pool.processes["worker-1"].popen
        process.terminate()  # what RunPod sends a worker it scales down
        time.sleep(0.5)
        assert process.poll() is None  # draining: the batch is still running
        hold.write_text("go")
        assert process.wait(60) == 0
        states = [served.emulator.status(job_id) for job_id in ids]
    assert [(s["status"], s["output"]) for s in states] == [("COMPLETED", {"i": 1, "batch": 2}), ("COMPLETED", {"i": 2, "batch": 2})]


@pytest.mark.process
def test_a_bad_batch_setting_in_the_environment_stops_the_worker_with_its_message(batch_worker, tmp_path):
    from kit.errors import KitError

    with pytest.raises(KitError, match="ValueError: the env var MAX_BATCH_SIZE must be a whole number of at least 1, not 'lots'"):
        with serving(batch_worker, tmp_path, MAX_BATCH_SIZE="lots") as served:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                served.pool.check()
                time.sleep(0.1)


# --------------------------------------------------------------------------- batch_handler in a process of its own

SPLIT_LINE = re.compile(r"batching: batch_handler runs in process (\d+), the worker loop in process (\d+)")


def split_pids(log) -> tuple[int, int]:
    """(batch_handler's process, the worker loop's process), from the line the worker logs when it splits."""
    deadline = time.monotonic() + 120
    while not (found := SPLIT_LINE.search(log())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found, f"the worker never said it split: {log()[-2000:]}"
    return int(found[1]), int(found[2])


def parent_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[1])


def wait_until(condition, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.process
def test_a_def_batch_handler_runs_in_a_child_of_the_process_that_runs_the_sdk_loop(batch_worker, tmp_path):
    with serving(batch_worker, tmp_path, MAX_BATCH_WAIT_MS="100") as served:
        ids = [served.emulator.submit({"input": {"i": i, "pid": True}}) for i in range(4)]
        states = served.wait(ids)
        model, loop = split_pids(served.log)
        launcher = served.pool.processes["worker-1"].popen.pid  # launch.py, whose child is `python handler.py`
        parents = {pid: parent_of(pid) for pid in (model, loop)}
    assert {states[job_id]["output"]["pid"] for job_id in ids} == {model}
    assert parents == {loop: launcher, model: loop}  # one process tree: `python handler.py` (the SDK), then the model's


@pytest.mark.process
def test_an_exception_in_batch_handlers_process_fails_its_batch_with_its_type_and_traceback(batch_worker, tmp_path):
    with serving(batch_worker, tmp_path, MAX_BATCH_SIZE="2", MAX_BATCH_WAIT_MS="5000") as served:
        ids = [served.emulator.submit({"input": {"i": 1, "raise": True}}), served.emulator.submit({"input": {"i": 2}})]
        states = served.wait(ids)
        after = served.emulator.submit({"input": {"i": 3}})
        assert served.wait([after], timeout=60)  # the worker serves on (a lone job waits its MAX_BATCH_WAIT_MS)
        split_pids(served.log)
    for state in states.values():
        error = json.loads(state["error"])
        assert error["error_type"] == "<class 'ValueError'>" and error["error_message"] == "the model ran out of memory"
        assert "in batch_handler" in error["error_traceback"] and "raise ValueError" in error["error_traceback"]


@pytest.mark.process
def test_when_batch_handlers_process_dies_its_jobs_fail_saying_so_and_the_worker_exits_to_be_restarted(batch_worker, tmp_path):
    with serving(batch_worker, tmp_path, MAX_BATCH_SIZE="2", MAX_BATCH_WAIT_MS="5000") as served:
        crash = [served.emulator.submit({"input": {"i": 1, "crash": True}}), served.emulator.submit({"input": {"i": 2}})]
        model, loop = split_pids(served.log)
        states = served.wait(crash)
        assert wait_until(lambda: (served.pool.check(), served.pool.unexpected_exits)[1] == 1), "the worker did not exit"
        restarted = served.emulator.submit({"input": {"i": 3}})
        assert served.wait([restarted], timeout=120)[restarted]["status"] == "COMPLETED"  # a fresh worker took it
        log = served.log()
    for state in states.values():
        assert state["status"] == "FAILED"
        assert f"batch_handler's process (pid {model}) ended while it ran this batch, killed by signal 9" in state["error"]
    assert "this worker exits, to be started again" in log


@pytest.mark.process
def test_batch_handlers_process_dies_with_the_worker_loops(batch_worker, tmp_path):
    """`python handler.py` run directly (no launch.py to clean up after it), SIGKILLed: its child goes too."""
    import signal
    import subprocess
    import sys

    from kit import platform

    emulator = QueueEmulator().start()
    log_path = tmp_path / "worker.log"
    try:
        env = platform.worker_env({**os.environ, **emulator.worker_env("worker-x"), "RUNPOD_LOG_LEVEL": "INFO"})
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "handler.py"], cwd=batch_worker, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            model, loop = split_pids(lambda: log_path.read_text(errors="replace"))
            assert loop == worker.pid and parent_of(model) == worker.pid
            worker.send_signal(signal.SIGKILL)
            worker.wait(30)
            assert wait_until(lambda: parent_of(model) is None), "batch_handler's process outlived the worker loop's"
        finally:
            with contextlib.suppress(ProcessLookupError):  # the SDK's heartbeat process outlives a killed worker
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
    finally:
        emulator.stop()


@pytest.mark.process
def test_with_kit_batch_process_0_everything_runs_in_one_process(batch_worker, tmp_path):
    with serving(batch_worker, tmp_path, KIT_BATCH_PROCESS="0") as served:
        job = served.emulator.submit({"input": {"i": 1, "pid": True}})
        output = served.wait([job])[job]["output"]
        log = served.log()
        parent = parent_of(output["pid"])
        launcher = served.pool.processes["worker-1"].popen.pid
    assert "batching: batch_handler runs in process" not in log
    assert parent == launcher  # `python handler.py` itself ran it


def test_only_a_def_batch_handler_makes_the_worker_split(tmp_path):
    def header_of(handler_cell: str) -> str:
        cells = [("setup", "import asyncio"), ("handler", handler_cell)]
        out = export_notebook(build_notebook(tmp_path / f"nb{len(list(tmp_path.iterdir()))}.ipynb", cells), tmp_path / "w").out_dir
        return (out / "handler.py").read_text().split("\n# %% cell", 1)[0]

    assert "batching.split(__file__, worker_loop.start)" in header_of("def batch_handler(jobs):\n    return [{} for _ in jobs]")
    assert "batching.split" not in header_of("async def batch_handler(jobs):\n    return [{} for _ in jobs]")
    assert "batching" not in header_of("def handler(job):\n    return {}")


@pytest.mark.process
def test_the_notebooks_concurrency_modifier_runs_in_batch_handlers_process_and_sets_how_many_jobs_the_worker_holds(tmp_path):
    cells = [
        ("setup", "import os\nMAX_BATCH_SIZE = 8\nMAX_BATCH_WAIT_MS = 200"),
        (
            "handler",
            "def concurrency_modifier(current):\n    print(f'concurrency_modifier in {os.getpid()}', flush=True)\n    return 3\n\n"
            "def batch_handler(jobs):\n    return [{'batch': len(jobs), 'pid': os.getpid()} for job in jobs]",
        ),
    ]
    worker = export_notebook(build_notebook(tmp_path / "modifier.ipynb", cells), tmp_path / "worker").out_dir
    with serving(worker, tmp_path) as served:
        ids = [served.emulator.submit({"input": {}}) for _ in range(12)]
        states = served.wait(ids)
        model, _ = split_pids(served.log)
        log = served.log()
    assert {states[job_id]["output"]["pid"] for job_id in ids} == {model}
    assert max(states[job_id]["output"]["batch"] for job_id in ids) == 3  # the worker held 3 jobs, not 2 x 8
    assert f"concurrency_modifier in {model}" in log
