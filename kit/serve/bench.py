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
import contextlib
import json
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from kit import platform, workerdir
from kit.errors import KitEnvironmentError, KitError
from kit.serve.emulator import FINAL_STATUSES, QueueEmulator
from kit.serve.pool import WorkerPool

STARTUP_TIMEOUT = 600.0
STOCK_LOOP_LOG = "running the SDK's stock worker loop: "  # what worker_loop.py logs when it falls back
JOB_TIMEOUT = 300.0  # a job not finished this long after it was sent is reported lost, and cancelled
BATCH_REPORT_ENV = platform.template_constant("REPORT_ENV", platform.TEMPLATES / "batching.py")  # where batching.py logs each batch


def bench(
    target: str,
    *,
    jobs: int = 100,
    concurrency: int = 4,
    job_input: str | None = None,
    workers: int = 1,
    json_out: bool = False,
    loop: str = "fast",
    openai: bool = False,
    job_timeout: float = JOB_TIMEOUT,
) -> int:
    """Benchmark `target` (a notebook or a worker directory); 0 when every job completed once.

    `loop` picks the worker loop: "fast" (the exported worker_loop.py), "stock"
    (the SDK's own, through KIT_WORKER_LOOP=stock) or "both", one after the other.
    `openai` sends the load through the OpenAI-compatible route instead of /runsync
    (the request: `--input`, or the notebook's test job if it is an openai_route job).
    """
    from kit.export.export import worker_dir

    if jobs < 1 or concurrency < 1:
        raise KitError("--jobs and --concurrency must be at least 1")
    concurrency = min(concurrency, jobs)  # never more in flight than there are jobs: the report says what ran
    loops = ("stock", "fast") if loop == "both" else (loop,)
    runs = []
    with worker_dir(target) as path:
        request = _openai_request(path, job_input) if openai else _job_request(path, job_input)
        if "fast" in loops and not (path / workerdir.WORKER_LOOP).is_file():
            raise KitError(f"{path} has no worker_loop.py, so it has no fast loop", "re-export the notebook, or use --loop stock")
        for name in loops:
            run = measure(
                path,
                request,
                jobs=jobs,
                concurrency=concurrency,
                workers=workers,
                env={platform.LOOP_ENV: name},
                progress=not json_out,
                openai=openai,
                job_timeout=job_timeout,
            )
            runs.append({"loop": name, **run})
    report = {
        "target": str(target),
        "runpod": _runpod_version(),
        "jobs": jobs,
        "concurrency": concurrency,
        "workers": workers,
        "runs": runs,
    }
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    clean = all(run["completed"] == jobs and run["lost"] == 0 and run["duplicated"] == 0 for run in runs)
    return 0 if clean else 1


def _job_request(path: Path, job_input: str | None) -> dict:
    if job_input is None:
        job = workerdir.example_job(path)
        if job is None:
            raise KitError(
                "no job to send: the notebook's test cells pass no job literal to handler()", 'give one with --input \'{"prompt": "hi"}\''
            )
        return job
    try:
        value = json.loads(job_input)
    except ValueError as error:
        raise KitError(f"--input is not valid JSON: {error}", 'quote it for the shell: --input \'{"prompt": "hi"}\'') from None
    # As runpod.Endpoint.run does: a value without an "input" key is the input itself.
    return value if isinstance(value, dict) and "input" in value else {"input": value}


def _openai_request(path: Path, job_input: str | None) -> dict:
    """{"route": "/v1/...", "body": {...}} for an OpenAI-route load."""
    if job_input is not None:
        try:
            body = json.loads(job_input)
        except ValueError as error:
            raise KitError(
                f"--input is not valid JSON: {error}", "give the OpenAI request body, e.g. --input '{\"messages\": [...]}'"
            ) from None
        if not isinstance(body, dict):
            raise KitError("--input must be a JSON object (the OpenAI request body) with --openai")
        route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        return {"route": route, "body": body}
    job = _job_request(path, None).get("input")
    if not (isinstance(job, dict) and isinstance(job.get("openai_input"), dict) and job.get("openai_route")):
        raise KitError(
            "the notebook's test job is not an OpenAI request (no openai_route/openai_input)",
            'give the request body with --input \'{"messages": [{"role": "user", "content": "hi"}]}\'',
        )
    return {"route": job["openai_route"], "body": job["openai_input"]}


