"""The `kit test` harness, run in a fresh interpreter whose working directory is the worker.

`kit.prove.testing` starts it as ``python -m kit.prove.harness FD`` (so the worker
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
   ``rp_job.run_job_generator``, the streaming path of a real worker), then
   checks the result as RunPod carries it: JSON, and its size against the
   platform's limits.

The worker code never sees the kit: only this harness imports it.
"""

from __future__ import annotations
import __future__

import ast
import asyncio
import copy
import inspect
import io
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
from kit.prove import events
from kit.prove.events import Failure, Frame, Problem, Shown

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

    def emit(self, event: events.Event) -> None:
        self._stream.write(events.encode(event))
        self._stream.flush()


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
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises is still the user's failure
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
    # The header runs as in `python handler.py`: when the setup imports runpod itself, the
    # header's `if __name__ == "__main__": import worker_loop` imports the SDK first.
    module.__name__ = "__main__"
    started = time.perf_counter()
    with captured():
        exec(header_code, module.__dict__)
    header_seconds = time.perf_counter() - started
    module.__name__ = "handler"

    total = 0.0
    for cell in cells:
        with captured() as output:
            started = time.perf_counter()
            try:
                code = compile("\n" * (cell.start_line - 1) + cell.source, str(path), "exec", flags, dont_inherit=True)
                exec(code, module.__dict__)
                error = None
            except BaseException as raised:  # noqa: BLE001 - SystemExit in setup is the user's failure too
                error = failure(raised, sources)
            seconds = time.perf_counter() - started
        total += seconds
        report.emit(events.SetupCell(cell=cell.cell, tag=cell.tag, seconds=seconds, ok=error is None, output=output.getvalue(), error=error))
        if error:
            report.emit(events.ColdStart(ok=False, seconds=total))
            return None
    if not callable(getattr(module, "handler", None)):
        report.emit(events.ColdStart(ok=False, seconds=total, error=Failure("NameError", "handler.py defines no callable `handler`")))
        return None

    # A real worker imports the SDK after the setup, the way handler.py's start block does: through
    # the exported worker_loop.py (runpod without its CPU probe), or runpod itself when there is none.
    started = time.perf_counter()
    with captured():
        imported = import_sdk_as_the_worker_does(worker)
    runpod_seconds = header_seconds + time.perf_counter() - started
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
    for cell in cells:
        shown = Shown()
        with captured() as output:
            started = time.perf_counter()
            try:
                value = run_cell(path, cell, namespace, loop)
                shown = show(value, loop)
                error = None
            except BaseException as raised:  # noqa: BLE001 - a test calling sys.exit() fails that test
                error = failure(raised, sources)
            seconds = time.perf_counter() - started
        report.emit(events.TestCell(cell=cell.cell, tag=cell.tag, seconds=seconds, ok=error is None, output=output.getvalue(), error=error, shown=shown))


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
    result = eval(code, namespace)  # noqa: S307 - running the user's own test cell is the point
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


def run_jobs(worker: Path, handler, loop, report: Report, sources: SourceMap) -> None:
    from runpod.serverless.modules.rp_handler import is_generator

    streaming = is_generator(handler)
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
        with captured() as output:
            started = time.perf_counter()
            try:
                body, chunks = loop.run_until_complete(run_streaming(handler, job) if streaming else run_plain(handler, job))
                error = None
            except BaseException as raised:  # noqa: BLE001 - SystemExit/KeyboardInterrupt escape the SDK's own catch
                body, chunks, error = {}, None, failure(raised, sources)
            seconds = time.perf_counter() - started
        if error is None:
            error = job_error(body, sources)
        size, problems = (None, []) if error else check_result(body)
        shown = Shown()
        if chunks is not None:
            shown = shown_chunks(chunks)
        elif "output" in body:
            shown = Shown(value=preview(body["output"]))
        report.emit(
            events.Job(
                **where,
                ok=error is None and not any(p.level == "fail" for p in problems),
                seconds=seconds,
                size=size,
                error=error,
                problems=problems,
                output=output.getvalue(),
                shown=shown,
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
        problems.append(Problem("warn", "the result holds NaN or Infinity, which is not valid JSON for most clients", "replace them with None"))
    return check.size, problems


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    report = Report(int(argv[1]))
    worker = Path.cwd()
    report.emit(events.Start(worker=str(worker), python=sys.version.split()[0], pid=os.getpid()))
    sources = SourceMap()
    module = import_worker(worker, report, sources)
    if module is None:
        report.emit(events.End())
        return 0
    handler = module.handler  # what the worker loop gets, whatever the tests rebind later
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run_test_cells(worker, module, loop, report, sources)
    run_jobs(worker, handler, loop, report, sources)
    report.emit(events.End())
    return 0


if __name__ == "__main__":
    # The harness's own stdout and stderr go to a log; the user's output travels inside the events.
    sys.exit(main(sys.argv))
