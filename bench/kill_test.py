"""The kill test: N jobs over W workers while K workers are SIGKILLed, through kit serve's pool and emulator.

    .venv/bin/python bench/kill_test.py [--jobs 1000] [--workers 3] [--kills 6] [--timeout 300]

Each job sleeps a little (so jobs are in flight when a worker dies) and
records its id in a per-process file. A killer SIGKILLs a busy worker process
(``python handler.py``, not its launcher) K times, spread over the run. Every
wait is bounded by --timeout. Prints, as JSON: submitted, completed, failed
(each failure must be a job a killed worker held), lost (never reached a final
state), duplicated (a second result for one job, or a job run twice), and the
pool's restarts. Exit 0 when nothing was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.export.export import export_notebook  # noqa: E402
from kit.serve.emulator import FINAL_STATUSES, QueueEmulator  # noqa: E402
from kit.serve.pool import WorkerPool  # noqa: E402

CELLS = [
    ("setup", "import os\nimport time\nfrom pathlib import Path"),
    (
        "handler",
        "def handler(job):\n"
        "    with open(Path(os.environ['RECORD_DIR']) / f'{os.getpid()}.ids', 'a') as ids:\n"
        "        ids.write(job['id'] + '\\n')\n"
        "    time.sleep(job['input']['sleep'])\n"
        "    return {'i': job['input']['i']}",
    ),
]


def write_notebook(path: Path) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    for tag, source in CELLS:
        cell = new_code_cell(source)
        cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def busy_worker_pids(pool: WorkerPool, emulator: QueueEmulator) -> list[int]:
    """The `python handler.py` processes (children of each worker's launcher) that have taken jobs."""
    pids = []
    for worker_id, process in pool.processes.items():
        if emulator.worker_times(worker_id)["first_request"] is None:
            continue  # still starting: killing it would test the startup guard, not job loss
        try:
            children = Path(f"/proc/{process.popen.pid}/task/{process.popen.pid}/children").read_text().split()
        except OSError:
            continue
        pids += [int(pid) for pid in children]
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=0.1, help="seconds each job sleeps")
    parser.add_argument("--concurrency", type=int, default=4, help="CONCURRENCY_MODIFIER of each worker")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the whole run, seconds")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kit-kill-test-"))
    record = work / "record"
    record.mkdir()
    worker = export_notebook(write_notebook(work / "kill.ipynb"), work / "worker").out_dir
    deadline = time.monotonic() + args.timeout
    killed: list[int] = []
    messages: list[str] = []

    with QueueEmulator() as emulator:
        pool = WorkerPool(
            worker,
            emulator,
            args.workers,
            log_dir=work / "logs",
            env={"RECORD_DIR": str(record), "CONCURRENCY_MODIFIER": str(args.concurrency)},
            say=messages.append,
        )
        stop = threading.Event()
        lock = threading.Lock()  # the supervisor and the killer both touch pool.processes

        errors: list[str] = []

        def supervise():
            try:
                while not stop.wait(0.1):
                    with lock:
                        pool.check()
            except Exception as error:  # reported, and the run stops
                errors.append(str(error))
                stop.set()

        try:
            with lock:
                pool.start()
            supervisor = threading.Thread(target=supervise, daemon=True)
            supervisor.start()
            ids = [emulator.submit({"input": {"i": i, "sleep": args.sleep}}) for i in range(args.jobs)]
            # Spread the kills over the first part of the run; each hits a worker holding jobs.
            rng = random.Random(18)
            while len(killed) < args.kills and time.monotonic() < deadline and not stop.is_set():
                time.sleep(rng.uniform(0.3, 1.0))
                with lock:
                    pids = busy_worker_pids(pool, emulator)
                if pids:
                    pid = rng.choice(pids)
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except ProcessLookupError:
                        pass
            states = {}
            while time.monotonic() < deadline and not errors:
                states = {job_id: emulator.status(job_id) for job_id in ids}
                if all(state["status"] in FINAL_STATUSES for state in states.values()):
                    break
                time.sleep(0.5)
        finally:
            stop.set()
            with lock:
                pool.stop()
        counters = emulator.counters

    runs: dict[str, int] = {}
    for ids_file in record.glob("*.ids"):
        for job_id in ids_file.read_text().split():
            runs[job_id] = runs.get(job_id, 0) + 1
    statuses = [state["status"] for state in states.values()]
    failed_errors = [state.get("error", "") for state in states.values() if state["status"] == "FAILED"]
    report = {
        "jobs": args.jobs,
        "workers": args.workers,
        "kills": len(killed),
        "submitted": counters.submitted,
        "completed": statuses.count("COMPLETED"),
        "failed": statuses.count("FAILED"),
        "failed_because_a_worker_died": sum("exited with code" in error for error in failed_errors),
        "lost": sum(status not in FINAL_STATUSES for status in statuses) + (args.jobs - len(states)),
        "duplicated": counters.duplicate_results + sum(count > 1 for count in runs.values()),
        "restarts": sum("restarting" in message for message in messages),
        "seconds": round(args.timeout - (deadline - time.monotonic()), 1),
        "pool_error": errors[0] if errors else None,
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    clean = (
        not errors
        and report["kills"] == args.kills
        and report["lost"] == 0
        and report["duplicated"] == 0
        and report["failed"] == report["failed_because_a_worker_died"]
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
