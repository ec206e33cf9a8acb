"""`kit bench`: serve the worker as `kit serve` does, load it, and report what a client would see.

N jobs go through the endpoint API (`/runsync`, `/status` when a job outlasts
the sync wait) keeping C in flight. The report: cold start (worker process
start to its first job-take), throughput, latency percentiles split into queue
delay and execution time (RunPod's `delayTime`/`executionTime`), and counts of
completed, failed, lost and duplicated jobs. For a worker with `batch_handler`,
the batches its batching.py logged: sizes seen (a histogram), how long jobs
waited for their batch and how long each call took.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kit.local.emulator import FINAL_STATUSES, QueueEmulator
from kit.errors import KitError
from kit.local.serve import WorkerPool

STARTUP_TIMEOUT = 600.0
LOOP_ENV = "KIT_WORKER_LOOP"  # read by the exported worker_loop.py
BATCH_REPORT_ENV = "KIT_BATCH_REPORT"  # read by the exported batching.py: where it logs each batch


def bench(
    target: str,
    *,
    jobs: int = 100,
    concurrency: int = 4,
    job_input: str | None = None,
    workers: int = 1,
    json_out: bool = False,
    loop: str = "fast",
) -> int:
    """Benchmark `target` (a notebook or a worker directory); 0 when every job completed once.

    `loop` picks the worker loop: "fast" (the exported worker_loop.py), "stock"
    (the SDK's own, through KIT_WORKER_LOOP=stock) or "both", one after the other.
    """
    from kit.build.export import worker_dir

    if jobs < 1 or concurrency < 1:
        raise KitError("--jobs and --concurrency must be at least 1")
    loops = ("stock", "fast") if loop == "both" else (loop,)
    runs = []
    with worker_dir(target) as path:
        request = _job_request(path, job_input)
        if "fast" in loops and not (path / "worker_loop.py").is_file():
            raise KitError(f"{path} has no worker_loop.py, so it has no fast loop", "re-export the notebook, or use --loop stock")
        for name in loops:
            run = measure(
                path, request, jobs=jobs, concurrency=concurrency, workers=workers,
                env={LOOP_ENV: name}, progress=not json_out,
            )
            runs.append({"loop": name, **run})
    report = {"target": str(target), "jobs": jobs, "concurrency": concurrency, "workers": workers, "runs": runs}
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    clean = all(run["completed"] == jobs and run["lost"] == 0 and run["duplicated"] == 0 for run in runs)
    return 0 if clean else 1


def _job_request(path: Path, job_input: str | None) -> dict:
    if job_input is None:
        test_input = path / "test_input.json"
        if not test_input.is_file():
            raise KitError("no job to send: the notebook's test cells pass no job literal to handler()", "give one with --input '{\"prompt\": \"hi\"}'")
        return json.loads(test_input.read_text())
    try:
        value = json.loads(job_input)
    except ValueError as error:
        raise KitError(f"--input is not valid JSON: {error}", "quote it for the shell: --input '{\"prompt\": \"hi\"}'") from None
    # As runpod.Endpoint.run does: a value without an "input" key is the input itself.
    return value if isinstance(value, dict) and "input" in value else {"input": value}


def measure(
    path: Path,
    request: dict,
    *,
    jobs: int,
    concurrency: int,
    workers: int,
    env: dict[str, str] | None = None,
    progress: bool = False,
) -> dict:
    """Serve the worker directory at `path`, run the load, stop everything; return the figures."""
    with QueueEmulator() as emulator:
        log_dir = Path(tempfile.mkdtemp(prefix="kit-bench-logs-"))
        batch_dir = log_dir / "batches"
        env = {**(env or {}), BATCH_REPORT_ENV: str(batch_dir)}
        pool = WorkerPool(path, emulator, workers, log_dir=log_dir, env=env, say=lambda line: print(line, file=sys.stderr))
        try:
            pool.start()
            cold_starts = _wait_until_ready(pool, emulator)
            cpu_before = emulator.cpu_time()
            results, elapsed = asyncio.run(_load(emulator, pool, request, jobs, concurrency, progress))
            emulator_cpu = emulator.cpu_time() - cpu_before
        finally:
            pool.stop()
        counters = emulator.counters
    finished = [r for r in results if r["status"] in FINAL_STATUSES]
    batches = read_batches(batch_dir)
    clean = len(finished) == jobs and all(r["status"] == "COMPLETED" for r in results) and not counters.duplicate_results
    if clean:  # the worker logs matter only when something went wrong
        shutil.rmtree(log_dir, ignore_errors=True)
    return {
        "log_dir": None if clean else str(log_dir),
        "cold_start_s": [round(s, 3) for s in cold_starts],
        "elapsed_s": round(elapsed, 3),
        "throughput_jobs_per_s": round(len(finished) / elapsed, 2),
        "emulator_cpu_ms_per_job": round(emulator_cpu / jobs * 1000, 3),
        "latency_ms": {
            "queue": _percentiles([r["delayTime"] for r in finished if "delayTime" in r]),
            "execution": _percentiles([r["executionTime"] for r in finished if "executionTime" in r]),
            "total": _percentiles([r["client_ms"] for r in finished]),
        },
        **({"batches": batches} if batches else {}),
        "completed": sum(r["status"] == "COMPLETED" for r in results),
        "failed": sum(r["status"] == "FAILED" for r in results),
        "lost": jobs - len(finished),
        "duplicated": counters.duplicate_results + (len(results) - len({r["id"] for r in results})),
        "first_error": next((r["error"] for r in results if "error" in r), None),
    }


def read_batches(batch_dir: Path) -> dict | None:
    """What batching.py logged, one "size wait_ms call_ms" line per batch_handler call: sizes seen
    (a histogram) and the split of a batched job's execution into waiting for its batch and the call."""
    sizes: dict[int, int] = {}
    waits, calls = [], []
    for path in sorted(batch_dir.glob("batches-*.txt")) if batch_dir.is_dir() else ():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                size, wait_ms, call_ms = int(line.split()[0]), float(line.split()[1]), float(line.split()[2])
            except (ValueError, IndexError):
                continue  # a line cut short by a killed worker
            sizes[size] = sizes.get(size, 0) + 1
            waits.append(wait_ms)
            calls.append(call_ms)
    if not sizes:
        return None
    return {
        "count": sum(sizes.values()),
        "sizes": {str(size): sizes[size] for size in sorted(sizes)},
        "mean_size": round(sum(size * n for size, n in sizes.items()) / sum(sizes.values()), 2),
        "wait_ms": _percentiles(waits),
        "call_ms": _percentiles(calls),
    }


def _wait_until_ready(pool: WorkerPool, emulator: QueueEmulator) -> list[float]:
    """Seconds from each worker's process start to its first job-take request."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        pool.check()
        ready = {
            worker_id: emulator.worker_times(worker_id)["first_request"]
            for worker_id in pool.processes
        }
        if all(t is not None for t in ready.values()):
            return [ready[w] - process.spawned for w, process in pool.processes.items()]
        time.sleep(0.02)
    raise KitError(f"the workers did not ask for a job within {STARTUP_TIMEOUT:.0f} s", f"see the logs in {pool.log_dir}")


async def _load(emulator, pool, request, jobs, concurrency, progress) -> tuple[list[dict], float]:
    import aiohttp

    bar = _progress_bar(jobs, progress)
    remaining = iter(range(jobs))
    results: list[dict] = []
    base = f"{emulator.url}/v2/bench"

    async def client(session):
        for _ in remaining:
            sent = time.monotonic()
            async with session.post(f"{base}/runsync", json=request) as response:
                state = await response.json()
            while state["status"] not in FINAL_STATUSES:  # outlasted the sync wait: poll as a client would
                await asyncio.sleep(0.5)
                async with session.get(f"{base}/status/{state['id']}") as response:
                    state = await response.json()
            state["client_ms"] = (time.monotonic() - sent) * 1000
            results.append(state)
            bar.update(1)

    async def supervise():
        while True:
            pool.check()
            await asyncio.sleep(0.2)

    started = time.monotonic()
    supervisor = asyncio.create_task(supervise())
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        pending = {asyncio.create_task(client(session)) for _ in range(min(concurrency, jobs))}
        try:
            while pending:
                done, pending = await asyncio.wait(pending | {supervisor}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(supervisor)
                for task in done:
                    task.result()  # a client's error, or the pool's KitError (a worker that cannot start)
        finally:
            supervisor.cancel()
            for task in pending:
                task.cancel()
        elapsed = time.monotonic() - started
    bar.close()
    return results, elapsed


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: drawn only on a terminal, so CI logs stay clean.
    return tqdm(total=total, unit="job", file=sys.stderr, disable=None if enabled else True, leave=False)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 1), "p95": round(cuts[94], 1), "p99": round(cuts[98], 1)}


def format_report(report: dict) -> str:
    """The report as a table with one column per run."""
    runs = report["runs"]
    rows = [("", [run.get("loop", "result") for run in runs])]

    def cold(run):
        starts = run["cold_start_s"]
        return f"{statistics.mean(starts):.2f}" + (f" (max {max(starts):.2f})" if len(starts) > 1 else "")

    rows.append(("cold start, s", [cold(run) for run in runs]))
    rows.append(("throughput, jobs/s", [f"{run['throughput_jobs_per_s']:.1f}" for run in runs]))
    for part in ("queue", "execution", "total"):
        rows.append(
            (f"{part} p50/p95/p99, ms", ["/".join(_ms(run["latency_ms"][part][p]) for p in ("p50", "p95", "p99")) for run in runs])
        )
    if any("batches" in run for run in runs):
        def batch(run, part):
            b = run.get("batches")
            return "/".join(_ms(b[part][p]) for p in ("p50", "p95", "p99")) if b else "-"

        rows.append(("batches (mean size)", [f"{run['batches']['count']} ({run['batches']['mean_size']:.1f})" if "batches" in run else "-" for run in runs]))
        rows.append(("  batch wait p50/p95/p99, ms", [batch(run, "wait_ms") for run in runs]))
        rows.append(("  batch call p50/p95/p99, ms", [batch(run, "call_ms") for run in runs]))
    rows.append(("emulator CPU per job, ms", [f"{run['emulator_cpu_ms_per_job']:.2f}" for run in runs]))
    for count in ("completed", "failed", "lost", "duplicated"):
        rows.append((count, [str(run[count]) for run in runs]))
    width = max(len(label) for label, _ in rows)
    columns = [max(len(row[1][i]) for row in rows) for i in range(len(runs))]
    lines = [
        f"kit bench {report['target']}: {report['jobs']} jobs, {report['concurrency']} in flight, "
        f"{report['workers']} worker(s)"
    ]
    for label, cells in rows:
        lines.append(f"  {label:<{width}}  " + "  ".join(f"{cell:>{columns[i]}}" for i, cell in enumerate(cells)))
    for run in runs:
        if "batches" in run:
            lines.append(f"  batch sizes ({run.get('loop', 'result')}): " + histogram(run["batches"]["sizes"]))
    for run in runs:
        if run["first_error"] is not None:
            lines.append(f"  first error ({run.get('loop', 'result')}): {str(run['first_error'])[:300]}")
    for run in runs:
        if run["log_dir"] is not None:
            lines.append(f"  worker logs ({run.get('loop', 'result')}): {run['log_dir']}")
    return "\n".join(lines)


def histogram(sizes: dict[str, int], width: int = 30) -> str:
    """Batch sizes seen, one bar per size: `size count bar`, largest size first."""
    most = max(sizes.values())
    bars = [f"{size:>4} x{count:<6}{'#' * max(1, round(count / most * width))}" for size, count in sorted(sizes.items(), key=lambda kv: -int(kv[0]))]
    return "\n" + "\n".join("    " + bar for bar in bars)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"
