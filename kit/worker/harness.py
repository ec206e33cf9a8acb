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
3. runs each job literal of kit.json through the SDK's own job runners
   (``rp_job.run_job``, what ``python handler.py --test_input`` calls, and
   ``rp_job.run_job_generator``, the streaming path of a real worker), judges
   it against what the test cell's direct call of ``handler(job)`` gave (the
   same output, or the same error: an error the test expects passes), then
   checks the result as RunPod carries it: JSON, and its size against the
   platform's limits;
4. when handler.py defines ``batch_handler(jobs)``, runs those jobs again all
   together as one batch, through the worker's own batching and ``run_job``,
   and checks each job's result the same way.

Exported cells run as ``__main__`` with ``sys.argv == ["handler.py"]``, as in
the worker and in Jupyter; ``progress_update`` calls are recorded and shown,
not posted (there is no queue).

The worker code never sees the kit: only this harness imports it.
"""

from __future__ import annotations
import __future__

import ast
import asyncio
import copy
import functools
import inspect
import io
import json
import os
import re
import reprlib
import sys
import time
import traceback
import types
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from kit import percent, platform, workerdir
from kit.percent import PercentCell, split_percent
from kit.test import events
from kit.test.events import Failure, Frame, Problem, Shown

MAX_CAPTURE = 20_000  # characters of output kept per cell or job
MAX_CHUNKS_SHOWN = 20
FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag

_preview = reprlib.Repr()
_preview.maxstring = 80
_preview.maxother = 80
_preview.maxlist = _preview.maxtuple = _preview.maxdict = 4
_preview.maxlevel = 3


def preview(value, limit: int = 160) -> str:
    text = _preview.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

    def __init__(self):
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


# --------------------------------------------------------------------------- locations


class SourceMap:
    """Maps lines of handler.py and tests.py back to notebook cells."""

    def __init__(self):
        self._files: dict[str, tuple[str, list]] = {}

    def add(self, path: Path, cells) -> None:
        self._files[str(path)] = (path.name, cells)

    def frame(self, filename: str, lineno: int, code: str | None) -> Frame | None:
        if filename not in self._files:
            return None
        name, cells = self._files[filename]
        where = Frame(file=name, file_line=lineno, code=(code or "").strip())
        for cell in reversed(cells):
            if cell.start_line <= lineno:
                where.cell, where.tag, where.line = cell.cell, cell.tag, lineno - cell.start_line + 1
                break
        return where

    def frames_of(self, error: BaseException) -> list[Frame]:
        """The frames of `error`'s traceback that are the user's code, outermost first."""
        found = []
        for entry in traceback.extract_tb(error.__traceback__):
            where = self.frame(entry.filename, entry.lineno, entry.line)
            if where:
                found.append(where)
        if isinstance(error, SyntaxError) and error.filename and error.lineno:
            where = self.frame(error.filename, error.lineno, error.text)
            if where:
                found.append(where)
        return found

    def frames_in_text(self, text: str) -> list[Frame]:
        """The same, from a traceback the SDK formatted as text."""
        found = []
        lines = text.splitlines()
        for number, line in enumerate(lines):
            match = re.match(r'\s*File "(.+)", line (\d+)', line)
            if match:
                code = lines[number + 1] if number + 1 < len(lines) else ""
                where = self.frame(match.group(1), int(match.group(2)), code)
                if where:
                    found.append(where)
        return found


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
        traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
    )


# --------------------------------------------------------------------------- 1. import


def import_worker(worker: Path, report: Report, sources: SourceMap):
    """Import handler.py as module `handler`, cell by cell. Returns the module, or None if it failed."""
    path = worker / "handler.py"
    text = path.read_text(encoding="utf-8")
    parsed = percent.parse(text)
    if parsed.cells:  # exported: the header holds comments and `from __future__` imports
        header, cells = parsed.header, parsed.cells
    else:  # a handler.py written by hand: one chunk
        header, cells = "", [PercentCell(None, "module", text, 1)]
    sources.add(path, cells)
    module = types.ModuleType("handler")
    module.__file__ = str(path)
    sys.modules["handler"] = module

    header_code = compile(header, str(path), "exec", dont_inherit=True)
    flags = header_code.co_flags & FUTURE_FLAGS
    # The header runs as in `python handler.py`: its `if __name__ == "__main__": import worker_loop`
    # imports the SDK before the setup cells (the cold start's "import runpod" row).
    module.__name__ = "__main__"
    started = time.perf_counter()
    with captured():
        exec(header_code, module.__dict__)
    header_seconds = time.perf_counter() - started
    if cells[0].tag != "module":  # exported: the start call is the footer, which is not run here
        run_as_main(module, path)
    else:  # by hand: its start call may run at import, so runpod comes first, its start recorded
        module.__name__ = "handler"
        header_seconds += record_start_calls()

    total = 0.0
    for cell in cells:
        with captured() as output:
            started = time.perf_counter()
            try:
                code = compile("\n" * (cell.start_line - 1) + cell.source, str(path), "exec", flags, dont_inherit=True)
                exec(code, module.__dict__)
                error = None
            except BaseException as raised:
                error = failure(raised, sources)
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
    handler = namespace.get("handler")
    if callable(handler):
        namespace["handler"] = direct_calls.wrap(handler)
    for cell in cells:
        shown = Shown()
        direct_calls.cell = cell.cell
        with captured() as output, progress.capturing() as updates:
            started = time.perf_counter()
            try:
                value = run_cell(path, cell, namespace, loop)
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
        elif not _asserts(cell.source):
            direct_calls.forget(cell.cell, returned_errors_only=True)  # nothing checked the {"error": ...} it got
    if callable(handler) and getattr(namespace.get("handler"), "__wrapped__", None) is handler:
        namespace["handler"] = handler  # unless a test rebound it


VALUE_NAME = "__kit_cell_value__"


def run_cell(path: Path, cell, namespace: dict, loop):
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


# --------------------------------------------------------------------------- direct calls


class DirectCalls:
    """What the test cells' own calls of `handler(job)` gave, by job.

    The SDK run of a job literal must give what calling the handler directly
    gave in the notebook: the same output, or the same error. A test that sends
    a bad job and asserts the error is an error path working as intended, not a
    failure of the worker.
    """

    def __init__(self):
        self.by_job: dict[str, dict] = {}
        self.cell: int | None = None

    def expected(self, job) -> dict | None:
        key = _job_key(job)
        return self.by_job.get(key) if key else None

    def forget(self, cell: int, returned_errors_only: bool = False) -> None:
        def kept(outcome: dict) -> bool:
            if outcome["cell"] != cell:
                return True
            return returned_errors_only and outcome.get("type") != "returned error"

        self.by_job = {key: outcome for key, outcome in self.by_job.items() if kept(outcome)}

    def _record(self, job, outcome: dict) -> None:
        key = _job_key(job)
        if key and key not in self.by_job:
            self.by_job[key] = {"cell": self.cell, **outcome}

    def _returned(self, job, value) -> None:
        try:
            value = copy.deepcopy(value)  # the test may change the result after the call
        except Exception:
            return
        if isinstance(value, dict) and value.get("error"):
            returned = platform.parse_sdk_error(value["error"])  # as job_error reads the SDK's copy of it
            self._record(job, {"kind": "error", "type": returned.type, "message": returned.message})
            return
        self._record(job, {"kind": "output", "value": value})

    def _raised(self, job, error: BaseException) -> None:
        if isinstance(error, Exception):  # what the SDK turns into a failed job
            self._record(job, {"kind": "error", "type": type(error).__name__, "message": str(error)})

    def wrap(self, handler):
        """`handler`, recording each call's outcome; of the same kind (sync, async, generator...)."""
        if inspect.isasyncgenfunction(handler):

            async def recorded(job, *args, **kwargs):
                chunks = []
                try:
                    async for chunk in handler(job, *args, **kwargs):
                        chunks.append(chunk)
                        yield chunk
                except Exception as error:
                    self._raised(job, error)
                    raise
                self._returned(job, chunks)

        elif inspect.isgeneratorfunction(handler):

            def recorded(job, *args, **kwargs):
                chunks = []
                try:
                    for chunk in handler(job, *args, **kwargs):
                        chunks.append(chunk)
                        yield chunk
                except Exception as error:
                    self._raised(job, error)
                    raise
                self._returned(job, chunks)

        elif inspect.iscoroutinefunction(handler):

            async def recorded(job, *args, **kwargs):
                try:
                    value = await handler(job, *args, **kwargs)
                except Exception as error:
                    self._raised(job, error)
                    raise
                self._returned(job, value)
                return value

        else:

            def recorded(job, *args, **kwargs):
                try:
                    value = handler(job, *args, **kwargs)
                except Exception as error:
                    self._raised(job, error)
                    raise
                if not inspect.isawaitable(value):
                    self._returned(job, value)
                return value

        return functools.wraps(handler)(recorded)


