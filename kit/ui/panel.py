"""The notebook panel: try the handler, export the worker and run `kit test`
without leaving the notebook.

`kit.panel()` in an untagged cell shows an ipywidgets panel bound to the
notebook it runs in and to the kernel's namespace: **Run** calls the
`handler` the kernel defined (plain, async or generator; a list of jobs is one
`batch_handler(jobs)` call, and with only `batch_handler` a job runs as a batch
of one, as in the exported worker), **Export** calls
`kit.build.export.export_notebook` in the kernel (so requirements are inferred from
the kernel's own environment) and **Test** runs `python -m kit test` in a
subprocess. Each runs in a thread and updates the widgets from there, so the
kernel keeps answering while a handler, an export or a test is under way.

The logic the buttons call (`locate_notebook`, `summarise`, `call_handler`,
`payload_report`) is plain functions, usable and testable without widgets.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError
from kit.build.notebook import Notebook, read_notebook
from kit.templates.batching import result_problem, single_job_handler

# RunPod's payload limits (see RUNPOD.md): the SDK enforces none, the platform
# rejects a bigger result at job-done and the result is lost.
RUN_LIMIT = 10 * 1024 * 1024
RUNSYNC_LIMIT = 20 * 1024 * 1024

TAGGING_HELP = (
    "Tag a cell <code>setup</code>, <code>handler</code> or <code>test</code> — "
    "<b>JupyterLab</b>: select the cell, open the property inspector (the gear icon in the right "
    "sidebar), Common Tools → Cell Tags → Add Tag. "
    "<b>VS Code</b>: the cell's <code>…</code> menu → Add Cell Tag (Jupyter extension)."
)

# How long Export and Test wait for JupyterLab to write the notebook to disk.
SAVE_TIMEOUT = 5.0


# --------------------------------------------------------------------------- finding the notebook


def locate_notebook(path: str | os.PathLike | None = None, namespace: dict | None = None) -> Path:
    """The notebook file the panel works on.

    `path` wins; then VS Code's `__vsc_ipynb_file__`; then `__session__`, which
    JupyterLab's server passes to ipykernel (JPY_SESSION_NAME) as the
    notebook's path.
    """
    namespace = namespace or {}
    hint = 'give it: kit.panel("my_notebook.ipynb")'
    if path is not None:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise KitError(f"{path}: no such notebook", "check the path given to kit.panel()")
        return candidate.resolve()
    for variable in ("__vsc_ipynb_file__", "__session__"):
        value = namespace.get(variable)
        if isinstance(value, str) and value.endswith(".ipynb"):
            candidate = Path(value).expanduser()
            if candidate.is_file():
                return candidate.resolve()
            raise KitError(
                f"this kernel was started for {value}, which no longer exists (renamed or moved?)",
                f"restart the kernel, or {hint}",
            )
    raise KitError("cannot tell which notebook this kernel runs", hint)


# --------------------------------------------------------------------------- the notebook at a glance


@dataclass
class Summary:
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    job: dict | None = None  # the first test job, to pre-fill the Run box


def summarise(notebook: Notebook) -> Summary:
    """How many cells carry each tag, what is missing, and the first test job."""
    from kit.build.analysis import find_jobs, parse_test_cells

    counts = {role: len(notebook.with_role(role)) for role in ("setup", "handler", "test")}
    warnings = []
    if not counts["handler"]:
        warnings.append("no cell is tagged `handler`: the worker would have no handler(job) to call")
    if not counts["test"]:
        warnings.append("no cell is tagged `test`: `kit test` has nothing to check and test_input.json is not written")
    job = None
    try:
        jobs = find_jobs([(t.translated.cell.index, t.tree) for t in parse_test_cells(notebook)])
        job = jobs[0]["job"] if jobs else None
    except KitError as error:
        warnings.append(str(error))
    return Summary(counts, warnings, job)


# --------------------------------------------------------------------------- calling the handler


@dataclass
class HandlerRun:
    kind: str  # "function", "async", "generator" or "async_generator"
    seconds: float
    output: object = None  # the return value (None for generators)
    chunks: list = field(default_factory=list)  # what a generator yielded
    error: str | None = None  # the traceback when the handler raised

    @property
    def streamed(self) -> bool:
        return self.kind in ("generator", "async_generator")

    @property
    def result(self):
        """What the job's client gets: the output, or the aggregated stream."""
        return self.chunks if self.streamed else self.output


