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
   platform's limits;
4. when handler.py defines ``batch_handler(jobs)``, runs those jobs again all
   together as one batch, through the worker's own batching and ``run_job``,
   and checks each job's result the same way.

The worker code never sees the kit: only this harness imports it.
"""

from __future__ import annotations

import __future__
import ast
import asyncio
import copy
import inspect
import io
import json
import math
import os
import re
import reprlib
import sys
import time
import traceback
import types
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from kit.build.notebook import PercentCell, split_percent

MB = 1_000_000
RUNSYNC_LIMIT = 20 * MB  # larger results are dropped by the platform: the job ends without output
RUN_LIMIT = 10 * MB  # larger results cannot be fetched from /run + /status
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

    def emit(self, event: str, **fields) -> None:
        self._stream.write(json.dumps({"event": event, **fields}, default=repr) + "\n")
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

    def frame(self, filename: str, lineno: int, code: str | None) -> dict | None:
        if filename not in self._files:
            return None
        name, cells = self._files[filename]
        where = {"file": name, "file_line": lineno, "code": (code or "").strip()}
        for cell in reversed(cells):
            if cell.start_line <= lineno:
                where.update(cell=cell.cell, tag=cell.tag, line=lineno - cell.start_line + 1)
                break
        return where

    def frames_of(self, error: BaseException) -> list[dict]:
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

    def frames_in_text(self, text: str) -> list[dict]:
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


def failure(error: BaseException, sources: SourceMap) -> dict:
    message = str(error)
    frames = sources.frames_of(error)
    if isinstance(error, AssertionError) and not message and frames:
        message = frames[-1]["code"]  # a bare `assert x == y`: the statement is the message
    return {
        "type": type(error).__name__,
        "message": message,
        "where": frames,
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


# --------------------------------------------------------------------------- 1. import


def import_worker(worker: Path, report: Report, sources: SourceMap):
    """Import handler.py as module `handler`, cell by cell. Returns the module, or None if it failed."""
    path = worker / "handler.py"
    text = path.read_text(encoding="utf-8")
    cells = split_percent(text)
    if cells:  # exported: the lines before the first marker are comments and `from __future__` imports
        header = "".join(text.splitlines(keepends=True)[: cells[0].start_line - 2])
    else:  # a handler.py written by hand: one chunk
        header, cells = "", [PercentCell(None, "module", text, 1)]
    sources.add(path, cells)
    module = types.ModuleType("handler")
    module.__file__ = str(path)
    sys.modules["handler"] = module

    header_code = compile(header, str(path), "exec", dont_inherit=True)
    flags = header_code.co_flags & FUTURE_FLAGS
    exec(header_code, module.__dict__)

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
        report.emit("setup_cell", cell=cell.cell, tag=cell.tag, seconds=seconds, ok=error is None, output=output.getvalue(), error=error)
        if error:
            report.emit("cold_start", ok=False, seconds=total)
            return None
    if not callable(getattr(module, "handler", None)):
        report.emit("cold_start", ok=False, seconds=total, error={"type": "NameError", "message": "handler.py defines no callable `handler`", "where": []})
        return None

    # A real worker imports the SDK after the setup (handler.py's last lines): part of its cold start.
    started = time.perf_counter()
    with captured():
        import runpod.serverless  # noqa: F401
    runpod_seconds = time.perf_counter() - started
    report.emit("cold_start", ok=True, seconds=total + runpod_seconds, setup_seconds=total, runpod_import_seconds=runpod_seconds)
    return module


# --------------------------------------------------------------------------- 2. test cells


def run_test_cells(worker: Path, module, loop, report: Report, sources: SourceMap) -> None:
    path = worker / "tests.py"
    if not path.is_file():
        return
    cells = split_percent(path.read_text(encoding="utf-8"))
    sources.add(path, cells)
    namespace = module.__dict__
    if cells:
        report.emit("phase", name="tests")
    for cell in cells:
        shown: dict = {}
        with captured() as output:
            started = time.perf_counter()
            try:
                value = run_cell(path, cell, namespace, loop)
                shown = show(value, loop)
                error = None
            except BaseException as raised:  # noqa: BLE001 - a test calling sys.exit() fails that test
                error = failure(raised, sources)
            seconds = time.perf_counter() - started
        report.emit("test", cell=cell.cell, tag=cell.tag, seconds=seconds, ok=error is None, output=output.getvalue(), error=error, **shown)


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


def show(value, loop) -> dict:
    """What the notebook would show for a cell's value; generators are run to the end."""
    if inspect.isawaitable(value):
        value = loop.run_until_complete(value)
    if inspect.isasyncgen(value):
        value = loop.run_until_complete(_collect(value))
    elif inspect.isgenerator(value):
        value = list(value)
    else:
        return {} if value is None else {"value": preview(value)}
    return {"chunks": [preview(chunk) for chunk in value[:MAX_CHUNKS_SHOWN]], "chunk_count": len(value)}