def measure(
    path: Path,
    request: dict,
    *,
    jobs: int,
    concurrency: int,
    workers: int,
    env: dict[str, str] | None = None,
    progress: bool = False,
    openai: bool = False,
    job_timeout: float = JOB_TIMEOUT,
) -> dict:
    """Serve the worker directory at `path`, run the load, stop everything; return the figures.

    Every wait is bounded: the workers' start (STARTUP_TIMEOUT), each job
    (`job_timeout`, then it is cancelled and counted lost), the drain.
    """
    with QueueEmulator() as emulator:
        log_dir = Path(tempfile.mkdtemp(prefix="kit-bench-logs-"))
        batch_dir = log_dir / "batches"
        env = {**(env or {}), BATCH_REPORT_ENV: str(batch_dir)}
        pool = WorkerPool(path, emulator, workers, log_dir=log_dir, env=env, say=lambda line: print(line, file=sys.stderr))
        try:
            pool.start()
            cold_starts = _wait_until_ready(pool)
            cpu_before = emulator.cpu_time()
            results, elapsed = asyncio.run(_load(emulator, pool, request, jobs, concurrency, progress, openai, job_timeout))
            emulator_cpu = emulator.cpu_time() - cpu_before
        finally:
            pool.stop()
        counters = emulator.counters
    stock_loop = _stock_loop_reason(log_dir)
    finished = [r for r in results if r["status"] in FINAL_STATUSES]
    batches = read_batches(batch_dir)
    clean = len(finished) == jobs and all(r["status"] == "COMPLETED" for r in results) and not counters.duplicate_results
    if clean:  # the worker logs matter only when something went wrong
        pool.remove_logs()
    figures = {
        "log_dir": None if clean else str(log_dir),
        "stock_loop": stock_loop,  # why the workers ran the SDK's stock loop (None: the fast one, or asked for stock)
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
        "duplicated": counters.duplicate_results + _repeated_ids(results),
        "first_error": next((r["error"] for r in results if "error" in r), None),
    }
    if openai:
        tokens = sum(r.get("tokens", 0) for r in finished)
        figures["openai"] = {
            "route": request["route"],
            "stream": bool(request["body"].get("stream")),
            "tokens": tokens,
            "tokens_per_s": round(tokens / elapsed, 1),
            "first_chunk_ms": _percentiles([r["first_chunk_ms"] for r in finished if "first_chunk_ms" in r]),
        }
    return figures


def _repeated_ids(results: list[dict]) -> int:
    ids = [r["id"] for r in results if r.get("id") is not None]  # a job never queued has none
    return len(ids) - len(set(ids))


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


