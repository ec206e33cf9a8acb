"""The `kit test` harness, run in a fresh interpreter whose working directory is the worker.

`kit.test.run` starts it as ``python -m kit.worker.harness FD`` (so the worker
directory is ``sys.path[0]``, as for ``python handler.py``) and reads its
report: one JSON object per line on file descriptor FD. The user's own output
is captured per cell and per job and sent inside those events, so nothing the
worker prints can be mistaken for the report.

What it does, in order:

1. imports handler.py as the module ``handler``, one ``# %% cell N [tag]``
   chunk at a time (compiled with handler.py's name and line numbers, so
   tracebacks point into handler.py and map back to notebook cells), timing
   each: the worker's cold start;
2. runs each test cell of tests.py in that module's namespace, as the notebook
   runs it (top-level ``await``; a generator left as the cell's value is
   iterated and its chunks shown);
3. runs each job literal of kit.json, one after another, through the SDK's
   own per-job path (``JobScaler.handle_job``: ``rp_job.run_job`` or
   ``run_job_generator``, the result posted, the SDK's per-job state cleared;
   see `kit.worker.sdk_jobs`), judges it against what the test cell's direct
   call of ``handler(job)`` gave (the same output, or the same error: an error
   the test expects passes), then checks the result as RunPod carries it:
   JSON, and its size against the platform's limits;
4. when handler.py defines ``batch_handler(jobs)``, runs those jobs again all
   together as one batch, through the worker's own batching and the same
   per-job path, and checks each job's result the same way.

Exported cells run as ``__main__`` with ``sys.argv == ["handler.py"]``, as in
the worker and in Jupyter; ``progress_update`` calls are recorded and shown,
not posted (there is no queue).

The worker code never sees the kit: only this harness imports it.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import inspect
import io
import os
import signal
import sys
import time
import traceback
import types
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from kit import platform, processes, workerdir
from kit.percent import split_percent
from kit.test import events
from kit.test.events import Failure, Problem, Shown
from kit.worker import loader, sdk_jobs
from kit.worker.direct_calls import DirectCalls, as_the_sdk_returns, asserts, compare_with_direct, preview
from kit.worker.loader import SourceMap, WorkerSource
from kit.workerdir import HandlerKind

MAX_CAPTURE = 20_000  # characters of output kept per cell or job
MAX_CHUNKS_SHOWN = 20

# --------------------------------------------------------------------------- report


class Report:
    def __init__(self, fd: int):
        self._stream = os.fdopen(fd, "w", encoding="utf-8")
        # Only this process writes events. A process the handler starts must not hold the pipe
        # open, or `kit test` would wait for it: exec'd ones do not inherit it, forked ones
        # (a daemon that calls setsid() escapes the process group we kill) get /dev/null instead.
        os.set_inheritable(fd, False)
        os.register_at_fork(after_in_child=lambda: _detach(fd))

    def emit(self, event: events.Event) -> None:
        self._stream.write(events.encode(event))
        self._stream.flush()


def _detach(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd, inheritable=False)
    os.close(null)


class BoundedText(io.TextIOBase):
    """A text sink that keeps the first MAX_CAPTURE characters (a 25 MB print must not travel)."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = MAX_CAPTURE - self._kept
        if room > 0:
            self._parts.append(text[:room])
            self._kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def getvalue(self) -> str:
        text = "".join(self._parts)
        if self.dropped:
            text += f"\n[... {self.dropped} more characters not kept]\n"
        return text


@contextmanager
def captured():
    sink = BoundedText()
    with redirect_stdout(sink), redirect_stderr(sink):
        yield sink


def failure(error: BaseException, sources: SourceMap) -> Failure:
    try:
        message = str(error)
    except Exception:
        message = f"<{type(error).__name__} whose str() raised>"
    frames = sources.frames_of(error)
    if isinstance(error, AssertionError) and not message and frames:
        message = frames[-1].code  # a bare `assert x == y`: the statement is the message
    return Failure(
        type=type(error).__name__,
        message=message,
        where=frames,
        traceback=sources.mapped_text("".join(traceback.format_exception(type(error), error, error.__traceback__))),
    )


# --------------------------------------------------------------------------- 1. import


