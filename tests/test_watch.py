"""`kit serve NOTEBOOK --watch`: every save re-exports; handler-only changes reload warm, others restart.

Each test serves a notebook built here, then saves it again the way JupyterLab
and VS Code do (a new file renamed into place) and asks the endpoint until it
answers with the new code. Setup cells append a line to a file per run, so a
test sees how often setup ran.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import nbformat
import pytest
import requests
from conftest import build_notebook
from test_serve import kit_serve

from kit.serve.watch import Version, compare

pytestmark = pytest.mark.process


def cells(setup: str, handler: str):
    return [
        ("md", "# a watched worker"),
        ("setup", "import asyncio, os, time\nfrom pathlib import Path\n" + setup),
        ("handler", handler),
        ("test", 'handler({"input": {"x": 1}})'),
    ]


COUNTING_SETUP = 'with open(os.environ["SETUP_LOG"], "a") as log:\n    log.write(f"{os.getpid()}\\n")\nPREFIX = "setup-1"'


def plain_handler(version: int) -> str:
    # A module-level constant and a helper, both in the handler cell: a warm reload replaces them.
    return (
        f"VERSION = {version}\n"
        "def describe(x):\n"
        f"    return f'{{PREFIX}} v{{VERSION}} x={{x}} helper-{version}'\n"
        "def handler(job):\n"
        "    return {'version': VERSION, 'text': describe(job['input'].get('x'))}\n"
    )


def save(path: Path, cell_sources: list, *, keep_mtime: bool = False) -> None:
    """Save as JupyterLab does: write a new file beside it, rename it into place."""
    nb = nbformat.read(path, as_version=4)
    stat = path.stat()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for cell, source in zip(code_cells, cell_sources):
        if source is not None:
            cell.source = source
    partial = path.with_name(f".~{path.name}")
    nbformat.write(nb, partial)
    if keep_mtime:  # only the inode tells this save from the last one
        os.utime(partial, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(partial, path)


def runsync(served, job_input: dict, timeout: float = 60) -> dict:
    answer = requests.post(f"{served.url}/v2/local/runsync", json={"input": job_input}, timeout=timeout + 5)
    answer.raise_for_status()
    state = answer.json()
    assert state["status"] == "COMPLETED", state
    return state["output"]


def answer_until(served, job_input: dict, predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        output = runsync(served, job_input)
        if predicate(output):
            return output
        assert time.monotonic() < deadline, f"the endpoint still answers {output!r}:\n{served.output()}"
        time.sleep(0.05)


def setup_runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def setup_log(tmp_path):
    return tmp_path / "setup.log"


@pytest.mark.parametrize("loop", ["fast", "stock"])
def test_handler_only_saves_reload_warm_without_running_setup_again(tmp_path, setup_log, loop):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log), "KIT_WORKER_LOOP": loop}) as served:
        assert runsync(served, {"x": 0}) == {"version": 1, "text": "setup-1 v1 x=0 helper-1"}
        for version in (2, 3, 4):
            save(notebook, [None, plain_handler(version)])
            output = answer_until(served, {"x": version}, lambda out: out["version"] == version)
            assert output["text"] == f"setup-1 v{version} x={version} helper-{version}"
            line = served.wait_for_line(rf"^reload {version - 1}: ")  # reloads count from 1
            assert re.search(
                rf"^reload {version - 1}: cell 3 \[handler\] changed — warm: .*; in place in 1 worker\(s\) \d+\.\d\d s after the save$",
                line,
            ), line
        assert setup_runs(setup_log) == 1, "setup ran again on a handler-only save"


def test_a_reload_says_when_every_worker_has_the_new_code_without_waiting_for_a_job(tmp_path, setup_log):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    with kit_serve(notebook, "--watch", "--workers", "2", env={"SETUP_LOG": str(setup_log)}) as served:
        served.wait_for_line(r"^worker-2 is taking jobs: ")
        save(notebook, [None, plain_handler(2)])
        line = served.wait_for_line(r"^reload 1: ")  # no job sent: the figure is the reload's own
        assert re.search(r"— warm: .*; in place in 2 worker\(s\) \d+\.\d\d s after the save$", line), line
        assert runsync(served, {})["version"] == 2


def test_every_save_that_changes_nothing_served_says_so_in_the_same_words(tmp_path, setup_log):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    nothing = "no change to the code the workers run (test cells, outputs and comments are not served): nothing to reload"
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log)}) as served:
        served.wait_for_line(r"^worker-1 is taking jobs: ")
        save(notebook, [None, None, 'handler({"input": {"x": 2}})'])  # only the test cell
        served.wait_for_line(rf"^saved: {re.escape(nothing)}$")
        save(notebook, [None, None, None])  # the same notebook again
        deadline = time.monotonic() + 30
        while sum(line == f"saved: {nothing}" for line in served.lines) < 2:
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.05)
        save(notebook, [None, "def handler(job):\n    return undefined_name"])
        served.wait_for_line(r"^error: ")
        save(notebook, [None, plain_handler(1)])
        served.wait_for_line(rf"^saved: the notebook exports again, {re.escape(nothing)}$")
        assert not [line for line in served.lines if line.startswith("reload ")]
        assert runsync(served, {})["version"] == 1


@pytest.mark.parametrize(
    "kind, make, call",
    [
        (
            "async",
            lambda v: f"async def handler(job):\n    await asyncio.sleep(0)\n    return {{'version': {v}}}",
            lambda out: out["version"],
        ),
        (
            "generator",
            lambda v: f"def handler(job):\n    yield {{'version': {v}}}\n    yield {{'done': True}}",
            lambda out: out[0]["version"],
        ),
        ("async_generator", lambda v: f"async def handler(job):\n    yield {{'version': {v}}}", lambda out: out[0]["version"]),
    ],
)
def test_async_and_generator_handlers_reload_warm(tmp_path, setup_log, kind, make, call):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, make(1)))
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log)}) as served:
        assert call(runsync(served, {})) == 1
        save(notebook, [None, make(2)])
        answer_until(served, {}, lambda out: call(out) == 2)
        assert "warm" in served.wait_for_line(r"^reload 1: ")
        assert setup_runs(setup_log) == 1


def batch_handler_cell(version: int) -> str:
    return f"MAX_BATCH_WAIT_MS = 1\ndef batch_handler(jobs):\n    return [{{'version': {version}, 'pid': os.getpid()}} for job in jobs]\n"


def test_a_batch_handler_reloads_warm_in_the_workers_own_process(tmp_path, setup_log):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, batch_handler_cell(1)))
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log)}) as served:
        first = runsync(served, {})
        assert first["version"] == 1
        save(notebook, [None, batch_handler_cell(2)])
        second = answer_until(served, {}, lambda out: out["version"] == 2)
        assert "warm" in served.wait_for_line(r"^reload 1: ")
        assert setup_runs(setup_log) == 1 and second["pid"] == first["pid"]


def test_a_concurrency_modifier_change_reloads_warm(tmp_path, setup_log):
    seen = tmp_path / "modifier"

    def handler(n: int) -> str:
        return (
            "def handler(job):\n    return 'ok'\n"
            f"def concurrency_modifier(current):\n    Path(os.environ['MODIFIER_LOG']).write_text('{n}')\n    return {n}\n"
        )

    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, handler(2)))
    env = {"SETUP_LOG": str(setup_log), "MODIFIER_LOG": str(seen)}
    with kit_serve(notebook, "--watch", env=env) as served:
        assert runsync(served, {}) == "ok"
        save(notebook, [None, handler(3)])
        deadline = time.monotonic() + 60
        while not (seen.exists() and seen.read_text() == "3"):  # the SDK asks the modifier at least once a second
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.1)
        assert runsync(served, {}) == "ok"
        assert "warm" in served.wait_for_line(r"^reload 1: ")
        assert setup_runs(setup_log) == 1


def test_a_setup_change_restarts_the_workers_and_says_why(tmp_path, setup_log):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log)}) as served:
        assert runsync(served, {"x": 0})["text"].startswith("setup-1 ")
        new_setup = "import asyncio, os, time\nfrom pathlib import Path\n" + COUNTING_SETUP.replace("setup-1", "setup-2")
        save(notebook, [new_setup, None])
        answer_until(served, {"x": 1}, lambda out: out["text"].startswith("setup-2 "))
        line = served.wait_for_line(r"^reload 1: ")
        assert re.search(
            r"cell 2 \[setup\] changed — cold restart: a setup cell changed, so setup runs again; in place in 1 worker\(s\) \d+\.\d\d s after the save$",
            line,
        ), line
        assert setup_runs(setup_log) == 2


def test_a_broken_save_keeps_serving_and_the_next_good_save_recovers(tmp_path, setup_log):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log)}) as served:
        assert runsync(served, {})["version"] == 1
        broken = plain_handler(2).replace("return {'version'", "return {'typo': undefined_name, 'version'")
        save(notebook, [None, broken])
        line = served.wait_for_line(r"^error: ")
        assert re.search(
            r"^error: \S*worker\.ipynb: cell 3, line \d+: `undefined_name` is not defined.*\(still serving the last good save\)$", line
        ), line
        assert runsync(served, {})["version"] == 1
        # Exports, but fails in the worker when the handler cell runs: the old code keeps serving.
        save(notebook, [None, "BROKEN = 1 / 0\n" + plain_handler(2)])
        line = served.wait_for_line(r"^error: reload 1: ")
        assert "worker.ipynb: cell 3, line 1: ZeroDivisionError: division by zero" in line, line
        assert runsync(served, {})["version"] == 1
        save(notebook, [None, plain_handler(3)])
        answer_until(served, {}, lambda out: out["version"] == 3)
        assert setup_runs(setup_log) == 1


def test_a_rename_into_place_with_the_same_size_and_mtime_is_seen(tmp_path, setup_log):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log)}) as served:
        assert runsync(served, {})["version"] == 1
        before = notebook.stat()
        save(notebook, [None, plain_handler(7)], keep_mtime=True)
        after = notebook.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns) and after.st_ino != before.st_ino
        answer_until(served, {}, lambda out: out["version"] == 7)


SLOW_HANDLER = (
    "VERSION = {v}\n"
    "async def handler(job):\n"
    "    with open(Path(os.environ['RECORD_DIR']) / f'{{os.getpid()}}.ids', 'a') as ids:\n"
    "        ids.write(job['id'] + '\\n')\n"
    "    await asyncio.sleep(job['input'].get('sleep', 0.05))\n"
    "    return {{'version': VERSION}}  # read after the sleep: the job's own generation\n"
)


def test_jobs_in_flight_during_a_reload_are_neither_lost_nor_duplicated(tmp_path, setup_log):
    record = tmp_path / "record"
    record.mkdir()
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, SLOW_HANDLER.format(v=1)))
    env = {"SETUP_LOG": str(setup_log), "RECORD_DIR": str(record), "CONCURRENCY_MODIFIER": "4"}
    with kit_serve(notebook, "--watch", "--workers", "2", env=env) as served:
        assert runsync(served, {})["version"] == 1
        base = f"{served.url}/v2/local"
        long_job = requests.post(f"{base}/run", json={"input": {"sleep": 3}}, timeout=10).json()["id"]
        while requests.get(f"{base}/status/{long_job}", timeout=10).json()["status"] != "IN_PROGRESS":
            time.sleep(0.05)
        ids: list[str] = []
        stop = threading.Event()

        def load():  # a bounded load: at most 60 jobs, a few in flight at a time
            while not stop.is_set() and len(ids) < 60:
                ids.append(requests.post(f"{base}/run", json={"input": {"sleep": 0.1}}, timeout=10).json()["id"])
                time.sleep(0.03)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(0.3)
        save(notebook, [None, SLOW_HANDLER.format(v=2)])
        answer_until(served, {}, lambda out: out["version"] == 2)
        after_reload = runsync(served, {})
        stop.set()
        loader.join(30)

        outputs = {}
        for job_id in [long_job, *ids]:
            deadline = time.monotonic() + 60
            while (state := requests.get(f"{base}/status/{job_id}", timeout=10).json())["status"] in ("IN_QUEUE", "IN_PROGRESS"):
                assert time.monotonic() < deadline, state
                time.sleep(0.05)
            assert state["status"] == "COMPLETED", state
            outputs[job_id] = state["output"]["version"]
        assert outputs[long_job] == 1, "a job in flight during the reload must finish on the old code"
        assert after_reload["version"] == 2
        assert {1, 2} <= set(outputs.values())
        ran = [line for f in record.glob("*.ids") for line in f.read_text().splitlines()]
        for job_id in [long_job, *ids]:
            assert ran.count(job_id) == 1, f"{job_id} ran {ran.count(job_id)} times"
        health = requests.get(f"{base}/health", timeout=10).json()
        assert health["jobs"]["failed"] == 0
        assert setup_runs(setup_log) == 2  # two workers, each set up once


def test_compare_tells_warm_from_cold(tmp_path):
    from kit.export.export import export_notebook

    def export(name, setup, handler):
        build_notebook(tmp_path / f"{name}.ipynb", cells(setup, handler))
        return Version.read(export_notebook(tmp_path / f"{name}.ipynb", tmp_path / "out" / name).out_dir)

    base = export("a", "PREFIX = 1", plain_handler(1))
    warm = compare(base, export("b", "PREFIX = 1", plain_handler(2)))
    assert warm.cells == ["cell 3 [handler]"] and warm.cold == []
    cold = compare(base, export("c", "PREFIX = 2", plain_handler(1)))
    assert cold.cells == ["cell 2 [setup]"] and cold.cold == ["a setup cell changed, so setup runs again"]
    kind = compare(base, export("d", "PREFIX = 1", "def handler(job):\n    yield 1"))
    assert "the handler went from function to generator" in kind.cold
    assert compare(base, export("e", "PREFIX = 1", plain_handler(1))).empty
    comment = compare(base, export("f", "# the model's prefix\nPREFIX = 1", plain_handler(1)))
    assert comment.cells == ["cell 2 [setup]"] and comment.cold == [], "a comment in a setup cell restarts nothing"


KERNEL = """
import sys, time
from pathlib import Path
from kit.ui.serving import LocalEndpoint
endpoint = LocalEndpoint(Path(sys.argv[1]))
assert endpoint.start(), endpoint.lines
print(endpoint.url, endpoint.process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie nobody reaped (the kernel that would reap it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_panels_endpoint_stops_when_the_kernel_dies(tmp_path, setup_log):
    """The Serve button's `kit serve` is the kernel's child: killing the kernel ends it and its workers."""
    import signal
    import subprocess
    import sys

    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(notebook)],
        env={**os.environ, "SETUP_LOG": str(setup_log)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url, pid = kernel.stdout.readline().split()
        answer = requests.post(f"{url}/v2/local/runsync", json={"input": {"x": 1}}, timeout=60).json()
        assert answer["output"]["version"] == 1
        kernel.kill()  # as a dead kernel: no atexit, no clean shutdown
        kernel.wait()
        deadline = time.monotonic() + 60
        while True:
            if not alive(int(pid)):
                break
            assert time.monotonic() < deadline, "kit serve outlived the kernel that started it"
            time.sleep(0.1)
        with pytest.raises(requests.ConnectionError):
            requests.post(f"{url}/v2/local/runsync", json={"input": {}}, timeout=10)
    finally:
        try:
            os.killpg(kernel.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_setup_that_fails_when_it_runs_is_reported_and_the_next_good_save_serves_again(tmp_path, setup_log):
    notebook = build_notebook(tmp_path / "worker.ipynb", cells(COUNTING_SETUP, plain_handler(1)))
    head = "import asyncio, os, time\nfrom pathlib import Path\n"
    with kit_serve(notebook, "--watch", env={"SETUP_LOG": str(setup_log)}) as served:
        assert runsync(served, {})["version"] == 1
        save(notebook, [head + COUNTING_SETUP + "\nraise RuntimeError('no GPU here')", None])  # exports fine, fails in the worker
        line = served.wait_for_line(r"^error: the worker exited", timeout=120)
        assert "RuntimeError: no GPU here" in line and "the workers start on the next good save" in line, line
        assert served.process.poll() is None, "kit serve --watch must wait for the next save"
        save(notebook, [head + COUNTING_SETUP.replace("setup-1", "setup-2"), None])
        answer_until(served, {}, lambda out: out["text"].startswith("setup-2 "))


def test_watch_needs_a_notebook(tmp_path):
    from conftest import run_kit

    notebook = build_notebook(tmp_path / "worker.ipynb", cells("X = 1", "def handler(job):\n    return X"))
    assert run_kit("export", notebook, "-o", tmp_path / "out").returncode == 0
    result = run_kit("serve", tmp_path / "out", "--watch", "--port", "0", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'out'}: --watch needs a notebook, not a worker directory — give the .ipynb file"
    ]
