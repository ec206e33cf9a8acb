"""`kit test`: prove an exported worker before any image is built.

`run_worker_tests` runs the harness (`kit.worker.harness`) in a fresh interpreter
with the worker directory as its working directory, and turns the events it
reports into a `TestReport`: the cold start (each setup cell timed), every
test cell (pass/fail, where in the notebook it failed) and every job literal
run through the SDK's own job runners, with its result checked as RunPod
would carry it. `run_tests` is the CLI front end (export first, print, exit
code); the notebook panel calls `run_notebook_tests` and shows `report.lines()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kit import platform, workerdir
from kit.errors import KitEnvironmentError, KitError
from kit.export.export import worker_dir
from kit.processes import kill_group
from kit.test import events
from kit.test.events import BatchJob, ColdStart, Event, Failure, Frame, Job, SetupCell, TestCell, what_it_gave

DEFAULT_TIMEOUT = 1800.0  # seconds; a model download in a setup cell can be slow
OUTPUT_LINES_SHOWN = 12
ENDING_GRACE = 3.0  # seconds a timed-out harness gets to end the worker's processes before it is killed


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class

    worker: str
    notebook: str | None = None
    events: list[Event] = field(default_factory=list)  # as the harness reported them, in order
    error: str | None = None  # the harness could not finish (crash, timeout, a bad event)
    log: str = ""  # the worker process's own stdout/stderr, kept for `error`

    def _of(self, kind: type[Event]) -> list:
        return [e for e in self.events if type(e) is kind]  # exactly: a BatchJob is not one of .jobs

    @property
    def python(self) -> str | None:
        return next((e.python for e in self._of(events.Start)), None)

    @property
    def cold_start(self) -> ColdStart | None:
        return next(iter(self._of(events.ColdStart)), None)

    @property
    def setup_cells(self) -> list[SetupCell]:
        return self._of(events.SetupCell)

    @property
    def tests(self) -> list[TestCell]:
        return self._of(events.TestCell)

    @property
    def jobs(self) -> list[Job]:
        return self._of(events.Job)

    @property
    def batch_jobs(self) -> list[BatchJob]:
        """The test jobs run again all together as one batch (a worker with batch_handler)."""
        return self._of(events.BatchJob)

    @property
    def ended(self) -> list[str]:
        """The processes the worker left running, which the harness ended ("PID (name)")."""
        return next((e.ended for e in self._of(events.End)), [])

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and bool(self.cold_start and self.cold_start.ok)
            and all(t.ok for t in self.tests)
            and all(j.ok for j in self.jobs)
            and all(j.ok for j in self.batch_jobs)
        )

    def to_json(self) -> dict:
        def plain(event: Event | None) -> dict | None:
            if event is None:
                return None
            data = _without(event.to_json(), "event")
            shown = data.pop("shown", None) or {}  # the report keeps value/chunks beside the other fields
            data.update({k: v for k, v in shown.items() if v is not None})
            return data

        return {
            "ok": self.ok,
            "notebook": self.notebook,
            "worker": self.worker,
            "python": self.python,
            "cold_start": plain(self.cold_start),
            "setup_cells": [plain(e) for e in self.setup_cells],
            "tests": [plain(e) for e in self.tests],
            "jobs": [plain(e) for e in self.jobs],
            "batch_jobs": [plain(e) for e in self.batch_jobs],
            "ended": self.ended,
            "error": self.error,
        }

    def lines(self) -> list[str]:
        """The whole human-readable report (what `kit test` prints)."""
        out = []
        for event in self.events:
            out += event_lines(event, self)
        return out + summary_lines(self)


def _without(event: dict, key: str) -> dict:
    return {k: v for k, v in event.items() if k != key}


# --------------------------------------------------------------------------- running


def run_worker_tests(
    path: str | Path, *, timeout: float = DEFAULT_TIMEOUT, on_event: Callable[[Event, TestReport], None] | None = None
) -> TestReport:
    """Run the harness on the worker directory `path`; `on_event(event, report)` sees each event as it arrives."""
    path = Path(path).resolve()
    manifest = workerdir.Manifest.read(path)
    report = TestReport(worker=str(path), notebook=manifest.notebook if manifest else None)
    # No queue (nothing can reach a real endpoint), only the SDK's errors in the captured output,
    # and no bytecode left in the worker directory.
    env = platform.worker_env({"PYTHONDONTWRITEBYTECODE": "1"}, log_level="ERROR")
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as log:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "kit.worker.harness", str(write_fd)],
                cwd=path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group: killed whole, whatever the worker started
            )
        finally:
            os.close(write_fd)
        phase: dict = {"last": None, "finished": False, "problems": []}

        def read_events() -> None:
            # Whatever happens here, keep reading to the end: a reader that stops leaves the
            # harness blocked on a full pipe until the timeout.
            show = on_event
            with os.fdopen(read_fd, encoding="utf-8", errors="replace") as stream:
                for line in stream:
                    try:
                        event = events.decode(line)
                    except events.BadEvent as error:
                        phase["problems"].append(str(error))
                        continue
                    phase["last"] = event
                    if isinstance(event, events.End):
                        phase["finished"] = True
                    report.events.append(event)
                    if show is None:
                        continue
                    try:
                        show(event, report)
                    except BrokenPipeError:
                        show = None  # whoever read our output left; keep draining the harness
                    except Exception as error:
                        phase["problems"].append(f"the on_event callback raised {type(error).__name__}: {error}")
                        show = None

        reader = threading.Thread(target=read_events, name="kit-test-events", daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            process.terminate()  # the harness ends what the worker started (daemons that left the group too)
            try:
                process.wait(timeout=ENDING_GRACE)
            except subprocess.TimeoutExpired:
                pass  # stuck outside Python: the group goes below all the same
        finally:
            kill_group(process)
        reader.join(timeout=10)
        log.seek(0)
        report.log = log.read().decode("utf-8", "replace")[-4000:]

    if timed_out:
        report.error = f"timed out after {timeout:g} s {_during(phase['last'], manifest)}"
    elif not phase["finished"]:
        report.error = f"the worker process exited with code {process.returncode} {_during(phase['last'], manifest)}"
    if phase["problems"]:
        report.error = "; ".join(([report.error] if report.error else []) + phase["problems"])
    return report


def _during(last: Event | None, manifest: workerdir.Manifest | None = None) -> str:
    """Where the harness was when it stopped reporting: the phase a timeout or crash hit."""
    exported = sorted(manifest.setup_cells + manifest.handler_cells) if manifest else []
    if last is None or isinstance(last, (events.Start, events.SetupCell)):
        done = last.cell if isinstance(last, events.SetupCell) else None
        following = [c for c in exported if done is None or c > done]
        if following:
            return f"while running cell {following[0]} of handler.py (the worker's cold start)"
        return "while importing handler.py (the worker's cold start)"
    if isinstance(last, events.Phase) and last.name == "runpod_import":
        return "during `import runpod` (the worker's cold start)"
    if isinstance(last, events.ColdStart) or (isinstance(last, events.Phase) and last.name == "tests"):
        return "during the first test cell"
    if isinstance(last, events.TestCell):
        return f"after test cell {last.cell}"
    return "while running the jobs"


def run_notebook_tests(
    target: str | Path, *, out_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT, on_event=None, on_export=None
) -> TestReport:
    """Export `target` (a notebook; a worker directory is used as is) and test the worker."""
    with worker_dir(target, out_dir, on_export=on_export) as path:
        return run_worker_tests(path, timeout=timeout, on_event=on_event)


def run_tests(target, *, out_dir=None, json_path=None, timeout: float | None = None) -> int:
    """`kit test`: print the report as it happens; 0 if everything passed, else 1."""
    timeout = timeout or DEFAULT_TIMEOUT
    stream = sys.stderr if json_path == "-" else sys.stdout
    from kit.test import hub as hub_tests

    repo = Path(target) if Path(target).is_dir() and hub_tests.has_hub_tests(Path(target)) else None
    if repo is not None:
        hub_tests.hub.read_repo(repo)  # a broken hub.json or tests.json: one line, before anything runs
    try:
        report = run_notebook_tests(
            target,
            out_dir=out_dir,
            timeout=timeout,
            on_event=lambda event, report: _print(event_lines(event, report), stream),
            on_export=lambda export: _print([f"warning: {w}" for w in export.warnings], stream),
        )
    except KitError as error:
        if json_path:
            _write_json({"ok": False, "notebook": str(target), "error": str(error)}, json_path)
        raise
    _print(summary_lines(report), stream)
    hub_ok, hub_json = True, None
    if repo is not None and not (report.cold_start and report.cold_start.ok):
        _print([f"hub tests: not run ({hub_tests.hub.TESTS}): the worker does not start"], stream)
        hub_ok = False
    elif repo is not None:
        _print([f"{hub_tests.hub.TESTS}: each test as a job through the local endpoint, as the Hub runs them"], stream)
        results = hub_tests.run_hub_tests(repo, say=lambda line: _print([line], stream))
        hub_ok = all(r.ok for r in results)
        passed = sum(r.ok for r in results)
        _print([f"hub tests: {passed} of {len(results)} passed"], stream)
        hub_json = [{**vars(r), "ok": r.ok} for r in results]
    if json_path:
        hub_part = {"ok": report.ok and hub_ok, "hub_tests": hub_json} if hub_json is not None else {}
        _write_json({**report.to_json(), **hub_part}, json_path)
    return 0 if report.ok and hub_ok else 1


def _print(lines: list[str], stream) -> None:
    for line in lines:
        print(line, file=stream, flush=True)


def _write_json(data: dict, json_path: str) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if json_path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(json_path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise KitEnvironmentError(f"cannot write the JSON report to {json_path}: {error.strerror}", "choose another --json path") from None


# --------------------------------------------------------------------------- formatting


def event_lines(event: Event, report: TestReport) -> list[str]:
    """The lines one harness event prints (live, as it arrives, or in `TestReport.lines`)."""
    if isinstance(event, events.Start):
        source = f" (exported from {report.notebook})" if report.notebook else ""
        return [f"kit test: {report.worker}{source}", f"cold start (python {event.python}, fresh process, cwd = the worker directory):"]
    if isinstance(event, events.SetupCell):
        if event.ok:
            return [_row("", _cell_name(event), event.seconds)]
        return (
            [_row("FAIL", _cell_name(event), event.seconds, "the worker fails to start")]
            + (_failure_lines(event.error, report) if event.error else [])
            + _output_lines(event.output)
        )
    if isinstance(event, events.ColdStart):
        if not event.ok:
            return _failure_lines(event.error, report) if event.error else []
        label = "import runpod" + (f" ({event.runpod_import})" if event.runpod_import else "")
        return [_row("", label, event.runpod_import_seconds or 0.0), _row("", "total", event.seconds)]
    if isinstance(event, events.Phase) and event.name == "tests":
        return ["test cells, in the worker's namespace:"]
    if isinstance(event, events.Phase) and event.name == "jobs":
        runner = "JobScaler.handle_job: rp_job.run_job_generator, streamed" if event.streaming else "JobScaler.handle_job: rp_job.run_job"
        return [f"jobs through the runpod SDK, one after another as its worker loop runs them ({runner}):"]
    if isinstance(event, events.Phase) and event.name == "batch":
        return [
            f"the same jobs all together, as one batch of {event.size} (batch_handler called once, each job through JobScaler.handle_job):"
        ]
    if isinstance(event, events.TestCell):
        lines = [_row("PASS" if event.ok else "FAIL", _cell_name(event), event.seconds)]
        lines += _output_lines(event.output) + _value_lines(event.shown) + _progress_lines(event)
        if not event.ok and event.error:
            lines += _failure_lines(event.error, report)
        return lines
    if isinstance(event, events.End) and event.ended:
        count = len(event.ended)
        return [f"ended {count} process{'' if count == 1 else 'es'} the worker left running: {', '.join(event.ended)}"]
    if isinstance(event, events.Job):
        status = "PASS" if event.ok else "FAIL"
        if event.ok and any(p.level == "warn" for p in event.problems):
            status = "WARN"
        where = f"cell {event.cell}, line {event.line}" if event.cell else "test_input.json"
        size = f"result {platform.format_size(event.size)}" if event.size is not None else ""
        lines = [_row(status, f"job from {where}", event.seconds, size), f"{INDENT}input {_json_preview(event.input)}"]
        lines += _value_lines(event.shown) + _progress_lines(event)
        if event.expected_error is not None and event.error:
            lines += _expected_error_lines(event)
        elif event.error:
            lines += _failure_lines(event.error, report)
        for problem in event.problems:
            lines.append(f"{INDENT}{problem.level}: {problem.message}")
            if problem.hint:
                lines.append(f"{INDENT}hint: {problem.hint}")
        return lines
    return []


def _json_preview(value, limit: int = 160) -> str:
    """A job's input as the client sent it: JSON, keys in their order, cut to one line."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