def import_worker(worker: Path, report: Report, sources: SourceMap):
    """Import handler.py as module `handler`, cell by cell. Returns the module, or None if it failed."""
    source = WorkerSource.read(worker / workerdir.HANDLER)
    path, cells = source.path, source.cells
    sources.add(path, cells)
    module = types.ModuleType("handler")
    module.__file__ = str(path)
    sys.modules["handler"] = module

    # The header runs as in `python handler.py`: its `if __name__ == "__main__": import worker_loop`
    # imports the SDK before the setup cells (the cold start's "import runpod" row).
    module.__name__ = "__main__"
    started = time.perf_counter()
    with captured():
        flags = loader.run_header(source, module.__dict__)
    header_seconds = time.perf_counter() - started
    if source.exported:  # the start call is the footer, which is not run here
        run_as_main(module, path)
    else:  # by hand: its start call may run at import, so runpod comes first, its start recorded
        module.__name__ = "handler"
        header_seconds += record_start_calls()

    total = 0.0
    for cell in cells:
        with captured() as output:
            started = time.perf_counter()
            try:
                loader.run_cell(path, cell, module.__dict__, flags)
                error = None
            except BaseException as raised:
                error = failure(raised, sources)
                if isinstance(raised, ImportError):
                    error.hint = loader.missing_requirements_hint(worker)
            seconds = time.perf_counter() - started
        total += seconds
        report.emit(
            events.SetupCell(cell=cell.cell, tag=cell.tag, seconds=seconds, ok=error is None, output=output.getvalue(), error=error)
        )
        if error:
            report.emit(events.ColdStart(ok=False, seconds=total))
            return None
    if not callable(getattr(module, "handler", None)) and not START_CALLS:
        report.emit(events.ColdStart(ok=False, seconds=total, error=Failure("NameError", "handler.py defines no callable `handler`")))
        return None

    # Whatever the header did not import yet, the start block would: worker_loop.py (runpod without
    # its CPU probe), or runpod itself in a handler.py written by hand without one.
    report.emit(events.Phase(name="runpod_import"))
    started = time.perf_counter()
    with captured():
        imported = import_sdk_as_the_worker_does(worker)
    runpod_seconds = header_seconds + time.perf_counter() - started
    progress.install()
    report.emit(
        events.ColdStart(
            ok=True,
            seconds=total + runpod_seconds,
            setup_seconds=total,
            runpod_import_seconds=runpod_seconds,
            runpod_import=imported,
        )
    )
    return module


START_CALLS: list[dict] = []  # configs a hand-written handler.py passed to runpod.serverless.start


def record_start_calls() -> float:
    """Import runpod with its `serverless.start` replaced by a recorder; returns the import's seconds.

    A handler.py written by hand often calls `runpod.serverless.start({...})` at
    module level (RunPod's worker-template does): run for real, it would run
    test_input.json and exit. kit test runs the jobs itself, with the handler
    that call names.
    """
    started = time.perf_counter()
    with captured():
        import runpod.serverless
    seconds = time.perf_counter() - started

    def start(config):
        START_CALLS.append(config if isinstance(config, dict) else {})

    runpod.serverless.start = start
    return seconds


def run_as_main(module, path: Path) -> None:
    """Make the cells see what `python handler.py` (and Jupyter) gives them.

    The worker runs handler.py as `__main__` with `sys.argv == ["handler.py"]`, and a
    notebook's cells see `__name__ == "__main__"` too, so a setup cell that loads its
    model under `if __name__ == "__main__":` (as worker-gpt does) or parses
    `sys.argv` must run here as it does there. A handler.py written by hand is
    imported as a module: its `__main__` block is where it starts the worker loop.
    """
    module.__name__ = "__main__"
    sys.modules["__main__"] = module  # pickle and friends find the worker's functions where the worker has them
    sys.argv = [path.name]


def import_sdk_as_the_worker_does(worker: Path) -> str:
    """Import the SDK as handler.py's start block does; returns the module imported."""
    if (worker / "worker_loop.py").is_file():
        import worker_loop  # noqa: F401 - the worker directory is sys.path[0]

        return "worker_loop"
    import runpod.serverless  # noqa: F401

    return "runpod.serverless"


# --------------------------------------------------------------------------- 2. test cells


