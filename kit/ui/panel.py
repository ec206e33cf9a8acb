"""The notebook panel: try the handler, export the worker and run `kit test`
without leaving the notebook.

`kit.panel()` in an untagged cell shows an ipywidgets panel bound to the
notebook it runs in and to the kernel's namespace: **Run** calls the
`handler` the kernel defined (plain, async or generator; a list of jobs is one
`batch_handler(jobs)` call, and with only `batch_handler` a job runs as a batch
of one, as in the exported worker), **Export** calls
`kit.export.export.export_notebook` in the kernel (so requirements are inferred from
the kernel's own environment) and **Test** runs `python -m kit test` in a
subprocess. Each runs in a thread and updates the widgets from there, so the
kernel keeps answering while a handler, an export or a test is under way.

The logic the buttons call (`locate_notebook`, `summarise`, `call_handler`,
`kit.platform.check_payload`) is plain functions, usable and testable without widgets.
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from kit import platform
from kit.errors import KitError
from kit.export.notebook import Notebook, read_notebook
from kit.ui import serving
from kit.ui.runner import HandlerRun, call_handler
from kit.ui.serving import LocalEndpoint
from kit.worker.batching import result_problem, single_job_handler

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
    from kit.export.facts import parse_test_cells
    from kit.export.jobs import find_test_jobs

    counts = {role: len(notebook.with_role(role)) for role in ("setup", "handler", "test")}
    warnings = []
    if not counts["handler"]:
        warnings.append("no cell is tagged `handler`: the worker would have no handler(job) to call")
    if not counts["test"]:
        warnings.append("no cell is tagged `test`: `kit test` has nothing to check and test_input.json is not written")
    job = None
    try:
        jobs = find_test_jobs(parse_test_cells(notebook))
        job = jobs[0]["job"] if jobs else None
    except KitError as error:
        warnings.append(str(error))
    return Summary(counts, warnings, job)


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
        self.serve_button = w.Button(
            description="Serve", icon="server", tooltip="a local RunPod endpoint for this notebook, reloaded on every save"
        )
        for button, css in (
            (self.run_button, "kit-run"),
            (self.export_button, "kit-export"),
            (self.test_button, "kit-test"),
            (self.serve_button, "kit-serve"),
        ):
            button.add_class(css)
        self.use_endpoint = w.Checkbox(value=False, disabled=True, indent=False, description="Run on the local endpoint")
        self.use_endpoint.add_class("kit-use-endpoint")
        self.endpoint: LocalEndpoint | None = None
        self.endpoint_info = w.HTML()
        self.endpoint_info.add_class("kit-endpoint")
        self.endpoint_log = w.HTML()
        self.endpoint_log.add_class("kit-endpoint-log")
        self.status = w.HTML()
        self.status.add_class("kit-status")
        self.output = w.HTML()
        self.output.add_class("kit-output")
        # Where the save script is displayed (and removed once it ran).
        self.scripts = w.Output(layout=w.Layout(display="none"))

        self.run_button.on_click(lambda _: self._start(self.run))
        self.export_button.on_click(lambda _: self._start(self.export))
        self.test_button.on_click(lambda _: self._start(self.test))
        self.serve_button.on_click(lambda _: self._start(self.toggle_serving))
        self.widget = w.VBox(
            [
                self.header,
                w.HTML(
                    "<b>Job</b> (the JSON RunPod passes to <code>handler(job)</code>; a list of jobs runs <code>batch_handler(jobs)</code>)"
                ),
                self.job,
                w.HBox([self.run_button, self.export_button, self.test_button, self.serve_button, self.use_endpoint]),
                self.status,
                self.output,
                self.endpoint_info,
                self.endpoint_log,
                self.scripts,
            ]
        )
        self.widget.add_class("kit-panel")
        self.refresh(prefill=True)
        running = serving.RUNNING.get(self.path)
        if running is not None and running.running:  # the panel's cell ran again: keep the endpoint
            self.endpoint = running
            running.on_line = lambda line: self._show_endpoint_log()
            self._show_serving("")
            self._show_endpoint_log()

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
        return f"<div><b>RunPod kit</b> — <code>{html.escape(str(_shortest(self.path)))}</code></div>"

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
        for button in (self.run_button, self.export_button, self.test_button, self.serve_button):
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
            notes.append(
                _note('RunPod jobs are objects with an "input" key: the worker fails this job before calling the handler', "warning")
            )
        elif "id" not in job:
            job = {"id": "panel-test", **job}
        if self.use_endpoint.value and self.endpoint is not None and self.endpoint.running:
            self.run_on_endpoint(job, notes)
            return
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
            else _note(f"done in {run.seconds:.3f} s ({run.kind.value} handler)", "ok")
        )

    def _run_batch(self, jobs: list) -> None:
        """A list of jobs: one batch_handler(jobs) call, as the worker makes for a batch."""
        batch_handler = self.namespace.get("batch_handler")
        if not callable(batch_handler):
            self.status.value = _note(
                "a list of jobs runs as one batch through batch_handler(jobs): define it in a `handler` cell and run that cell", "error"
            )
            return
        notes = []
        if not all(isinstance(job, dict) and "input" in job for job in jobs):
            notes.append(
                _note('RunPod jobs are objects with an "input" key: the worker fails such a job before calling the handler', "warning")
            )
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
        elif isinstance(run.output, (list, tuple)):  # result_problem found it a list of one result per job
            for number, result in enumerate(run.output, 1):
                parts.append(_note(f"job {number}:") + _pre(_render(result), "kit-result"))
                parts.append(_result_notes(result, "result: "))
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
            parts.append(_result_notes(run.result, "aggregated stream: " if run.streamed else "result: "))
        if printed:
            parts.append(_note("printed:"))
            parts.append(_pre(printed, "kit-printed"))
        return "".join(parts)

    def run_on_endpoint(self, job: dict, notes: list[str]) -> None:
        endpoint = self.endpoint
        assert endpoint is not None  # run() checked it is running
        self.status.value = _note(f"sending the job to {endpoint.url}/v2/local/runsync…")
        self.output.value = ""
        started = time.perf_counter()
        state = endpoint.run_sync(job)
        seconds = time.perf_counter() - started
        parts = list(notes)
        if "output" in state:
            parts.append(_pre(_render(state["output"]), "kit-result"))
            parts.append(_result_notes(state["output"], "result: ", error_key=False))  # the queue judged it: see its status
        if "error" in state:
            parts.append(_pre(platform.error_summary(state["error"]), "kit-error"))
        self.output.value = "".join(parts)
        level = "ok" if state.get("status") == "COMPLETED" else "error"
        self.status.value = _note(f"{state.get('status')} on the local endpoint in {seconds:.3f} s ({state.get('workerId', '-')})", level)

    # ---------------------------------------------------------------- Serve

    def toggle_serving(self) -> None:
        if self.endpoint is not None and self.endpoint.running:
            self.status.value = _note("stopping the local endpoint…")
            self.endpoint.stop()
            self.endpoint = None
            self.serve_button.description, self.serve_button.icon = "Serve", "server"
            self.use_endpoint.value, self.use_endpoint.disabled = False, True
            self.endpoint_info.value = _note("local endpoint stopped")
            self.status.value = _note("stopped serving", "ok")
            return
        saved = self._save()
        self.status.value = _note("starting kit serve --watch…")
        self.endpoint_log.value = ""
        self.endpoint = LocalEndpoint(self.path, on_line=lambda line: self._show_endpoint_log())
        if not self.endpoint.start():
            self.status.value = _note("kit serve did not start", "error")
            self.endpoint_info.value = saved + _pre("\n".join(self.endpoint.lines[-20:]), "kit-error")
            self.endpoint.stop()
            self.endpoint = None
            return
        self._show_serving(saved)
        self.status.value = _note("serving: Run sends the job to the local endpoint (untick to call the kernel's handler)", "ok")

    def _show_serving(self, saved: str) -> None:
        endpoint = self.endpoint
        assert endpoint is not None  # toggle_serving started it
        self.serve_button.description, self.serve_button.icon = "Stop serving", "stop"
        self.use_endpoint.disabled, self.use_endpoint.value = False, True
        self.endpoint_info.value = (
            saved
            + _note(f"serving this notebook at {endpoint.url}/v2/local — every save reloads it", "ok")
            + _pre(endpoint.curl or "", "kit-curl")
        )

    def _show_endpoint_log(self) -> None:
        if self.endpoint is None:
            return
        lines = [line for line in self.endpoint.lines if not line.startswith(("kit serve:", "endpoint:", "  ", "Ctrl-C"))]
        self.endpoint_log.value = _note("endpoint log:") + _pre("\n".join(lines[-30:]), "kit-endpoint-lines")

    # ---------------------------------------------------------------- Export

    def export(self) -> None:
        from kit.export.export import export_notebook

        saved = self._save()
        self.status.value = _note("exporting…")
        notebook = _shortest(self.path)
        try:
            result = export_notebook(notebook)  # build/<stem> beside it, as `kit export`
        except KitError as error:
            self.status.value = _note("export failed", "error")
            self.output.value = saved + _note(str(error), "error")
            return
        finally:
            self.refresh()
        parts = [saved, _note(f"exported to {result.out_dir.resolve()}/", "ok")]
        listed = [f"  {name}" + (f"  (copied: {result.copied[name]})" if name in result.copied else "") for name in result.files]
        parts.append(_pre("\n".join(listed), "kit-files"))
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
        lines: list[str] = []
        with serving.kit_process(["test", self.path.name], self.path.parent) as process:
            assert process.stdout is not None  # kit_process pipes it
            for line in process.stdout:
                lines.append(line)
                self.output.value = saved + _pre("".join(lines), "kit-test-log")
        verdict = {0: ("kit test passed", "ok"), 2: ("kit test: the notebook has a mistake", "error")}
        text, level = verdict.get(process.returncode, (f"kit test failed (exit {process.returncode})", "error"))
        self.status.value = _note(text, level)
        self.output.value = saved + _pre("".join(lines), "kit-test-log")


def _result_notes(value, label: str, *, error_key: bool = True) -> str:
    """What RunPod makes of a job's result: a dict with an "error" key fails the job (`error_key`),
    and how it fares against the payload limits (the check kit test makes too)."""
    notes = ""
    if error_key and isinstance(value, dict) and "error" in value:
        notes += _note('the result has an "error" key: RunPod marks this job FAILED', "warning")
    check = platform.check_payload(value)
    level = {"ok": "info", "warn": "warning", "fail": "error"}[check.level]
    return notes + _note(label + check.message + (f" — {check.hint}" if check.hint else ""), level)


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