INDENT = " " * 7


def _expected_error_lines(event: events.Job) -> list[str]:
    """A job whose error is what its direct call in a test cell gave: the error path works."""
    error = event.error or Failure("error", "")
    said = what_it_gave(error.type, error.message)
    return [f"{INDENT}expected error: the direct call in cell {event.expected_error} {said} too"]


def _progress_lines(event: events.TestCell | events.Job) -> list[str]:
    lines = [f"{INDENT}progress_update: {update}" for update in event.progress]
    if event.progress_count > len(event.progress):
        lines.append(f"{INDENT}... {event.progress_count - len(event.progress)} more progress updates")
    return lines


def _row(status: str, label: str, seconds: float, extra: str = "") -> str:
    return f"  {status:<4} {label:<32}{_seconds(seconds):>10}  {extra}".rstrip()


def summary_lines(report: TestReport) -> list[str]:
    lines = []
    if report.error:
        lines.append(f"error: {report.error}")
        if report.log.strip():
            lines.append("  last output of the worker process:")
            lines += ["    " + line for line in report.log.strip().splitlines()[-OUTPUT_LINES_SHOWN:]]
    if report.cold_start and report.cold_start.ok and not report.tests:
        lines.append("note: no `test` cells, so only the import was checked")
    if report.cold_start and report.cold_start.ok and not report.jobs:
        lines.append('note: no job literal such as handler({"input": {...}}) in a test cell, so no job ran through the SDK')
    counts = []
    for name, items in (("test cell", report.tests), ("job", report.jobs), ("batched job", report.batch_jobs)):
        if items:
            failed = sum(not item.ok for item in items)
            counts.append(f"{len(items) - failed}/{len(items)} {name}s passed")
            expected_errors = sum(getattr(item, "expected_error", None) is not None for item in items)
            if expected_errors:
                counts[-1] += f" ({expected_errors} with the error its test expects)"
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"{verdict}: " + (", ".join(counts) if counts else ("only the import was checked" if report.ok else "nothing ran")))
    return lines