def _wait_until_ready(pool: WorkerPool) -> list[float]:
    """Seconds from each worker's process start to its first job-take request."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        pool.check()
        started = list(pool.startup_seconds().values())
        if all(seconds is not None for seconds in started):
            return [seconds for seconds in started if seconds is not None]
        time.sleep(0.02)
    raise KitEnvironmentError(f"the workers did not ask for a job within {STARTUP_TIMEOUT:.0f} s", f"see the logs in {pool.log_dir}")


async def _openai_call(session, url: str, body: dict, timeout: float = JOB_TIMEOUT) -> dict:
    """One OpenAI request; its outcome as a result row (status, tokens, time to first chunk)."""
    import aiohttp

    sent = time.monotonic()
    row: dict = {"id": f"openai-{id(body)}-{sent}", "status": "FAILED"}
    try:
        return await _openai_exchange(session, url, body, row, sent, aiohttp.ClientTimeout(total=timeout))
    except asyncio.TimeoutError:
        row["status"] = "IN_PROGRESS"  # never finished: counted lost, with the reason
        row["error"] = f"no complete answer within {timeout:g} s"
        return row


async def _openai_exchange(session, url: str, body: dict, row: dict, sent: float, timeout) -> dict:
    async with session.post(url, json=body, timeout=timeout) as response:
        if not body.get("stream"):
            answer = await response.json(content_type=None)
            if response.status == 200:
                row["status"], row["tokens"] = "COMPLETED", _completion_tokens(answer)
            else:
                row["error"] = json.dumps(answer)[:300]
            return row
        tokens, buffer, done = 0, "", False
        async for data in response.content.iter_any():
            row.setdefault("first_chunk_ms", (time.monotonic() - sent) * 1000)
            buffer += data.decode("utf-8", "replace")
            *events, buffer = buffer.split("\n\n")
            for event in events:
                payload = event.strip().removeprefix("data:").strip()
                if payload == "[DONE]":
                    done = True
                elif payload:
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        row["error"] = json.dumps(chunk["error"])[:300]
                    tokens += sum(1 for choice in chunk.get("choices", []) if _choice_text(choice))
        row["tokens"] = tokens
        if response.status == 200 and done and "error" not in row:
            row["status"] = "COMPLETED"
        elif "error" not in row:
            row["error"] = f"HTTP {response.status}, stream ended without data: [DONE]"
    return row


def _choice_text(choice: dict) -> str:
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def _completion_tokens(answer) -> int:
    usage = answer.get("usage") if isinstance(answer, dict) else None
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return usage["completion_tokens"]
    return sum(
        len(_choice_text(c).split()) or len(((c.get("message") or {}).get("content") or "").split()) for c in answer.get("choices", [])
    )


async def _load(emulator, pool, request, jobs, concurrency, progress, openai=False, job_timeout=JOB_TIMEOUT) -> tuple[list[dict], float]:
    import aiohttp

    bar = _progress_bar(jobs, progress)
    remaining = iter(range(jobs))
    results: list[dict] = []
    base = f"{emulator.url}/v2/bench"

    async def client(session):
        for _ in remaining:
            if openai:
                sent = time.monotonic()
                row = await _openai_call(session, f"{base}/openai{request['route']}", request["body"], job_timeout)
                row["client_ms"] = (time.monotonic() - sent) * 1000
                results.append(row)
                bar.update(1)
                continue
            sent = time.monotonic()
            deadline = sent + job_timeout
            state = {"id": None, "status": "IN_QUEUE"}
            try:
                # The emulator answers by then; RunPod's ?wait= takes 1-300 s.
                wait = max(1.0, min(emulator.runsync_wait, job_timeout, 300.0))
                async with session.post(
                    f"{base}/runsync",
                    params={"wait": str(int(wait * 1000))},
                    json=request,
                    timeout=aiohttp.ClientTimeout(total=wait + 30),
                ) as response:
                    state = await response.json()
                while state["status"] not in FINAL_STATUSES and time.monotonic() < deadline:
                    # Outlasted the sync wait: poll as a client would.
                    await asyncio.sleep(0.5)
                    async with session.get(f"{base}/status/{state['id']}", timeout=aiohttp.ClientTimeout(total=30)) as response:
                        state = await response.json()
            except asyncio.TimeoutError:
                pass  # no answer in time: reported below
            if state["status"] not in FINAL_STATUSES:
                state["error"] = f"job {state['id'] or '(not queued)'} still {state['status']} after {job_timeout:g} s; cancelled"
                if state["id"] is not None:
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        async with session.post(f"{base}/cancel/{state['id']}", timeout=aiohttp.ClientTimeout(total=10)):
                            pass
            state["client_ms"] = (time.monotonic() - sent) * 1000
            results.append(state)
            bar.update(1)

    async def supervise():
        while True:
            await asyncio.to_thread(pool.check)  # blocking calls into the emulator: off this loop
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


def _runpod_version() -> str:
    """The runpod the workers run (they use this interpreter)."""
    try:
        return metadata.version("runpod")
    except metadata.PackageNotFoundError:
        return "(unknown)"


def _stock_loop_reason(log_dir: Path) -> str | None:
    """Why a worker fell back to the SDK's stock loop, from its log; None when none did or stock was asked for."""
    for log in sorted(log_dir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if STOCK_LOOP_LOG not in line:
                continue
            try:  # on a worker the SDK logs one JSON object a line
                line = json.loads(line)["message"]
            except (ValueError, KeyError, TypeError):
                pass
            reason = str(line).split(STOCK_LOOP_LOG, 1)[-1].strip()
            if not reason.startswith(f"{platform.LOOP_ENV}="):
                return reason
    return None


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
        rows.append((f"{part} p50/p95/p99, ms", ["/".join(_ms(run["latency_ms"][part][p]) for p in ("p50", "p95", "p99")) for run in runs]))
    if any("batches" in run for run in runs):

        def batch(run, part):
            b = run.get("batches")
            return "/".join(_ms(b[part][p]) for p in ("p50", "p95", "p99")) if b else "-"

        rows.append(
            (
                "batches (mean size)",
                [f"{run['batches']['count']} ({run['batches']['mean_size']:.1f})" if "batches" in run else "-" for run in runs],
            )
        )
        rows.append(("  batch wait p50/p95/p99, ms", [batch(run, "wait_ms") for run in runs]))
        rows.append(("  batch call p50/p95/p99, ms", [batch(run, "call_ms") for run in runs]))
    rows.append(("emulator CPU per job, ms", [f"{run['emulator_cpu_ms_per_job']:.2f}" for run in runs]))
    if all("openai" in run for run in runs):
        rows.append(("tokens/s", [f"{run['openai']['tokens_per_s']:.1f}" for run in runs]))
        if all(run["openai"]["stream"] for run in runs):
            rows.append(
                (
                    "first chunk p50/p95/p99, ms",
                    ["/".join(_ms(run["openai"]["first_chunk_ms"][p]) for p in ("p50", "p95", "p99")) for run in runs],
                )
            )
    for count in ("completed", "failed", "lost", "duplicated"):
        rows.append((count, [str(run[count]) for run in runs]))
    width = max(len(label) for label, _ in rows)
    columns = [max(len(row[1][i]) for row in rows) for i in range(len(runs))]
    lines = [
        f"kit bench {report['target']} (runpod {report['runpod']}): {report['jobs']} jobs, {report['concurrency']} in flight, "
        f"{report['workers']} worker(s)"
    ]
    for label, cells in rows:
        lines.append(f"  {label:<{width}}  " + "  ".join(f"{cell:>{columns[i]}}" for i, cell in enumerate(cells)))
    for run in runs:
        if run.get("stock_loop"):
            lines.append(f"  note ({run.get('loop', 'result')}): the workers ran the SDK's stock loop: {run['stock_loop']}")
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
    bars = [
        f"{size:>4} x{count:<6}{'#' * max(1, round(count / most * width))}"
        for size, count in sorted(sizes.items(), key=lambda kv: -int(kv[0]))
    ]
    return "\n" + "\n".join("    " + bar for bar in bars)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"
