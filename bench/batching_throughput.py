"""Dynamic batching, measured side by side in one run: the figures of the README's batching section.

Per worker, through `kit serve`'s whole path (queue emulator + the SDK's worker
loop, the exported fast loop), one sentence per job:

- embeddings_batched.ipynb (`batch_handler`, MAX_BATCH_SIZE 16) with 32 jobs in flight;
- the same worker with TORCHSCRIPT=0 (its eager model, which takes the GIL between
  operations), at the same load, beside its own in-process ceiling;
- embeddings.ipynb (the unbatched `handler`) at the same load;
- the batched worker's own ceiling: `batch_handler` called in-process on full
  batches of MAX_BATCH_SIZE jobs, in a fresh interpreter, no queue and no SDK;
- a trivial `batch_handler` (echo, MAX_BATCH_SIZE 32) with 64 jobs in flight.

Rounds are interleaved (in-process, batched, eager ones, unbatched, trivial, then again) and
each figure is the median over rounds, so a neighbour's load hits all of them
alike. Goals checked at the end: batched >= 250 jobs/s and >= 70% of its
in-process rate; its p99 latency no worse than the unbatched worker's; the
trivial one >= 1,000 jobs/s.

    .venv/bin/python bench/batching_throughput.py [--jobs 1000] [--rounds 2] [--threads N]

Uses the same code as `kit bench` (kit.serve.bench.measure). Machine-dependent:
quote the numbers with the machine (and how busy it was).
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

EAGER = {"TORCHSCRIPT": "0"}  # embeddings_batched.ipynb without its traced model
SENTENCE = {"input": {"sentences": ["A man is eating food."]}}
ECHO = {"input": {"prompt": "Hello World"}}
TRIVIAL_CELLS = [
    ("setup", "MAX_BATCH_SIZE = 32\nMAX_BATCH_WAIT_MS = 5"),
    ("handler", "def batch_handler(jobs):\n    return [{'echo': job['input']} for job in jobs]"),
    ("test", "assert batch_handler([{'input': {'prompt': 'hi'}}]) == [{'echo': {'prompt': 'hi'}}]"),
]

IN_PROCESS = r"""
import importlib.util, json, sys, time
sys.path.insert(0, ".")
spec = importlib.util.spec_from_file_location("handler", "handler.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
request, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
size = module.MAX_BATCH_SIZE
jobs = [{"id": f"job-{n}", **request} for n in range(size)]
module.batch_handler(jobs)  # warm up
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


NAMES = ("batched", "eager", "unbatched", "trivial")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per embeddings measurement (default 1000; trivial: 3x)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for every worker and the in-process run (default: torch's own choice)"
    )
    args = parser.parse_args()
    env = {} if args.threads is None else {"OMP_NUM_THREADS": str(args.threads)}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batched = export_notebook(ROOT / "notebooks" / "embeddings_batched.ipynb", tmp / "embeddings_batched").out_dir
        unbatched = export_notebook(ROOT / "notebooks" / "embeddings.ipynb", tmp / "embeddings").out_dir
        trivial = export_notebook(build_notebook(tmp / "echo_batched.ipynb", TRIVIAL_CELLS), tmp / "echo_batched").out_dir
        rounds = []
        for number in range(1, args.rounds + 1):
            row = {
                "in_process": in_process_rate(batched, SENTENCE, env),
                "batched": serve_run(batched, SENTENCE, args.jobs, 32, env),
                "eager_in_process": in_process_rate(batched, SENTENCE, {**env, **EAGER}),
                "eager": serve_run(batched, SENTENCE, args.jobs, 32, {**env, **EAGER}),
                "unbatched": serve_run(unbatched, SENTENCE, args.jobs, 32, env),
                "trivial": serve_run(trivial, ECHO, 3 * args.jobs, 64, env),
            }
            rounds.append(row)
            print(
                f"round {number}: "
                + json.dumps(
                    {
                        "in_process_jobs_per_s": round(row["in_process"]["jobs_per_s"], 1),
                        "in_process_call_ms_p50": round(row["in_process"]["call_ms_p50"], 1),
                        "served_call_ms_p50": row["batched"]["batches"]["call_ms"]["p50"],
                        "eager_in_process_jobs_per_s": round(row["eager_in_process"]["jobs_per_s"], 1),
                        **{
                            name: {
                                "jobs_per_s": row[name]["throughput_jobs_per_s"],
                                "p99_ms": row[name]["latency_ms"]["total"]["p99"],
                                "batches": row[name].get("batches", {}).get("sizes"),
                            }
                            for name in NAMES
                        },
                    }
                ),
                flush=True,
            )

    def median(path):
        values = []
        for row in rounds:
            value = row
            for key in path:
                value = value[key]
            values.append(value)
        return statistics.median(values)

    ceiling = median(("in_process", "jobs_per_s"))
    ceilings = {"batched": ceiling, "eager": median(("eager_in_process", "jobs_per_s"))}
    calls = {
        name: (median((own, "call_ms_p50")), median((name, "batches", "call_ms", "p50")))
        for name, own in (("batched", "in_process"), ("eager", "eager_in_process"))
    }
    rate = {name: median((name, "throughput_jobs_per_s")) for name in NAMES}
    latency = {name: {p: median((name, "latency_ms", "total", p)) for p in ("p50", "p99")} for name in rate}
    mean_batch = {name: median((name, "batches", "mean_size")) if "batches" in rounds[0][name] else None for name in rate}
    print()
    threads = f"OMP_NUM_THREADS={args.threads}" if args.threads else "torch's default threads"
    print(f"median of {args.rounds} interleaved round(s), 1 worker each, one sentence per embeddings job, {threads}")
    print(
        "| worker | in flight | jobs/s through kit serve | batch_handler in-process, jobs/s | serve / in-process | mean batch | total p50 / p99, ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, label, flight in (
        ("batched", "embeddings_batched (MAX_BATCH_SIZE 16, traced model)", 32),
        ("eager", "embeddings_batched, TORCHSCRIPT=0 (eager model)", 32),
        ("unbatched", "embeddings (handler)", 32),
        ("trivial", "echo batch_handler (MAX_BATCH_SIZE 32)", 64),
    ):
        own = f"{ceilings[name]:,.0f}" if name in ceilings else "-"
        ratio = f"{rate[name] / ceilings[name]:.0%}" if name in ceilings else "-"
        size = f"{mean_batch[name]:.1f}" if mean_batch[name] else "-"
        print(
            f"| {label} | {flight} | {rate[name]:,.1f} | {own} | {ratio} | {size} | {latency[name]['p50']:.0f} / {latency[name]['p99']:.0f} |"
        )
    size = rounds[0]["in_process"]["batch_size"]
    print()
    for name, model in (("batched", "traced"), ("eager", "eager")):
        print(
            f"where the time goes ({model} model): one batch_handler call on {size} jobs takes {calls[name][0]:.0f} ms (p50) in-process and "
            f"{calls[name][1]:.0f} ms inside the served worker, whose event loop shares the GIL with it"
        )
    goals = [
        (f"batched embeddings >= 250 jobs/s: {rate['batched']:,.1f}", rate["batched"] >= 250),
        (f"batched >= 70% of in-process batch_handler: {rate['batched'] / ceiling:.0%}", rate["batched"] >= 0.7 * ceiling),
        (
            f"batched p99 <= unbatched p99 at 32 in flight: {latency['batched']['p99']:.0f} vs {latency['unbatched']['p99']:.0f} ms",
            latency["batched"]["p99"] <= latency["unbatched"]["p99"],
        ),
        (f"trivial batch_handler >= 1,000 jobs/s: {rate['trivial']:,.1f}", rate["trivial"] >= 1000),
    ]
    print()
    for text, met in goals:
        print(f"{'met' if met else 'NOT MET'}: {text}")


if __name__ == "__main__":
    main()