def _cell_name(event: events.SetupCell | events.TestCell) -> str:
    if event.cell is None:
        return "handler.py"
    return f"cell {event.cell} [{event.tag}]"


def _failure_lines(error: Failure, report: TestReport) -> list[str]:
    message = f"{error.type}: {error.message}" if error.message else error.type
    lines = [f"{INDENT}{message}"]
    frames = error.where
    if frames:
        lines.append(f"{INDENT}at {_location(frames[-1], report)}")
        if len(frames) > 1 and frames[0].cell != frames[-1].cell:
            lines.append(f"{INDENT}called from {_location(frames[0], report)}")
    if error.hint:
        lines.append(f"{INDENT}hint: {error.hint}")
    return lines


def _location(frame: Frame, report: TestReport) -> str:
    if frame.cell is None:
        where = f"{frame.file}, line {frame.file_line}"
    else:
        notebook = report.notebook or "notebook"
        where = f"{notebook} cell {frame.cell}, line {frame.line} ({frame.file}:{frame.file_line})"
    return f"{where}: {frame.code}" if frame.code else where


def _output_lines(output: str) -> list[str]:
    lines = output.rstrip().splitlines()
    if not lines:
        return []
    shown = [f"{INDENT}| " + line for line in lines[:OUTPUT_LINES_SHOWN]]
    if len(lines) > OUTPUT_LINES_SHOWN:
        shown.append(f"{INDENT}| ... {len(lines) - OUTPUT_LINES_SHOWN} more lines (see --json)")
    return shown


def _value_lines(shown: events.Shown) -> list[str]:
    if shown.chunks is not None:
        count = shown.chunk_count or 0
        lines = [f"{INDENT}{count} chunk{'' if count == 1 else 's'}:"]
        lines += [f"{INDENT}  [{i}] {chunk}" for i, chunk in enumerate(shown.chunks)]
        if count > len(shown.chunks):
            lines.append(f"{INDENT}  ... {count - len(shown.chunks)} more")
        return lines
    if shown.value is not None:
        return [f"{INDENT}-> {shown.value}"]
    return []


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"