def run_test_cells(worker: Path, module, loop, report: Report, sources: SourceMap) -> None:
    path = worker / "tests.py"
    if not path.is_file():
        return
    cells = split_percent(path.read_text(encoding="utf-8"))
    sources.add(path, cells)
    namespace = module.__dict__
    if cells:
        report.emit(events.Phase(name="tests"))
    originals = {name: namespace[name] for name in ("handler", "batch_handler") if callable(namespace.get(name))}
    for name, original in originals.items():
        namespace[name] = direct_calls.wrap(original) if name == "handler" else direct_calls.wrap_batch(original)
    for cell in cells:
        shown = Shown()
        direct_calls.cell = cell.cell
        with captured() as output, progress.capturing() as updates:
            started = time.perf_counter()
            try:
                value = run_test_cell(path, cell, namespace, loop)
                shown = show(value, loop)
                error = None
            except BaseException as raised:
                error = failure(raised, sources)
            seconds = time.perf_counter() - started
        report.emit(
            events.TestCell(
                cell=cell.cell,
                tag=cell.tag,
                seconds=seconds,
                ok=error is None,
                output=output.getvalue(),
                error=error,
                shown=shown,
                **updates.fields(),
            )
        )
        if error:
            direct_calls.forget(cell.cell)  # a failed test expects nothing of its calls
        elif not asserts(cell.source):
            direct_calls.forget(cell.cell, returned_errors_only=True)  # nothing checked the {"error": ...} it got
    for name, original in originals.items():
        if getattr(namespace.get(name), "__wrapped__", None) is original:
            namespace[name] = original  # unless a test rebound it


VALUE_NAME = "__kit_cell_value__"


def run_test_cell(path: Path, cell, namespace: dict, loop):
    """Run one test cell as IPython would: top-level await allowed; returns the last expression's value."""
    source = "\n" * (cell.start_line - 1) + cell.source
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(source, str(path), "exec", flags | ast.PyCF_ONLY_AST, dont_inherit=True)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        assign = ast.Assign(targets=[ast.Name(VALUE_NAME, ast.Store())], value=last.value)
        tree.body[-1] = ast.fix_missing_locations(ast.copy_location(assign, last))
    code = compile(tree, str(path), "exec", flags, dont_inherit=True)
    namespace.pop(VALUE_NAME, None)
    result = eval(code, namespace)
    if code.co_flags & inspect.CO_COROUTINE:
        loop.run_until_complete(result)
    return namespace.pop(VALUE_NAME, None)


def show(value, loop) -> Shown:
    """What the notebook would show for a cell's value; generators are run to the end."""
    if inspect.isawaitable(value):
        value = loop.run_until_complete(value)
    if inspect.isasyncgen(value):
        value = loop.run_until_complete(_collect(value))
    elif inspect.isgenerator(value):
        value = list(value)
    else:
        return Shown() if value is None else Shown(value=preview(value))
    return shown_chunks(value)


def shown_chunks(chunks: list) -> Shown:
    return Shown(chunks=[preview(chunk) for chunk in chunks[:MAX_CHUNKS_SHOWN]], chunk_count=len(chunks))


async def _collect(agen) -> list:
    return [chunk async for chunk in agen]


# --------------------------------------------------------------------------- 3. jobs

direct_calls = DirectCalls(after_call=sdk_jobs.clear_per_job_state)
progress = sdk_jobs.ProgressUpdates()


def run_jobs(
    worker: Path, handler, loop, report: Report, sources: SourceMap, results: sdk_jobs.ResultSink, aggregation: dict | None = None
) -> None:
    """Each job literal, one after another, through the SDK's per-job path (see sdk_jobs)."""
    streaming = HandlerKind.of(handler).streaming
    unaggregated = aggregation_problem(aggregation) if streaming else None
    jobs = workerdir.jobs_to_test(worker)
    if jobs:
        report.emit(events.Phase(name="jobs", streaming=streaming))
    returned = sdk_jobs.Returned()
    config = {"handler": returned.wrap(handler), "return_aggregate_stream": bool(aggregation and aggregation["on"]), "rp_args": {}}
    runner = sdk_jobs.JobRunner(config, results)
    if jobs:
        loop.run_until_complete(runner.open())
    for entry in jobs:
        job = copy.deepcopy(entry["job"])
        job.setdefault("id", "local_test")
        where = {"cell": entry.get("cell"), "line": entry.get("line"), "streaming": streaming, "input": job.get("input")}
        if job.get("input") is None:  # what the SDK's local mode refuses too
            report.emit(events.Job(**where, ok=False, seconds=0.0, problems=[Problem("fail", "the job has no `input`")]))
            continue
        expected = direct_calls.expected(entry["job"])
        with captured() as output, progress.capturing() as updates:
            started = time.perf_counter()
            try:
                posted, error = loop.run_until_complete(runner.run(job)), None
            except BaseException as raised:
                posted, error = sdk_jobs.Posted(), failure(raised, sources)
            seconds = time.perf_counter() - started
        value = returned.take(job["id"])
        body, chunks = job_body(posted, value, streaming)
        error = error or job_error(posted.result or {}, sources)
        error, compared, expected_error = compare_with_direct(expected, {"output": chunks} if streaming else body, error)
        if unaggregated and error is None:
            compared.append(unaggregated)  # handle_job posted the output [] for the job
        report.emit(
            events.Job(
                **where,
                **judged(body, error, expected_error, compared + [Problem("fail", p) for p in posted.problems], posted),
                seconds=seconds,
                output=output.getvalue(),
                shown=shown_chunks(chunks or []) if streaming else Shown(value=preview(body["output"])) if "output" in body else Shown(),
                expected_error=expected["cell"] if expected and expected_error else None,
                **updates.fields(),
            )
        )
    loop.run_until_complete(runner.close())