def call_handler(handler, job: dict, on_chunk=None, on_print=None) -> HandlerRun:
    """Call `handler(job)` as RunPod's worker would, whatever kind of handler it is.

    Coroutines and async generators run on the panel's own event loop (a
    thread, not the kernel's loop, which is busy running the kernel); each
    chunk a generator yields is passed to `on_chunk` as it arrives, and what
    the handler prints to `on_print` (when given).
    """
    on_chunk = on_chunk or (lambda chunk: None)
    run = HandlerRun(kind="function", seconds=0.0)
    caller = threading.get_ident()
    saved = sys.stdout, sys.stderr
    if on_print is not None:
        def ours():
            return threading.get_ident() in (caller, _loop_thread_id)

        sys.stdout = _ThreadOutput(saved[0], ours, on_print)
        sys.stderr = _ThreadOutput(saved[1], ours, on_print)
    started = time.perf_counter()
    try:
        value = handler(job)
        if inspect.isasyncgen(value):
            run.kind = "async_generator"
            _on_handler_loop(_drain_async(value, run.chunks, on_chunk))
        elif inspect.isgenerator(value):
            run.kind = "generator"
            for chunk in value:
                run.chunks.append(chunk)
                on_chunk(chunk)
        elif inspect.isawaitable(value):
            run.kind = "async"
            run.output = _on_handler_loop(_await(value))
        else:
            run.output = value
    except Exception:
        run.error = traceback.format_exc()
    finally:
        run.seconds = time.perf_counter() - started
        sys.stdout, sys.stderr = saved
    return run


async def _await(awaitable):
    return await awaitable


async def _drain_async(agen, chunks: list, on_chunk) -> None:
    async for chunk in agen:
        chunks.append(chunk)
        on_chunk(chunk)


_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_thread_id: int | None = None


def _on_handler_loop(coroutine):
    """Run `coroutine` on one long-lived loop, so that what the handler caches
    across jobs (clients, locks) stays bound to the same loop, as in a worker."""
    global _loop, _loop_thread_id
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_loop.run_forever, name="kit-panel-handler-loop", daemon=True)
            thread.start()
            _loop_thread_id = thread.ident
    return asyncio.run_coroutine_threadsafe(coroutine, _loop).result()


def payload_report(value) -> tuple[int | None, str]:
    """The size of `value` as the JSON RunPod sends, and how it compares with the limits."""
    try:
        size = len(json.dumps(value).encode("utf-8"))
    except (TypeError, ValueError) as error:
        return None, f"not JSON ({error}): RunPod cannot send this result; return plain dicts, lists, strings and numbers"
    text = f"{format_size(size)} as JSON"
    if size > RUNSYNC_LIMIT:
        return size, f"{text}: too big for /run ({format_size(RUN_LIMIT)}) and /runsync ({format_size(RUNSYNC_LIMIT)}); RunPod would lose this result — upload it somewhere and return a URL"
    if size > RUN_LIMIT:
        return size, f"{text}: too big for /run ({format_size(RUN_LIMIT)}), fits /runsync ({format_size(RUNSYNC_LIMIT)})"
    return size, f"{text}: within RunPod's limits (/run {format_size(RUN_LIMIT)}, /runsync {format_size(RUNSYNC_LIMIT)})"


