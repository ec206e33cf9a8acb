"""Where the time goes between a client and a handler: figures for the README.

For each example notebook: the handler called in-process (the ceiling), then
jobs/s of ONE worker through `kit serve`'s whole path (queue emulator + SDK
worker loop) at CONCURRENCY_MODIFIER 1, 4 and 16, on the SDK's stock loop and
on the exported fast loop, with each loop's cold start. Last, the emulator on
its own: jobs/s and per-job cost with an in-process client that takes and
finishes jobs as fast as it can (no worker process), so its overhead is known.

    .venv/bin/python bench/serve_throughput.py [--jobs N] [--notebooks hello embeddings]

Uses the same code as `kit bench` (kit.serve.bench.measure). Machine-dependent: run
it on a quiet machine and quote the numbers with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.export.export import export_notebook  # noqa: E402
from kit.serve.bench import measure  # noqa: E402
from kit.serve.emulator import QueueEmulator  # noqa: E402

MODIFIERS = (1, 4, 16)


def direct_rate(worker_dir: Path, request: dict, seconds: float = 3.0) -> float:
    """Handler calls per second, in-process, no queue and no SDK."""
    sys.path.insert(0, str(worker_dir))
    spec = importlib.util.spec_from_file_location("exported_handler", worker_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.handler

    async def run() -> float:
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            job = {"id": f"direct-{calls}", **request}
            result = handler(job)
            if inspect.isawaitable(result):
                await result
            calls += 1
        return calls / (time.perf_counter() - started)

    return asyncio.run(run())


def emulator_capacity(jobs: int = 5000, batch: int = 16, drivers: int = 8) -> dict:
    """The emulator's own cost per job (its thread's CPU time), driven as hard as one process can:
    `drivers` clients submit and take/finish jobs concurrently, with no worker process."""
    import aiohttp

    with QueueEmulator() as emu:
        env = emu.worker_env("probe")
        take = env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "probe").replace("/job-take/", "/job-take-batch/")
        done = env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", "probe")
        headers = {"Authorization": env["RUNPOD_AI_API_KEY"]}
        share = jobs // drivers
        finished = [0]  # across drivers: any driver may take any job
        all_done = asyncio.Event()

        async def driver(session) -> None:
            for _ in range(share):
                async with session.post(f"{emu.url}/v2/probe/run", json={"input": {}}) as response:
                    await response.read()
            while finished[0] < share * drivers:
                async with session.get(f"{take}&batch_size={batch}&job_in_progress=0") as response:
                    taken = await response.json() if response.status == 200 else []
                for job in taken:
                    url = done.replace("$ID", job["id"]) + "&isStream=false"
                    async with session.post(url, data=json.dumps({"output": "ok"})) as response:
                        await response.read()
                finished[0] += len(taken)
                if finished[0] >= share * drivers:
                    all_done.set()

        async def drive() -> float:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                started = time.perf_counter()
                tasks = [asyncio.create_task(driver(session)) for _ in range(drivers)]
                await all_done.wait()
                elapsed = time.perf_counter() - started
                for task in tasks:  # the others are in a long-poll on the empty queue
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return elapsed

        cpu_before = emu.cpu_time()
        elapsed = asyncio.run(drive())
        cpu = emu.cpu_time() - cpu_before
    total = share * drivers
    return {"jobs": total, "jobs_per_s": round(total / elapsed), "cpu_us_per_job": round(cpu / total * 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per fast-loop measurement (default 2000)")
    parser.add_argument("--notebooks", nargs="+", default=["hello", "embeddings"])
    args = parser.parse_args()

    rows = []
    for name in args.notebooks:
        with tempfile.TemporaryDirectory() as tmp:
            worker = export_notebook(ROOT / "notebooks" / f"{name}.ipynb", Path(tmp) / name).out_dir
            request = json.loads((worker / "test_input.json").read_text())
            rate = direct_rate(worker, request)
            print(f"{name}: direct in-process call rate {rate:,.0f} calls/s", flush=True)
            for modifier in MODIFIERS:
                for loop in ("stock", "fast"):
                    # The stock loop takes at most `modifier` jobs a second: size its run to ~15 s.
                    jobs = min(args.jobs, 15 * modifier) if loop == "stock" else args.jobs
                    run = measure(
                        worker,
                        request,
                        jobs=jobs,
                        concurrency=2 * modifier,
                        workers=1,
                        env={"KIT_WORKER_LOOP": loop, "CONCURRENCY_MODIFIER": str(modifier), "RUNPOD_LOG_LEVEL": "WARN"},
                    )
                    row = {
                        "notebook": name,
                        "loop": loop,
                        "modifier": modifier,
                        "jobs": jobs,
                        "jobs_per_s": run["throughput_jobs_per_s"],
                        "cold_start_s": run["cold_start_s"][0],
                        "execution_p50_ms": run["latency_ms"]["execution"]["p50"],
                        "queue_p50_ms": run["latency_ms"]["queue"]["p50"],
                        "emulator_cpu_ms_per_job": run["emulator_cpu_ms_per_job"],
                        "lost": run["lost"],
                        "duplicated": run["duplicated"],
                        "direct_calls_per_s": round(rate),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    capacity = emulator_capacity()
    print(
        f"emulator alone: {capacity['jobs_per_s']:,} jobs/s with its client in the same process; "
        f"its own CPU: {capacity['cpu_us_per_job']} us per job (submit + batch take + done over HTTP)"
    )
    print()
    print("| notebook | CONCURRENCY_MODIFIER | stock jobs/s | fast jobs/s | stock cold start s | fast cold start s | direct calls/s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.notebooks:
        for modifier in MODIFIERS:
            stock, fast = (
                next(r for r in rows if (r["notebook"], r["loop"], r["modifier"]) == (name, loop, modifier)) for loop in ("stock", "fast")
            )
            print(
                f"| {name} | {modifier} | {stock['jobs_per_s']} | {fast['jobs_per_s']} | {stock['cold_start_s']:.2f} "
                f"| {fast['cold_start_s']:.2f} | {fast['direct_calls_per_s']:,} |"
            )
    cold = (
        {
            loop: statistics.median(r["cold_start_s"] for r in rows if r["loop"] == loop and r["notebook"] == "hello")
            for loop in ("stock", "fast")
        }
        if "hello" in args.notebooks
        else {}
    )
    if cold:
        print(f"\nhello cold start, median of {len(MODIFIERS)}: stock {cold['stock']:.2f} s, fast {cold['fast']:.2f} s")


if __name__ == "__main__":
    main()