def _asserts(source: str) -> bool:
    """Whether a test cell checks anything: a returned {"error": ...} is expected only then.

    (A raised exception is expected when the cell passed: something caught it.)
    """
    try:
        tree = compile(source, "<test>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.Assert) for node in ast.walk(tree))


def _job_key(job) -> str | None:
    if not isinstance(job, dict):
        return None
    try:
        return json.dumps(job, sort_keys=True)
    except (TypeError, ValueError):
        return None


def as_the_sdk_returns(value):
    """A handler's return value as the SDK's run_job passes it on (`error` and `refresh_worker` taken out)."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in ("error", "refresh_worker")}
        return value or None
    return value


def compare_with_direct(expected: dict | None, body: dict, error: Failure | None) -> tuple[Failure | None, list[Problem], bool]:
    """(error, problems, expected_error) for a job, judged against what its direct call gave.

    Without a direct call (the job literal's call did not run), a job must succeed.
    """
    if expected is None:
        return error, [], False
    where = f"the direct call in cell {expected['cell']}"
    if expected["kind"] == "error":
        said = (
            f"{expected['type']}: {expected['message']}"
            if expected["type"] != "returned error"
            else f"returned error: {expected['message']}"
        )
        if error is None:
            return Failure("not the expected error", f"{where} gave {said}, but through the SDK the job succeeded"), [], False
        same_type = expected["type"] == error.type.rsplit(".", 1)[-1]
        if same_type and str(expected["message"]).strip() == str(error.message).strip():
            return error, [], True
        return error, [Problem("fail", f"{where} gave {said}: the SDK run gave another error")], False
    if error is not None:
        return error, [Problem("fail", f"{where} returned a result: the job fails only through the SDK")], False
    direct = as_the_sdk_returns(expected["value"])
    try:
        same = bool(direct == body.get("output"))
    except Exception:
        return None, [], False
    if same:
        return None, [], False
    return (
        None,
        [
            Problem(
                "warn",
                f"the result differs from what {where} returned ({preview(direct, 80)}); a handler that samples or reads the clock differs on every call",
            )
        ],
        False,
    )


# --------------------------------------------------------------------------- progress updates


class ProgressUpdates:
    """`runpod.serverless.progress_update(job, progress)` during kit test: recorded, not posted.

    With no queue there is nowhere to post them (the SDK would log "Failed to
    return job results"); the report shows them under the cell or job instead.
    """

    def __init__(self):
        self.current: list | None = None

    def install(self) -> None:
        from runpod.serverless.modules import rp_progress

        updates = self

        class InlineThread:  # progress_update posts from a thread: record at once, in order
            def __init__(self, target=None, args=(), kwargs=None, daemon=None):
                self._args = args

            def start(self):
                job, progress = self._args
                if updates.current is not None:
                    updates.current.append(preview(progress))

        rp_progress.threading = types.SimpleNamespace(Thread=InlineThread)

    @contextmanager
    def capturing(self):
        captured = _Updates()
        self.current = captured.items
        try:
            yield captured
        finally:
            self.current = None


class _Updates:
    def __init__(self):
        self.items: list[str] = []

    def fields(self) -> dict:
        return {"progress": self.items[:MAX_CHUNKS_SHOWN], "progress_count": len(self.items)} if self.items else {}


direct_calls = DirectCalls()
progress = ProgressUpdates()


# --------------------------------------------------------------------------- 3. jobs


def run_jobs(worker: Path, handler, loop, report: Report, sources: SourceMap, aggregation: dict | None = None) -> None:
    from runpod.serverless.modules.rp_handler import is_generator

    streaming = is_generator(handler)
    unaggregated = aggregation_problem(aggregation) if streaming else None
    jobs = workerdir.jobs_to_test(worker)
    if jobs:
        report.emit(events.Phase(name="jobs", streaming=streaming))
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
                body, chunks = loop.run_until_complete(run_streaming(handler, job) if streaming else run_plain(handler, job))
                error = None
            except BaseException as raised:
                body, chunks, error = {}, None, failure(raised, sources)
            seconds = time.perf_counter() - started
        if error is None:
            error = job_error(body, sources)
        error, compared, expected_error = compare_with_direct(expected, body if chunks is None else {"output": chunks}, error)
        if unaggregated and error is None:
            body = {"output": []}  # what handle_job posts as the final output without return_aggregate_stream
            compared.append(unaggregated)
        size, problems = (None, []) if error else check_result(body)
        problems = compared + problems
        shown = Shown()
        if chunks is not None:
            shown = shown_chunks(chunks)
        elif "output" in body:
            shown = Shown(value=preview(body["output"]))
        report.emit(
            events.Job(
                **where,
                ok=(error is None or expected_error) and not any(p.level == "fail" for p in problems),
                seconds=seconds,
                size=size,
                error=error,
                problems=problems,
                output=output.getvalue(),
                shown=shown,
                expected_error=expected["cell"] if expected_error else None,
                **updates.fields(),
            )
        )


async def run_plain(handler, job):
    from runpod.serverless.modules.rp_job import run_job

    return await run_job(handler, job), None


async def run_streaming(handler, job):
    """What the worker loop's handle_job does with a generator handler (return_aggregate_stream on)."""
    from runpod.serverless.modules.rp_job import run_job_generator

    chunks = []
    async for streamed in run_job_generator(handler, job):
        if isinstance(streamed.get("output"), dict) and streamed["output"].get("error"):
            return {"error": str(streamed["output"]["error"])}, chunks
        if streamed.get("error"):
            return {"error": streamed["error"]}, chunks
        chunks.append(streamed["output"])
    return {"output": chunks}, chunks


def run_batch(worker: Path, batch_handler, loop, report: Report, sources: SourceMap) -> None:
    """The test jobs all together, as ONE batch: the worker's own batching (its batching.py) calling
    `batch_handler` once, each job through the SDK's run_job as the worker loop runs it."""
    entries = [
        entry for entry in workerdir.jobs_to_test(worker) if isinstance(entry["job"], dict) and entry["job"].get("input") is not None
    ]
    if not callable(batch_handler) or not entries:
        return
    try:
        import batching  # the copy exported beside handler.py (sys.path[0] is the worker directory)
    except ImportError:
        from kit.worker import batching
    from runpod.serverless.modules.rp_job import run_job

    jobs = []
    for number, entry in enumerate(entries, start=1):
        job = copy.deepcopy(entry["job"])
        job["id"] = f"{job.get('id', 'local_test')}-{number}"  # distinct ids, as a real batch has
        jobs.append(job)
    batcher = batching.Batcher(batch_handler, max_size=len(jobs), max_wait_ms=1000.0)  # full at once: no wait
    report.emit(events.Phase(name="batch", size=len(jobs)))

    async def together():
        return await asyncio.gather(*(run_job(batcher.handle, job) for job in jobs), return_exceptions=True)

    with captured() as output:
        started = time.perf_counter()
        bodies = loop.run_until_complete(together())
        seconds = time.perf_counter() - started
    for entry, job, body in zip(entries, jobs, bodies):
        error = failure(body, sources) if isinstance(body, BaseException) else job_error(body, sources)
        size, problems = (None, []) if error else check_result(body)
        shown = Shown(value=preview(body["output"])) if isinstance(body, dict) and "output" in body else Shown()
        report.emit(
            events.BatchJob(
                cell=entry.get("cell"),
                line=entry.get("line"),
                streaming=False,
                input=job.get("input"),
                ok=error is None and not any(p.level == "fail" for p in problems),
                seconds=seconds,
                size=size,
                error=error,
                problems=problems,
                output=output.getvalue(),
                shown=shown,
            )
        )


def job_error(body: dict, sources: SourceMap) -> Failure | None:
    """The failure the SDK recorded in a job's result, located in the notebook."""
    if "error" not in body:
        return None
    error = platform.parse_sdk_error(body["error"])
    where = sources.frames_in_text(error.traceback) if error.traceback else []
    return Failure(error.type, error.message, where, error.traceback or "")


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
    worker = Path.cwd()
    report.emit(events.Start(worker=str(worker), python=sys.version.split()[0], pid=os.getpid()))
    sources = SourceMap()
    module = import_worker(worker, report, sources)
    if module is None:
        report.emit(events.End())
        return 0
    handler = started_handler(module)  # what the worker loop gets, whatever the tests rebind later
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run_test_cells(worker, module, loop, report, sources)
    run_jobs(worker, handler, loop, report, sources, aggregation(worker, module))
    run_batch(worker, getattr(module, "batch_handler", None), loop, report, sources)
    report.emit(events.End())
    return 0


if __name__ == "__main__":
    # The harness's own stdout and stderr go to a log; the user's output travels inside the events.
    sys.exit(main(sys.argv))