def job_body(posted: sdk_jobs.Posted, value, streaming: bool) -> tuple[dict, list | None]:
    """(the job's result as the SDK posts it, the chunks), from the Python objects the handler gave:
    the checks see them even when the SDK could not serialise them to post."""
    if streaming:
        chunks = value if isinstance(value, list) else []
        unaggregated = isinstance(posted.result, dict) and posted.result.get("output") == []  # return_aggregate_stream off
        return {"output": [] if unaggregated else chunks}, chunks
    if posted.result is not None and "output" not in posted.result:
        return {}, None
    return {"output": as_the_sdk_returns(value)}, None


def judged(body: dict, error: Failure | None, expected_error: bool, problems: list[Problem], posted: sdk_jobs.Posted) -> dict:
    """ok, size, error and problems of a job, its result checked as RunPod carries it."""
    size, checked = (None, []) if error else check_result(body)
    problems = problems + checked
    if error is None and posted.result is None and not any(p.level == "fail" for p in problems):
        problems.append(Problem("fail", "the SDK posted no result for the job (its log line above says why)"))
    ok = (error is None or expected_error) and not any(p.level == "fail" for p in problems)
    return {"ok": ok, "size": size, "error": error, "problems": problems}


def run_batch(worker: Path, batch_handler, loop, report: Report, sources: SourceMap, results: sdk_jobs.ResultSink) -> None:
    """The test jobs all together, as ONE batch: the worker's own batching (its batching.py) calling
    `batch_handler` once, each job through the SDK's per-job path as the worker loop runs it."""
    entries = [
        entry for entry in workerdir.jobs_to_test(worker) if isinstance(entry["job"], dict) and entry["job"].get("input") is not None
    ]
    if not callable(batch_handler) or not entries:
        return
    try:
        import batching  # the copy exported beside handler.py (sys.path[0] is the worker directory)
    except ImportError:
        from kit.worker import batching

    jobs = []
    for number, entry in enumerate(entries, start=1):
        job = copy.deepcopy(entry["job"])
        job["id"] = f"{job.get('id', 'local_test')}-{number}"  # distinct ids, as a real batch has
        jobs.append(job)
    batcher = batching.Batcher(batch_handler, max_size=len(jobs), max_wait_ms=1000.0)  # full at once: no wait
    returned = sdk_jobs.Returned()
    runner = sdk_jobs.JobRunner({"handler": returned.wrap(batcher.handle), "rp_args": {}}, results)
    report.emit(events.Phase(name="batch", size=len(jobs)))
    loop.run_until_complete(runner.open())

    async def together():
        tasks = [await runner.start(job) for job in jobs]  # all taken before any runs, as a worker holding them
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.close()
        return [results.take(job["id"]) for job in jobs]

    with captured() as output:
        started = time.perf_counter()
        everything = loop.run_until_complete(together())
        seconds = time.perf_counter() - started
    for entry, job, posted in zip(entries, jobs, everything):
        body, _ = job_body(posted, returned.take(job["id"]), streaming=False)
        error, compared, expected_error = compare_with_direct(
            direct_calls.expected(entry["job"]), body, job_error(posted.result or {}, sources)
        )
        report.emit(
            events.BatchJob(
                cell=entry.get("cell"),
                line=entry.get("line"),
                streaming=False,
                input=job.get("input"),
                **judged(body, error, expected_error, compared + [Problem("fail", p) for p in posted.problems], posted),
                seconds=seconds,
                output=output.getvalue(),
                shown=Shown(value=preview(body["output"])) if "output" in body else Shown(),
                expected_error=(direct_calls.expected(entry["job"]) or {}).get("cell") if expected_error else None,
            )
        )


