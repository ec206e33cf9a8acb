"""Dynamic batching, measured side by side in one run: the figures of docs/batching.md.

Per worker, through `kit serve`'s whole path (queue emulator + the SDK's worker
loop, the exported fast loop), one sentence per embeddings job:

- embeddings_batched.ipynb (traced model, MAX_BATCH_SIZE 16) with 32 jobs in flight;
- the same notebook with TORCHSCRIPT=0 (the eager model, as users write it) and
  MAX_BATCH_SIZE=32, with 96 jobs in flight (3 batches: one running, one full and
  waiting, one on its way back to the client and in again);
- each of them, and a trivial echo `batch_handler` (MAX_BATCH_SIZE 32, 64 in flight),
  twice: as exported (batch_handler in a child process of its own) and with
  KIT_BATCH_PROCESS=0 (batch_handler on a thread of the worker loop's process);
- embeddings.ipynb (the unbatched `handler`) at 32 and at 96 in flight, for latency;
- the ceilings: `batch_handler` called in-process on full batches, in a fresh
  interpreter in the worker directory, no queue and no SDK.

Rounds are interleaved and each figure is the median over rounds, so a
neighbour's load hits all of them alike; the load average before and after
each round is printed beside them. Goals checked at the end: eager >= 0.85x its
in-process rate and >= 250 jobs/s, p99 no worse than the unbatched worker's at
the same load, the traced worker no worse than in one process, echo >= 1,500 jobs/s.

    .venv/bin/python bench/batching_throughput.py [--jobs 1000] [--rounds 2] [--threads N] [--only eager,eager_1p]

Uses the same code as `kit bench` (kit.serve.bench.measure). Machine-dependent:
quote the numbers with the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.export.export import export_notebook  # noqa: E402
from kit.serve.bench import measure  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from conftest import build_notebook  # noqa: E402

EAGER = {"TORCHSCRIPT": "0", "MAX_BATCH_SIZE": "32"}  # embeddings_batched.ipynb's eager model, batches of 32
EAGER_IN_FLIGHT = 96  # three batches of 32: one running, one full and waiting, one on its way back to the client
ONE_PROCESS = {"KIT_BATCH_PROCESS": "0"}  # batch_handler on a thread of the worker loop's process (as before)
SENTENCE = {"input": {"sentences": ["A man is eating food."]}}
ECHO = {"input": {"prompt": "Hello World"}}
TRIVIAL_CELLS = [
    ("setup", "MAX_BATCH_SIZE = 32\nMAX_BATCH_WAIT_MS = 5"),
    ("handler", "def batch_handler(jobs):\n    return [{'echo': job['input']} for job in jobs]"),
    ("test", "assert batch_handler([{'input': {'prompt': 'hi'}}]) == [{'echo': {'prompt': 'hi'}}]"),
]

IN_PROCESS = r"""
import importlib.util, json, os, sys, time
sys.path.insert(0, ".")
spec = importlib.util.spec_from_file_location("handler", "handler.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
request, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
size = int(os.environ.get("MAX_BATCH_SIZE") or module.MAX_BATCH_SIZE)
jobs = [{"id": f"job-{n}", **request} for n in range(size)]
for _ in range(3):  # warm up (a TorchScript model optimises itself over its first calls)
    module.batch_handler(jobs)
done, calls, started = 0, [], time.perf_counter()
while time.perf_counter() - started < seconds:
    called = time.perf_counter()
    results = module.batch_handler(jobs)
    calls.append((time.perf_counter() - called) * 1000)
    assert len(results) == size and not any("error" in r for r in results)
    done += size
calls.sort()
print(json.dumps({"jobs_per_s": done / (time.perf_counter() - started), "batch_size": size, "call_ms_p50": calls[len(calls) // 2]}))
"""


def in_process_rate(worker: Path, request: dict, env: dict, seconds: float = 5.0) -> dict:
    """Jobs/s of batch_handler on full batches, in a fresh interpreter in the worker directory."""
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, json.dumps(request), str(seconds)],
        cwd=worker,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def serve_run(worker: Path, request: dict, jobs: int, in_flight: int, env: dict) -> dict:
    run = measure(worker, request, jobs=jobs, concurrency=in_flight, workers=1, env={"RUNPOD_LOG_LEVEL": "WARN", **env})
    if run["completed"] != jobs or run["lost"] or run["duplicated"]:
        raise SystemExit(f"{worker.name}: not every job completed exactly once: {json.dumps(run)}")
    return run


# name: (label, worker, request, in flight, env, in-process ceiling's row or None)
def plan(batched: Path, unbatched: Path, trivial: Path, env: dict) -> dict:
    return {
        "traced": ("embeddings_batched, traced (MAX_BATCH_SIZE 16)", batched, SENTENCE, 32, env, "traced_in_process"),
        "traced_1p": ("  the same, KIT_BATCH_PROCESS=0 (one process)", batched, SENTENCE, 32, {**env, **ONE_PROCESS}, "traced_in_process"),
        "eager": (
            "embeddings_batched, TORCHSCRIPT=0 (eager), MAX_BATCH_SIZE 32",
            batched,
            SENTENCE,
            EAGER_IN_FLIGHT,
            {**env, **EAGER},
            "eager_in_process",
        ),
        "eager_1p": (
            "  the same, KIT_BATCH_PROCESS=0 (one process)",
            batched,
            SENTENCE,
            EAGER_IN_FLIGHT,
            {**env, **EAGER, **ONE_PROCESS},
            "eager_in_process",
        ),
        "unbatched": ("embeddings (handler), 32 in flight", unbatched, SENTENCE, 32, env, None),
        "unbatched_96": ("embeddings (handler), 96 in flight", unbatched, SENTENCE, 96, env, None),
        "trivial": ("echo batch_handler (MAX_BATCH_SIZE 32)", trivial, ECHO, 64, env, None),
        "trivial_1p": ("  the same, KIT_BATCH_PROCESS=0 (one process)", trivial, ECHO, 64, {**env, **ONE_PROCESS}, None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per embeddings measurement (default 1000; trivial: 3x)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for every worker and the in-process run (default: torch's own choice)"
    )
    parser.add_argument("--only", default="", help="comma-separated rows to run (default: all)")
    args = parser.parse_args()
    env = {} if args.threads is None else {"OMP_NUM_THREADS": str(args.threads)}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batched = export_notebook(ROOT / "notebooks" / "embeddings_batched.ipynb", tmp / "embeddings_batched").out_dir
        unbatched = export_notebook(ROOT / "notebooks" / "embeddings.ipynb", tmp / "embeddings").out_dir
        trivial = export_notebook(build_notebook(tmp / "echo_batched.ipynb", TRIVIAL_CELLS), tmp / "echo_batched").out_dir
        rows = plan(batched, unbatched, trivial, env)
        if args.only:
            rows = {name: row for name, row in rows.items() if name in args.only.split(",")}
        ceilings = {"traced_in_process": env, "eager_in_process": {**env, **EAGER}}
        wanted = {row[5] for row in rows.values()} - {None}
        rounds = []
        for number in range(1, args.rounds + 1):
            result: dict = {"load": os.getloadavg()[0]}
            for name in ceilings:
                if name in wanted:
                    result[name] = in_process_rate(batched, SENTENCE, ceilings[name])
            for name, (_, worker, request, flight, row_env, _) in rows.items():
                jobs = 3 * args.jobs if worker == trivial else args.jobs
                result[name] = serve_run(worker, request, jobs, flight, row_env)
            result["load_after"] = os.getloadavg()[0]
            rounds.append(result)
            brief = {name: round(result[name]["jobs_per_s"], 1) for name in ceilings if name in result} | {
                name: (result[name]["throughput_jobs_per_s"], result[name]["latency_ms"]["total"]["p99"]) for name in rows
            }
            print(f"round {number} (load {result['load']:.1f} -> {result['load_after']:.1f}): {json.dumps(brief)}", flush=True)

    def median(*path):
        values = []
        for result in rounds:
            value = result
            for key in path:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    threads = f"OMP_NUM_THREADS={args.threads}" if args.threads else "torch's default threads"
    loads = [f"{r['load']:.1f}-{r['load_after']:.1f}" for r in rounds]
    print()
    print(
        f"median of {args.rounds} interleaved round(s), 1 worker each, one sentence per embeddings job, {threads}; load average per round: {', '.join(loads)}"
    )
    print(
        "| worker | in flight | jobs/s through kit serve | batch_handler in-process, jobs/s | served / in-process | mean batch | total p50 / p99, ms |"
    )
    print("|---|---|---|---|---|---|---|")
    rate, p99 = {}, {}
    for name, (label, _, _, flight, _, ceiling) in rows.items():
        rate[name] = median(name, "throughput_jobs_per_s")
        p99[name] = median(name, "latency_ms", "total", "p99")
        own = median(ceiling, "jobs_per_s") if ceiling else None
        batch = median(name, "batches", "mean_size") if "batches" in rounds[0][name] else None
        print(
            f"| {label} | {flight} | {rate[name]:,.1f} | {f'{own:,.0f}' if own else '-'} | {f'{rate[name] / own:.2f}x' if own else '-'} | "
            f"{f'{batch:.1f}' if batch else '-'} | {median(name, 'latency_ms', 'total', 'p50'):.0f} / {p99[name]:.0f} |"
        )
    print()
    for name, ceiling in (("traced", "traced_in_process"), ("eager", "eager_in_process"), ("eager_1p", "eager_in_process")):
        if name in rows:
            print(
                f"{name}: one batch_handler call takes {median(ceiling, 'call_ms_p50'):.0f} ms (p50) in-process and "
                f"{median(name, 'batches', 'call_ms', 'p50'):.0f} ms served; jobs wait {median(name, 'batches', 'wait_ms', 'p50'):.0f} ms (p50) for their batch"
            )
    goals = []
    if "eager" in rows:
        own = median("eager_in_process", "jobs_per_s")
        goals += [
            (f"eager embeddings >= 0.85x in-process: {rate['eager'] / own:.2f}x", rate["eager"] >= 0.85 * own),
            (f"eager embeddings >= 250 jobs/s: {rate['eager']:,.1f}", rate["eager"] >= 250),
        ]
        if "unbatched_96" in rows:
            goals.append(
                (
                    f"eager p99 <= unbatched p99 at 96 in flight: {p99['eager']:.0f} vs {p99['unbatched_96']:.0f} ms",
                    p99["eager"] <= p99["unbatched_96"],
                )
            )
    if "traced" in rows and "traced_1p" in rows:
        goals.append(
            (
                f"traced no worse than one process: {rate['traced']:,.1f} vs {rate['traced_1p']:,.1f} jobs/s",
                rate["traced"] >= 0.95 * rate["traced_1p"],
            )
        )
    if "traced" in rows and "unbatched" in rows:
        goals.append(
            (
                f"traced p99 <= unbatched p99 at 32 in flight: {p99['traced']:.0f} vs {p99['unbatched']:.0f} ms",
                p99["traced"] <= p99["unbatched"],
            )
        )
    if "trivial" in rows:
        goals.append((f"echo batch_handler >= 1,500 jobs/s: {rate['trivial']:,.1f}", rate["trivial"] >= 1500))
    print()
    for text, met in goals:
        print(f"{'met' if met else 'NOT MET'}: {text}")


if __name__ == "__main__":
    main()