def format_size(size: int) -> str:
    for unit, scale in (("MB", 1024 * 1024), ("kB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} B"


class _ThreadOutput:
    """sys.stdout/stderr while the handler runs: what the handler's threads
    print goes to the panel; every other thread's output is left alone."""

    def __init__(self, original, ours, write):
        self._original = original
        self._ours = ours
        self._write = write

    def write(self, text):
        if self._ours():
            self._write(text)
            return len(text)
        return self._original.write(text)

    def __getattr__(self, name):
        return getattr(self._original, name)


# --------------------------------------------------------------------------- the widgets


def _pre(text: str, css: str = "") -> str:
    return f'<pre class="{css}" style="white-space: pre-wrap; margin: 0">{html.escape(text)}</pre>'


def _note(text: str, level: str = "info") -> str:
    colour = {"info": "inherit", "ok": "#1a7f37", "warning": "#9a6700", "error": "#cf222e"}[level]
    return f'<div class="kit-{level}" style="color: {colour}">{html.escape(text)}</div>'


def _in_vscode(namespace: dict) -> bool:
    return "__vsc_ipynb_file__" in namespace


# Saves the notebook the user clicked in. JupyterLab exposes its app as
# `window.jupyterapp` when the server sets LabApp.expose_app_in_browser (the
# pod image does); otherwise the same save shortcut a user would press.
_SAVE_SCRIPT = """
(function () {
  var app = window.jupyterapp;
  if (app && app.commands) { app.commands.execute('docmanager:save'); return; }
  var mac = /Mac/.test(navigator.platform);
  var target = document.activeElement || document.body;
  target.dispatchEvent(new KeyboardEvent('keydown', {
    key: 's', code: 'KeyS', keyCode: 83, which: 83,
    ctrlKey: !mac, metaKey: mac, bubbles: true, cancelable: true
  }));
})();
"""


class Panel:
    """The widgets and their callbacks. `kit.panel()` builds one; displaying it shows the panel."""

    def __init__(self, notebook_path: Path, namespace: dict):
        import ipywidgets as w

        self.path = Path(notebook_path)
        self.namespace = namespace
        self.thread: threading.Thread | None = None
        self.save_timeout = SAVE_TIMEOUT

        self.header = w.HTML()
        self.job = w.Textarea(rows=6, layout=w.Layout(width="100%"))
        self.job.add_class("kit-job")
        self.run_button = w.Button(description="Run", icon="play", tooltip="call handler(job) in this kernel")
        self.export_button = w.Button(description="Export", icon="download", tooltip="save, then kit export")
        self.test_button = w.Button(description="Test", icon="check", tooltip="save, then kit test in a subprocess")
        for button, css in ((self.run_button, "kit-run"), (self.export_button, "kit-export"), (self.test_button, "kit-test")):
            button.add_class(css)
        self.status = w.HTML()
        self.status.add_class("kit-status")
        self.output = w.HTML()
        self.output.add_class("kit-output")
        # Where the save script is displayed (and removed once it ran).
        self.scripts = w.Output(layout=w.Layout(display="none"))

        self.run_button.on_click(lambda _: self._start(self.run))
        self.export_button.on_click(lambda _: self._start(self.export))
        self.test_button.on_click(lambda _: self._start(self.test))
        self.widget = w.VBox(
            [
                self.header,
                w.HTML("<b>Job</b> (the JSON RunPod passes to <code>handler(job)</code>; a list of jobs runs <code>batch_handler(jobs)</code>)"),
                self.job,
                w.HBox([self.run_button, self.export_button, self.test_button]),
                self.status,
                self.output,
                self.scripts,
            ]
        )
        self.widget.add_class("kit-panel")
        self.refresh(prefill=True)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ---------------------------------------------------------------- state

    def refresh(self, prefill: bool = False) -> None:
        """Re-read the notebook file: the header, and the job box when asked."""
        try:
            summary = summarise(read_notebook(self.path))
        except KitError as error:
            self.header.value = self._title() + _note(str(error), "error")
            return
        counts = summary.counts
        parts = [
            "<style>.kit-job textarea { font-family: monospace; }</style>",
            self._title(),
            f'<div class="kit-summary">{counts["setup"]} setup · {counts["handler"]} handler · {counts["test"]} test cell(s)</div>',
        ]
        parts += [_note(message, "warning") for message in summary.warnings]
        parts.append(f'<div style="font-size: 90%">{TAGGING_HELP}</div>')
        self.header.value = "".join(parts)
        if prefill:
            self.job.value = json.dumps(summary.job if summary.job is not None else {"input": {}}, indent=2)

    def _title(self) -> str:
        return f'<div><b>RunPod kit</b> — <code>{html.escape(str(_shortest(self.path)))}</code></div>'

    def _start(self, action) -> None:
        """Run `action` in a thread; one action at a time."""
        if self.thread is not None and self.thread.is_alive():
            return
        self._set_busy(True)

        def target():
            try:
                action()
            except Exception:  # a kit bug: show it rather than lose it in the kernel's log
                self.status.value = _note("the kit failed (a bug, please report it):", "error")
                self.output.value = _pre(traceback.format_exc())
            finally:
                self._set_busy(False)

        self.thread = threading.Thread(target=target, name="kit-panel", daemon=True)
        self.thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running action is done (for tests and scripts)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def _set_busy(self, busy: bool) -> None:
        for button in (self.run_button, self.export_button, self.test_button):
            button.disabled = busy

    # ---------------------------------------------------------------- Run

    def run(self) -> None:
        try:
            job = json.loads(self.job.value)
        except json.JSONDecodeError as error:
            self.status.value = _note(f"the job is not JSON: {error.msg} at line {error.lineno}, column {error.colno}", "error")
            return
        if isinstance(job, list):
            self._run_batch(job)
            return
        notes = []
        if not isinstance(job, dict) or "input" not in job:
            notes.append(_note('RunPod jobs are objects with an "input" key: the worker fails this job before calling the handler', "warning"))
        elif "id" not in job:
            job = {"id": "panel-test", **job}
        handler = self.namespace.get("handler")
        if not callable(handler) and callable(self.namespace.get("batch_handler")):
            handler = single_job_handler(self.namespace["batch_handler"])  # what the exported worker provides
        if not callable(handler):
            self.status.value = _note("no handler(job) in this kernel yet: run the `handler` cell (and the `setup` cells) first", "error")
            return

        self.status.value = _note("running handler(job)…")
        self.output.value = ""
        printed: list[str] = []
        shown: list[str] = []

        def on_chunk(chunk):
            shown.append(_render(chunk))
            self.output.value = _pre("\n".join(shown)) + _pre("".join(printed), "kit-printed")
            self.status.value = _note(f"streaming… {len(shown)} chunk(s)")

        def on_print(text):
            printed.append(text)

        run = call_handler(handler, job, on_chunk, on_print)
        self.output.value = self._render_run(run, notes, "".join(printed))
        self.status.value = (
            _note(f"handler raised after {run.seconds:.3f} s: the job FAILS on RunPod", "error")
            if run.error
            else _note(f"done in {run.seconds:.3f} s ({run.kind} handler)", "ok")
        )

    def _run_batch(self, jobs: list) -> None:
        """A list of jobs: one batch_handler(jobs) call, as the worker makes for a batch."""
        batch_handler = self.namespace.get("batch_handler")
        if not callable(batch_handler):
            self.status.value = _note("a list of jobs runs as one batch through batch_handler(jobs): define it in a `handler` cell and run that cell", "error")
            return
        notes = []
        if not all(isinstance(job, dict) and "input" in job for job in jobs):
            notes.append(_note('RunPod jobs are objects with an "input" key: the worker fails such a job before calling the handler', "warning"))
        jobs = [{"id": f"panel-test-{n}", **job} if isinstance(job, dict) and "id" not in job else job for n, job in enumerate(jobs, 1)]
        self.status.value = _note(f"running batch_handler on {len(jobs)} job(s)…")
        printed: list[str] = []
        run = call_handler(batch_handler, jobs, on_print=printed.append)
        parts = list(notes)
        problem = None if run.error else result_problem(run.output, len(jobs))
        if run.error:
            parts.append(_pre(run.error, "kit-error"))
        elif problem:
            parts.append(_pre(_render(run.output), "kit-result"))
            parts.append(_note(f"{problem}: every job of the batch FAILS on RunPod", "error"))
        else:
            for number, result in enumerate(run.output, 1):
                parts.append(_note(f"job {number}:") + _pre(_render(result), "kit-result"))
                if isinstance(result, dict) and "error" in result:
                    parts.append(_note('the result has an "error" key: RunPod marks this job FAILED', "warning"))
                size, text = payload_report(result)
                parts.append(_note("result: " + text, "error" if size is None or size > RUN_LIMIT else "info"))
        if printed:
            parts.append(_note("printed:") + _pre("".join(printed), "kit-printed"))
        self.output.value = "".join(parts)
        failed = "batch_handler raised" if run.error else problem
        self.status.value = (
            _note(f"{failed} after {run.seconds:.3f} s: every job of the batch FAILS on RunPod", "error")
            if failed
            else _note(f"done in {run.seconds:.3f} s (one batch_handler call, {len(jobs)} job(s))", "ok")
        )

    @staticmethod
    def _render_run(run: HandlerRun, notes: list[str], printed: str) -> str:
        parts = list(notes)
        if run.error:
            parts.append(_pre(run.error, "kit-error"))
        else:
            if run.streamed:
                parts.append(_note(f"{len(run.chunks)} chunk(s) streamed:"))
                parts.append(_pre("\n".join(_render(c) for c in run.chunks), "kit-result"))
            else:
                parts.append(_pre(_render(run.output), "kit-result"))
            if isinstance(run.output, dict) and "error" in run.output:
                parts.append(_note('the result has an "error" key: RunPod marks this job FAILED', "warning"))
            size, text = payload_report(run.result)
            level = "error" if size is None or size > RUN_LIMIT else "info"
            parts.append(_note(("aggregated stream: " if run.streamed else "result: ") + text, level))
        if printed:
            parts.append(_note("printed:"))
            parts.append(_pre(printed, "kit-printed"))
        return "".join(parts)

    # ---------------------------------------------------------------- Export

    def export(self) -> None:
        from kit.build.export import export_notebook

        saved = self._save()
        self.status.value = _note("exporting…")
        notebook = _shortest(self.path)
        try:
            result = export_notebook(notebook, notebook.parent / "build" / notebook.stem)
        except KitError as error:
            self.status.value = _note("export failed", "error")
            self.output.value = saved + _note(str(error), "error")
            return
        finally:
            self.refresh()
        parts = [saved, _note(f"exported to {result.out_dir.resolve()}/", "ok")]
        parts.append(_pre("\n".join(f"  {name}" for name in result.files), "kit-files"))
        parts += [_note(f"warning: {warning}", "warning") for warning in result.warnings]
        parts.append(_note("requirements.txt:"))
        parts.append(_pre((result.out_dir / "requirements.txt").read_text(encoding="utf-8"), "kit-requirements"))
        self.status.value = _note(f"exported {len(result.files)} files", "ok")
        self.output.value = "".join(parts)

    def _save(self) -> str:
        """Ask the front end to save the notebook; a note saying what was exported."""
        if _in_vscode(self.namespace):
            return _note("VS Code: exporting the notebook as last saved (save it first with Ctrl+S / Cmd+S)", "info")
        from IPython.display import Javascript

        self.status.value = _note("saving the notebook…")
        before = _mtime(self.path)
        self.scripts.append_display_data(Javascript(_SAVE_SCRIPT))
        deadline = time.monotonic() + self.save_timeout
        while _mtime(self.path) == before and time.monotonic() < deadline:
            time.sleep(0.1)
        self.scripts.outputs = ()
        if _mtime(self.path) != before:
            return _note("saved the notebook", "info")
        stamp = time.strftime("%H:%M:%S", time.localtime(before)) if before else "?"
        return _note(f"could not confirm the notebook was saved: using the copy on disk from {stamp}", "warning")

    # ---------------------------------------------------------------- Test

    def test(self) -> None:
        saved = self._save()
        self.status.value = _note("kit test: running…")
        command = [sys.executable, "-m", "kit", "test", self.path.name]
        lines: list[str] = []
        with subprocess.Popen(
            command,
            cwd=self.path.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        ) as process:
            for line in process.stdout:
                lines.append(line)
                self.output.value = saved + _pre("".join(lines), "kit-test-log")
        verdict = {0: ("kit test passed", "ok"), 2: ("kit test: the notebook has a mistake", "error")}
        text, level = verdict.get(process.returncode, (f"kit test failed (exit {process.returncode})", "error"))
        self.status.value = _note(text, level)
        self.output.value = saved + _pre("".join(lines), "kit-test-log")


def _render(value) -> str:
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _shortest(path: Path) -> Path:
    """`path` relative to the working directory when it is below it: what
    the export writes into handler.py's header and its messages."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def panel(path: str | os.PathLike | None = None) -> Panel:
    """The kit's panel for the notebook this kernel runs (or `path`)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    namespace = shell.user_ns if shell is not None else {}
    try:
        return Panel(locate_notebook(path, namespace), namespace)
    except KitError as error:  # shown in the cell as one line, not a traceback
        import ipywidgets

        return ipywidgets.HTML(_note(f"kit.panel(): {error}", "error"))