def job_error(body: dict, sources: SourceMap) -> Failure | None:
    """The failure the SDK recorded in a job's result, located in the notebook."""
    if "error" not in body:
        return None
    error = platform.parse_sdk_error(body["error"])
    where = sources.frames_in_text(error.traceback) if error.traceback else []
    return Failure(error.type, error.message, where, sources.mapped_text(error.traceback or ""))


def check_result(body: dict) -> tuple[int | None, list[Problem]]:
    """JSON and size checks on the body the worker posts to RunPod (`{"output": ...}`): (bytes, problems)."""
    output = body.get("output")
    check = platform.check_payload(output)
    problems = [] if check.level == "ok" else [Problem(check.level, check.message, check.hint)]
    if check.size is not None and not platform.is_finite(output):
        problems.append(
            Problem("warn", "the result holds NaN or Infinity, which is not valid JSON for most clients", "replace them with None")
        )
    return check.size, problems


# --------------------------------------------------------------------------- main


def aggregation(worker: Path, module) -> dict:
    """Whether handler.py's start passes return_aggregate_stream, and who decided it."""
    for config, source in (
        (getattr(module, "RUNPOD_CONFIG", None), "RUNPOD_CONFIG"),
        (START_CALLS[-1] if START_CALLS else None, "start call"),
    ):
        if isinstance(config, dict) and "return_aggregate_stream" in config:
            return {"on": bool(config["return_aggregate_stream"]), "set_by": source}
    manifest = workerdir.Manifest.read(worker)
    if manifest is None:
        return {"on": not START_CALLS, "set_by": "start call" if START_CALLS else None}  # by hand, under __main__: not known
    return {"on": manifest.streaming, "set_by": "export"}


def aggregation_problem(setting: dict | None) -> Problem | None:
    """What a generator handler's job gives through /runsync when its chunks are not aggregated."""
    if setting is None or setting["on"]:
        return None
    if setting["set_by"] == "export":
        return Problem(
            "fail",
            "handler.py does not aggregate this generator's chunks (the export could not tell `handler` is a generator), so /runsync and /status give the output []",
            'set RUNPOD_CONFIG = {"return_aggregate_stream": True} in a handler cell',
        )
    return Problem(
        "warn",
        f"return_aggregate_stream is off ({setting['set_by']}): /runsync and /status give the output []; clients read the chunks from /stream",
    )


def started_handler(module):
    """The function handler.py's start block passes to the SDK: RUNPOD_CONFIG's "handler" (or, by hand,
    the start call's) wins over `handler`."""
    for config in (getattr(module, "RUNPOD_CONFIG", None), *START_CALLS[-1:]):
        if isinstance(config, dict) and callable(config.get("handler")):
            return config["handler"]
    return module.handler


def main(argv: list[str]) -> int:
    report = Report(int(argv[1]))
    processes.become_subreaper()  # a daemon the worker starts stays ours to end (see finish)
    signal.signal(signal.SIGTERM, _end_on_sigterm)
    worker = Path.cwd()
    report.emit(events.Start(worker=str(worker), python=sys.version.split()[0], pid=os.getpid()))
    results = sdk_jobs.ResultSink()
    sdk_jobs.install(results)  # before the worker's code imports runpod, which reads the result URLs once
    sources = SourceMap()
    module = import_worker(worker, report, sources)
    if module is None:
        return finish(report)
    handler = started_handler(module)  # what the worker loop gets, whatever the tests rebind later
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run_test_cells(worker, module, loop, report, sources)
    results.serve()
    run_jobs(worker, handler, loop, report, sources, results, aggregation(worker, module))
    run_batch(worker, getattr(module, "batch_handler", None), loop, report, sources, results)
    return finish(report)


def _end_on_sigterm(signum: int, frame: object) -> None:
    """kit test timed out: end what the worker started before this process is killed with its group."""
    processes.end_descendants()
    os._exit(128 + signum)


def finish(report: Report) -> int:
    """End every process the worker started and left running (named in the End event), then say so."""
    report.emit(events.End(ended=processes.end_descendants()))
    return 0


if __name__ == "__main__":
    # The harness's own stdout and stderr go to a log; the user's output travels inside the events.
    sys.exit(main(sys.argv))
