"""`kit bench`: load a served worker and report cold start, throughput, latency and job counts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import NOTEBOOKS, process_gone, run_kit

pytestmark = pytest.mark.process  # every test here starts worker or server processes

FAST = {"CONCURRENCY_MODIFIER": "4"}  # the stock SDK loop takes at most this many jobs a second


def test_bench_the_hello_notebook_on_both_loops_reports_every_job_completed_once():
    result = run_kit("bench", NOTEBOOKS / "hello.ipynb", "--jobs", "12", "--concurrency", "4", "--loop", "both", "--json", env=FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["jobs"], report["concurrency"], report["workers"]) == (12, 4, 1)
    assert [run["loop"] for run in report["runs"]] == ["stock", "fast"]
    for run in report["runs"]:
        assert (run["completed"], run["failed"], run["lost"], run["duplicated"]) == (12, 0, 0, 0)
        assert len(run["cold_start_s"]) == 1 and run["cold_start_s"][0] > 0
        assert run["throughput_jobs_per_s"] > 0
        for part in ("queue", "execution", "total"):
            latency = run["latency_ms"][part]
            assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"], part
        assert run["latency_ms"]["total"]["p50"] >= run["latency_ms"]["execution"]["p50"]


def test_a_fast_run_that_fell_back_to_the_stock_loop_says_so(tmp_path):
    # A runpod whose version the fast loop was not tested with (its metadata first on the path).
    fake = tmp_path / "fake-metadata" / "runpod-0.0.1.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: runpod\nVersion: 0.0.1\n")
    env = {**FAST, "PYTHONPATH": str(fake.parent)}
    result = run_kit("bench", NOTEBOOKS / "hello.ipynb", "--jobs", "2", "--concurrency", "1", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(runpod 0.0.1)" in result.stdout.splitlines()[0]
    assert "note (fast): the workers ran the SDK's stock loop: runpod 0.0.1 is not a version the fast loop was tested with" in result.stdout
    result = run_kit("bench", NOTEBOOKS / "hello.ipynb", "--jobs", "2", "--concurrency", "1", "--json", env=FAST)
    assert json.loads(result.stdout)["runs"][0]["stock_loop"] is None  # this runpod: the fast loop ran


def test_a_hand_written_worker_has_no_fast_loop(tmp_path):
    (tmp_path / "handler.py").write_text(
        "import runpod\n\ndef handler(job):\n    return job['input']\n\n"
        "if __name__ == '__main__':\n    runpod.serverless.start({'handler': handler})\n"
    )
    result = run_kit("bench", tmp_path, "--jobs", "2", "--input", "{}")
    assert result.returncode == 2 and "no worker_loop.py" in result.stderr
    result = run_kit("bench", tmp_path, "--jobs", "2", "--input", "{}", "--loop", "stock", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["runs"][0]["completed"] == 2


def test_bench_prints_a_table_and_uses_the_given_input(make_notebook):
    notebook = make_notebook([("handler", "def handler(job):\n    assert job['input'] == {'size': 3}\n    return 'ok'")])
    result = run_kit("bench", notebook, "--jobs", "3", "--workers", "2", "--input", '{"size": 3}', env=FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 jobs, 3 in flight, 2 worker(s)" in result.stdout  # --concurrency 4 (the default), clamped to the jobs
    for label in ("cold start, s", "throughput, jobs/s", "queue p50/p95/p99, ms", "execution p50/p95/p99, ms"):
        assert label in result.stdout
    lines = dict(
        line.split(None, 1)
        for line in result.stdout.splitlines()
        if line.strip().split()[0] in ("completed", "failed", "lost", "duplicated")
    )
    assert {k: v.strip() for k, v in lines.items()} == {"completed": "3", "failed": "0", "lost": "0", "duplicated": "0"}


def test_failing_jobs_are_counted_and_make_bench_exit_1(make_notebook):
    notebook = make_notebook([("handler", "def handler(job):\n    raise RuntimeError('out of memory')")])
    result = run_kit("bench", notebook, "--jobs", "2", "--input", "{}", "--json", env=FAST)
    assert result.returncode == 1
    (run,) = json.loads(result.stdout)["runs"]
    assert (run["completed"], run["failed"], run["lost"]) == (0, 2, 0)
    assert "out of memory" in run["first_error"]


def test_bad_input_is_a_one_line_error(make_notebook):
    notebook = make_notebook([("handler", "def handler(job):\n    return 1")])
    result = run_kit("bench", notebook, "--input", "{not json")
    assert result.returncode == 2
    assert "--input is not valid JSON" in result.stderr and "Traceback" not in result.stderr
    result = run_kit("bench", notebook)  # no test cell, no --input: nothing to send
    assert result.returncode == 2 and "--input" in result.stderr


@pytest.mark.process
def test_bench_drives_the_openai_route_and_reports_tokens_and_first_chunk():
    stream = '{"model": "kit-echo-1", "stream": true, "messages": [{"role": "user", "content": "a b c"}]}'
    result = run_kit("bench", NOTEBOOKS / "openai_chat.ipynb", "--openai", "--jobs", "4", "--input", stream, "--json", env=FAST)
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert (run["completed"], run["failed"], run["lost"]) == (4, 0, 0)
    figures = run["openai"]
    assert figures["route"] == "/v1/chat/completions" and figures["stream"] is True
    assert figures["tokens"] == 4 * 5  # "You said: a b c", one token a word
    assert 0 < figures["first_chunk_ms"]["p50"] <= run["latency_ms"]["total"]["p99"]
    plain = run_kit("bench", NOTEBOOKS / "openai_chat.ipynb", "--openai", "--jobs", "2", env=FAST)  # the notebook's own test job
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "tokens/s" in plain.stdout and "first chunk" not in plain.stdout


def test_bench_openai_needs_an_openai_request(make_notebook):
    notebook = make_notebook([("handler", "def handler(job):\n    return 1"), ("test", "handler({'input': {'x': 1}})")])
    result = run_kit("bench", notebook, "--openai")
    assert result.returncode == 2 and "not an OpenAI request" in result.stderr


def test_a_job_that_never_finishes_is_reported_and_bench_terminates(make_notebook):
    """The SDK cannot serialise a set, so it never posts the result: bench must still end and say so."""
    notebook = make_notebook([("handler", "def handler(job):\n    return {1, 2}")])
    result = run_kit(
        "bench", notebook, "--jobs", "2", "--concurrency", "2", "--input", "{}", "--json", "--job-timeout", "8", env=FAST, timeout=240
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert run["completed"] == 0 and run["failed"] + run["lost"] == 2 and run["duplicated"] == 0
    assert run["first_error"]


@pytest.mark.process
def test_a_killed_bench_leaves_no_worker_behind(make_notebook, tmp_path):
    pid_file = tmp_path / "pid"
    notebook = make_notebook(
        [
            ("setup", "import os, time"),
            ("handler", f"def handler(job):\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n    time.sleep(600)"),
        ]
    )
    bench = subprocess.Popen(
        [sys.executable, "-m", "kit", "bench", str(notebook), "--jobs", "1", "--input", "{}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = int(pid_file.read_text())
        bench.kill()
        bench.wait(30)
        assert process_gone(worker), "the worker outlived kit bench"
    finally:
        bench.kill()
        bench.wait()


BATCHED = [
    ("setup", "MAX_BATCH_SIZE = 4\nMAX_BATCH_WAIT_MS = 50"),
    ("handler", "def batch_handler(jobs):\n    return [{'echo': job['input'], 'batch': len(jobs)} for job in jobs]"),
    ("test", "batch_handler([{'input': {'prompt': 'hi'}}])"),
]


@pytest.mark.process
def test_bench_of_a_batch_handler_reports_the_batch_sizes_it_saw(make_notebook):
    nb = make_notebook(BATCHED)
    result = run_kit("bench", nb, "--jobs", "40", "--concurrency", "8", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    batches = json.loads(result.stdout)["runs"][0]["batches"]
    sizes = {int(size): count for size, count in batches["sizes"].items()}
    assert sum(size * count for size, count in sizes.items()) == 40  # every job was in exactly one batch
    assert max(sizes) == 4 and batches["count"] == sum(sizes.values()) < 40
    for part in ("wait_ms", "call_ms"):
        assert 0 <= batches[part]["p50"] <= batches[part]["p99"]

    table = run_kit("bench", nb, "--jobs", "40", "--concurrency", "8")
    assert table.returncode == 0, table.stdout + table.stderr
    assert "batch wait p50/p95/p99, ms" in table.stdout and "batch call p50/p95/p99, ms" in table.stdout
    histogram = table.stdout.split("batch sizes (fast):")[1].splitlines()[1:]
    assert histogram[0].split()[:1] == ["4"] and "#" in histogram[0]  # largest size first, with its bar