async def _collect(agen) -> list:
    return [chunk async for chunk in agen]


# --------------------------------------------------------------------------- 3. jobs


def job_list(worker: Path) -> list[dict]:
    manifest = worker / "kit.json"
    if manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8")).get("jobs", [])
    test_input = worker / "test_input.json"
    if test_input.is_file():  # a worker directory written by hand
        return [{"cell": None, "line": None, "job": json.loads(test_input.read_text(encoding="utf-8"))}]
    return []


def run_jobs(worker: Path, handler, loop, report: Report, sources: SourceMap) -> None:
    from runpod.serverless.modules.rp_handler import is_generator

    streaming = is_generator(handler)
    jobs = job_list(worker)
    if jobs:
        report.emit("phase", name="jobs", streaming=streaming)
    for entry in jobs:
        job = copy.deepcopy(entry["job"])
        job.setdefault("id", "local_test")
        fields = {"cell": entry.get("cell"), "line": entry.get("line"), "streaming": streaming, "input": preview(job.get("input"))}
        if job.get("input") is None:  # what the SDK's local mode refuses too
            report.emit("job", **fields, ok=False, seconds=0.0, problems=[{"level": "fail", "message": "the job has no `input`"}])
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
        shown = {}
        if chunks is not None:
            shown = {"chunks": [preview(chunk) for chunk in chunks[:MAX_CHUNKS_SHOWN]], "chunk_count": len(chunks)}
        elif "output" in body:
            shown = {"value": preview(body["output"])}
        report.emit(
            "job",
            **fields,
            ok=error is None and not any(p["level"] == "fail" for p in problems),
            seconds=seconds,
            size=size,
            error=error,
            problems=problems,
            output=output.getvalue(),
            **shown,
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
    entries = [entry for entry in job_list(worker) if isinstance(entry["job"], dict) and entry["job"].get("input") is not None]
    if not callable(batch_handler) or not entries:
        return
    try:
        import batching  # the copy exported beside handler.py (sys.path[0] is the worker directory)
    except ImportError:
        from kit.templates import batching
    from runpod.serverless.modules.rp_job import run_job

    jobs = []
    for number, entry in enumerate(entries, start=1):
        job = copy.deepcopy(entry["job"])
        job["id"] = f"{job.get('id', 'local_test')}-{number}"  # distinct ids, as a real batch has
        jobs.append(job)
    batcher = batching.Batcher(batch_handler, max_size=len(jobs), max_wait_ms=1000.0)  # full at once: no wait
    report.emit("phase", name="batch", size=len(jobs))

    async def together():
        return await asyncio.gather(*(run_job(batcher.handle, job) for job in jobs), return_exceptions=True)

    with captured() as output:
        started = time.perf_counter()
        bodies = loop.run_until_complete(together())
        seconds = time.perf_counter() - started
    for entry, job, body in zip(entries, jobs, bodies):
        error = failure(body, sources) if isinstance(body, BaseException) else job_error(body, sources)
        size, problems = (None, []) if error else check_result(body)
        shown = {"value": preview(body["output"])} if isinstance(body, dict) and "output" in body else {}
        report.emit(
            "batch_job",
            cell=entry.get("cell"),
            line=entry.get("line"),
            input=preview(job.get("input")),
            ok=error is None and not any(p["level"] == "fail" for p in problems),
            seconds=seconds,
            size=size,
            error=error,
            problems=problems,
            output=output.getvalue(),
            **shown,
        )


def job_error(body: dict, sources: SourceMap) -> dict | None:
    """The failure the SDK recorded in a job's result, located in the notebook."""
    if "error" not in body:
        return None
    error = body["error"]
    if isinstance(error, str):
        try:
            info = json.loads(error)  # an exception, as run_job reports it
        except ValueError:
            info = None
        if isinstance(info, dict) and "error_traceback" in info:
            kind = re.sub(r"^<class '(?:builtins\.)?(.+)'>$", r"\1", info.get("error_type", "Exception"))
            return {"type": kind.rsplit(".", 1)[-1], "message": info.get("error_message", ""), "where": sources.frames_in_text(info["error_traceback"]), "traceback": info["error_traceback"]}
        if error.startswith("handler: ") and "\ntraceback: " in error:  # an exception in a generator
            message, _, trace = error[len("handler: ") :].partition("\ntraceback: ")
            kind = trace.strip().splitlines()[-1].split(":", 1)[0] if trace.strip() else "Exception"
            return {"type": kind, "message": message.strip(), "where": sources.frames_in_text(trace), "traceback": trace}
    return {"type": "returned error", "message": error if isinstance(error, str) else preview(error), "where": []}


def check_result(body: dict) -> tuple[int | None, list[dict]]:
    """JSON and size checks on the body the worker posts to RunPod (`{"output": ...}`): (bytes, problems)."""
    try:
        text = json.dumps(body, ensure_ascii=False)  # as rp_http serialises it
    except (TypeError, ValueError) as error:
        path, value = first_non_json(body.get("output"), "output")
        if value is None:
            return None, [{"level": "fail", "message": f"the result is not JSON: {error}", "hint": HINT_JSON}]
        kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
        return None, [{"level": "fail", "message": f"the result is not JSON: {path} is a {kind}", "hint": json_hint(value)}]
    size = len(text.encode("utf-8"))
    problems = []
    megabytes = f"{size / MB:.1f} MB"
    if size > RUNSYNC_LIMIT:
        problems.append(
            {
                "level": "fail",
                "message": f"the result is {megabytes}, over RunPod's 20 MB limit (/runsync): the platform drops it and the client gets the job without output",
                "hint": HINT_SIZE,
            }
        )
    elif size > RUN_LIMIT:
        problems.append(
            {
                "level": "warn",
                "message": f"the result is {megabytes}, over RunPod's 10 MB limit for /run: clients must call /runsync",
                "hint": HINT_SIZE,
            }
        )
    if not _finite(body.get("output")):
        problems.append({"level": "warn", "message": "the result holds NaN or Infinity, which is not valid JSON for most clients", "hint": "replace them with None"})
    return size, problems


HINT_JSON = "return only dicts, lists, strings, numbers, booleans and None: RunPod carries results as JSON"
HINT_SIZE = "upload large results (a bucket, the network volume) and return their URL or path instead"


def json_hint(value) -> str:
    module = type(value).__module__.split(".")[0]
    if module in ("numpy", "torch", "tensorflow", "jax", "jaxlib", "cupy"):
        return "convert it with .tolist() (a tensor: .cpu().tolist(); a scalar: .item())"
    if isinstance(value, (bytes, bytearray)):
        return "encode bytes as text, e.g. base64.b64encode(data).decode()"
    if isinstance(value, (set, frozenset)):
        return "return a list instead: sorted(...) or list(...)"
    if hasattr(value, "isoformat"):
        return "return value.isoformat()"
    return HINT_JSON


def first_non_json(value, path: str):
    """The first value inside `value` that json.dumps cannot write, with its path."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return path, None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                return f"a key of {path}", key
            found = first_non_json(item, f"{path}[{key!r}]")
            if found[1] is not None:
                return found
        return path, None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = first_non_json(item, f"{path}[{index}]")
            if found[1] is not None:
                return found
        return path, None
    return path, value


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    report = Report(int(argv[1]))
    worker = Path.cwd()
    report.emit("start", worker=str(worker), python=sys.version.split()[0], pid=os.getpid())
    sources = SourceMap()
    module = import_worker(worker, report, sources)
    if module is None:
        report.emit("end")
        return 0
    handler = module.handler  # what the worker loop gets, whatever the tests rebind later
    batch_handler = getattr(module, "batch_handler", None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    run_test_cells(worker, module, loop, report, sources)
    run_jobs(worker, handler, loop, report, sources)
    run_batch(worker, batch_handler, loop, report, sources)
    report.emit("end")
    return 0


if __name__ == "__main__":
    # The harness's own stdout and stderr go to a log; the user's output travels inside the events.
    sys.exit(main(sys.argv))
