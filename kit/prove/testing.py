"""`kit test`: prove an exported worker before any image is built.

`run_worker_tests` runs the harness (`kit.prove.harness`) in a fresh interpreter
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
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kit.errors import KitError
from kit.build.export import worker_dir

DEFAULT_TIMEOUT = 1800.0  # seconds; a model download in a setup cell can be slow
# The SDK reads these at import (RUNPOD.md): no queue (so nothing can reach a real endpoint),
# no fitness checks that dial the internet, and only its errors in the captured output.
WORKER_ENV = {
    "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
    "RUNPOD_SKIP_GPU_CHECK": "true",
    "RUNPOD_LOG_LEVEL": "ERROR",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",  # leave the worker directory as exported
}
UNSET_ENV = ("RUNPOD_WEBHOOK_GET_JOB", "RUNPOD_WEBHOOK_POST_OUTPUT", "RUNPOD_WEBHOOK_POST_STREAM", "RUNPOD_WEBHOOK_PING", "RUNPOD_REALTIME_PORT", "RUNPOD_ENDPOINT_ID", "RUNPOD_DEBUG_LEVEL")
OUTPUT_LINES_SHOWN = 12


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class

    worker: str
    notebook: str | None = None
    events: list[dict] = field(default_factory=list)  # as the harness reported them, in order
    error: str | None = None  # the harness could not finish (crash, timeout)
    log: str = ""  # the worker process's own stdout/stderr, kept for `error`

    def _of(self, kind: str) -> list[dict]:
        return [_without(e, "event") for e in self.events if e["event"] == kind]

    @property
    def python(self) -> str | None:
        return next((e["python"] for e in self._of("start")), None)

    @property
    def cold_start(self) -> dict | None:
        return next(iter(self._of("cold_start")), None)

    @property
    def setup_cells(self) -> list[dict]:
        return self._of("setup_cell")

    @property
    def tests(self) -> list[dict]:
        return self._of("test")

    @property
    def jobs(self) -> list[dict]:
        return self._of("job")

    @property
    def batch_jobs(self) -> list[dict]:
        """The test jobs run again all together as one batch (a worker with batch_handler)."""
        return self._of("batch_job")

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and bool(self.cold_start and self.cold_start["ok"])
            and all(t["ok"] for t in self.tests)
            and all(j["ok"] for j in self.jobs)
            and all(j["ok"] for j in self.batch_jobs)
        )

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "notebook": self.notebook,
            "worker": self.worker,
            "python": self.python,
            "cold_start": self.cold_start,
            "setup_cells": self.setup_cells,
            "tests": self.tests,
            "jobs": self.jobs,
            "batch_jobs": self.batch_jobs,
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


def run_worker_tests(path: str | Path, *, timeout: float = DEFAULT_TIMEOUT, on_event: Callable[[dict, TestReport], None] | None = None) -> TestReport:
    """Run the harness on the worker directory `path`; `on_event(event, report)` sees each event as it arrives."""
    path = Path(path).resolve()
    report = TestReport(worker=str(path), notebook=_manifest(path).get("notebook"))
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV} | WORKER_ENV
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as log:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "kit.prove.harness", str(write_fd)],
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
        phase = {"last": None, "finished": False}

        def read_events() -> None:
            show = on_event
            with os.fdopen(read_fd, encoding="utf-8") as events:
                for line in events:
                    event = json.loads(line)
                    phase["last"] = event
                    if event["event"] == "end":
                        phase["finished"] = True
                    report.events.append(event)
                    if show:
                        try:
                            show(event, report)
                        except BrokenPipeError:
                            show = None  # whoever read our output left; keep draining the harness

        reader = threading.Thread(target=read_events, name="kit-test-events", daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(process)
        reader.join(timeout=10)
        log.seek(0)
        report.log = log.read().decode("utf-8", "replace")[-4000:]

    if timed_out:
        report.error = f"timed out after {timeout:g} s {_during(phase['last'])}"
    elif not phase["finished"]:
        report.error = f"the worker process exited with code {process.returncode} {_during(phase['last'])}"
    return report


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone
    process.wait()


def _during(last: dict | None) -> str:
    if last is None or last["event"] == "start":
        return "while importing handler.py"
    if last["event"] in ("setup_cell", "cold_start"):
        return "after the import, before or during the first test cell"
    if last["event"] == "test":
        return f"after test cell {last['cell']}"
    return "while running the jobs"


def _manifest(path: Path) -> dict:
    try:
        return json.loads((path / "kit.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_notebook_tests(target: str | Path, *, out_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT, on_event=None, on_export=None) -> TestReport:
    """Export `target` (a notebook; a worker directory is used as is) and test the worker."""
    with worker_dir(target, out_dir, on_export=on_export) as path:
        return run_worker_tests(path, timeout=timeout, on_event=on_event)


def run_tests(target, *, out_dir=None, json_path=None, timeout: float | None = None) -> int:
    """`kit test`: print the report as it happens; 0 if everything passed, else 1."""
    timeout = timeout or DEFAULT_TIMEOUT
    stream = sys.stderr if json_path == "-" else sys.stdout
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
    if json_path:
        _write_json(report.to_json(), json_path)
    return 0 if report.ok else 1


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
        raise KitError(f"cannot write the JSON report to {json_path}: {error.strerror}", "choose another --json path") from None


# --------------------------------------------------------------------------- formatting


def event_lines(event: dict, report: TestReport) -> list[str]:
    """The lines one harness event prints (live, as it arrives, or in `TestReport.lines`)."""
    kind = event["event"]
    if kind == "start":
        source = f" (exported from {report.notebook})" if report.notebook else ""
        return [f"kit test: {report.worker}{source}", f"cold start (python {event['python']}, fresh process, cwd = the worker directory):"]
    if kind == "setup_cell":
        if event["ok"]:
            return [_row("", _cell_name(event), event["seconds"])]
        return [_row("FAIL", _cell_name(event), event["seconds"], "the worker fails to start")] + _failure_lines(event["error"], report) + _output_lines(event["output"])
    if kind == "cold_start":
        if not event["ok"]:
            return _failure_lines(event["error"], report) if event.get("error") else []
        return [_row("", "import runpod", event["runpod_import_seconds"]), _row("", "total", event["seconds"])]
    if kind == "phase" and event["name"] == "tests":
        return ["test cells, in the worker's namespace:"]
    if kind == "phase" and event["name"] == "jobs":
        runner = "rp_job.run_job_generator, streamed as a real worker does" if event["streaming"] else "rp_job.run_job, as `python handler.py --test_input` runs it"
        return [f"jobs through the runpod SDK ({runner}):"]
    if kind == "phase" and event["name"] == "batch":
        return [f"the same jobs all together, as one batch of {event['size']} (batch_handler called once, each job through rp_job.run_job):"]
    if kind == "batch_job":
        return event_lines({**event, "event": "job"}, report)
    if kind == "test":
        lines = [_row("PASS" if event["ok"] else "FAIL", _cell_name(event), event["seconds"])]
        lines += _output_lines(event["output"]) + _value_lines(event)
        if not event["ok"]:
            lines += _failure_lines(event["error"], report)
        return lines
    if kind == "job":
        status = "PASS" if event["ok"] else "FAIL"
        if event["ok"] and any(p["level"] == "warn" for p in event["problems"]):
            status = "WARN"
        where = f"cell {event['cell']}, line {event['line']}" if event.get("cell") else "test_input.json"
        size = f"result {_size(event['size'])}" if event.get("size") is not None else ""
        lines = [_row(status, f"job from {where}", event["seconds"], size), f"{INDENT}input {event['input']}"]
        lines += _value_lines(event)
        if event.get("error"):
            lines += _failure_lines(event["error"], report)
        for problem in event["problems"]:
            lines.append(f"{INDENT}{problem['level']}: {problem['message']}")
            if problem.get("hint"):
                lines.append(f"{INDENT}hint: {problem['hint']}")
        return lines
    return []


INDENT = " " * 7


def _row(status: str, label: str, seconds: float, extra: str = "") -> str:
    return f"  {status:<4} {label:<32}{_seconds(seconds):>10}  {extra}".rstrip()


def summary_lines(report: TestReport) -> list[str]:
    lines = []
    if report.error:
        lines.append(f"error: {report.error}")
        if report.log.strip():
            lines.append("  last output of the worker process:")
            lines += ["    " + line for line in report.log.strip().splitlines()[-OUTPUT_LINES_SHOWN:]]
    if report.cold_start and report.cold_start["ok"] and not report.tests:
        lines.append("note: no `test` cells, so only the import was checked")
    if report.cold_start and report.cold_start["ok"] and not report.jobs:
        lines.append("note: no job literal such as handler({\"input\": {...}}) in a test cell, so no job ran through the SDK")
    counts = []
    for name, items in (("test cell", report.tests), ("job", report.jobs), ("batched job", report.batch_jobs)):
        if items:
            failed = sum(not item["ok"] for item in items)
            counts.append(f"{len(items) - failed}/{len(items)} {name}s passed")
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"{verdict}: " + (", ".join(counts) if counts else ("only the import was checked" if report.ok else "nothing ran")))
    return lines


def _cell_name(event: dict) -> str:
    if event.get("cell") is None:
        return "handler.py"
    return f"cell {event['cell']} [{event['tag']}]"


def _failure_lines(error: dict, report: TestReport) -> list[str]:
    message = f"{error['type']}: {error['message']}" if error["message"] else error["type"]
    lines = [f"{INDENT}{message}"]
    frames = error["where"]
    if frames:
        lines.append(f"{INDENT}at {_location(frames[-1], report)}")
        if len(frames) > 1 and frames[0].get("cell") != frames[-1].get("cell"):
            lines.append(f"{INDENT}called from {_location(frames[0], report)}")
    return lines


def _location(frame: dict, report: TestReport) -> str:
    if frame.get("cell") is None:
        where = f"{frame['file']}, line {frame['file_line']}"
    else:
        notebook = report.notebook or "notebook"
        where = f"{notebook} cell {frame['cell']}, line {frame['line']} ({frame['file']}:{frame['file_line']})"
    return f"{where}: {frame['code']}" if frame["code"] else where


def _output_lines(output: str) -> list[str]:
    lines = output.rstrip().splitlines()
    if not lines:
        return []
    shown = [f"{INDENT}| " + line for line in lines[:OUTPUT_LINES_SHOWN]]
    if len(lines) > OUTPUT_LINES_SHOWN:
        shown.append(f"{INDENT}| ... {len(lines) - OUTPUT_LINES_SHOWN} more lines (see --json)")
    return shown


def _value_lines(event: dict) -> list[str]:
    if "chunks" in event:
        lines = [f"{INDENT}{event['chunk_count']} chunks:"]
        lines += [f"{INDENT}  [{i}] {chunk}" for i, chunk in enumerate(event["chunks"])]
        if event["chunk_count"] > len(event["chunks"]):
            lines.append(f"{INDENT}  ... {event['chunk_count'] - len(event['chunks'])} more")
        return lines
    if "value" in event:
        return [f"{INDENT}-> {event['value']}"]
    return []


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def _size(size: int) -> str:
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    if size >= 1000:
        return f"{size / 1000:.1f} KB"
    return f"{size} B"
