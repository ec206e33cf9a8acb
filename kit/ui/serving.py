"""The panel's Serve button without widgets: `kit serve NOTEBOOK --watch` as a child of the kernel.

`kit_process` is the one way the panel starts a kit command (its Test runs
`kit test` the same way): a child of the kernel that dies with it.

`LocalEndpoint.start` runs ``python -m kit serve NOTEBOOK --watch --port 0``
beside the notebook and reads its output: the endpoint's URL, the curl line
with the notebook's test job, one line per job and per reload. The child gets
SIGTERM when the kernel process ends (Linux's parent-death signal, set from a
thread that lives as long as the kernel), so stopping the kernel or closing
the notebook stops the endpoint; `stop` ends it by hand.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from kit.processes import kill_group

PR_SET_PDEATHSIG = 1
T = TypeVar("T")
STOP_TIMEOUT = 30.0


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the kernel's atexit hook still stops it on a clean shutdown


class _Spawner:
    """Starts child processes from one thread that lives as long as the kernel: Linux sends the
    parent-death signal when the thread that forked the child ends, not only the process."""

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Future, Callable[[], Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, start: Callable[[], T]) -> T:
        """`start()` (which starts a process) run on the spawner's thread; its result."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kit-endpoint-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._requests.put((future, start))
        return future.result()

    def _run(self) -> None:
        while True:
            future, start = self._requests.get()
            try:
                future.set_result(start())
            except BaseException as error:
                future.set_exception(error)


_SPAWNER = _Spawner()


def kit_process(args: list[str], cwd: Path, *, new_session: bool = False) -> subprocess.Popen[str]:
    """`python -m kit ARGS` in `cwd` as the kernel's child that dies with it, its output (stdout and
    stderr) one text pipe. `new_session`: its own process group, so an interrupt of the kernel
    (Ctrl-C) does not reach it."""
    return _SPAWNER.call(
        lambda: subprocess.Popen(
            [sys.executable, "-u", "-m", "kit", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=new_session,
            preexec_fn=_die_with_parent,
        )
    )


# The endpoint serving each notebook in this kernel: a panel made again (its cell re-run) takes it over.
RUNNING: dict[Path, LocalEndpoint] = {}


class LocalEndpoint:
    """One watched `kit serve` of a notebook."""

    def __init__(self, notebook: Path, on_line: Callable[[str], None] = lambda line: None):
        self.notebook = Path(notebook)
        self.on_line = on_line
        self.process: subprocess.Popen[str] | None = None
        self.url: str | None = None
        self.curl: str | None = None
        self.lines: list[str] = []
        self.ready = threading.Event()  # the URL is known, or the process ended
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 120.0) -> bool:
        """Start serving; True once the endpoint's URL is known, False if `kit serve` ended first."""
        self.process = kit_process(["serve", self.notebook.name, "--watch", "--port", "0"], self.notebook.parent, new_session=True)
        atexit.register(self.stop)
        RUNNING[self.notebook] = self
        self._reader = threading.Thread(target=self._read, name="kit-endpoint-log", daemon=True)
        self._reader.start()
        self.ready.wait(timeout)
        return self.url is not None

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None  # start() made it, with a pipe
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            if self.url is None and (match := re.match(r"endpoint: (http://\S+)/v2", line)):
                self.url = match.group(1)
            elif self.curl is None and line.strip().startswith("curl "):
                self.curl = line.strip()
                self.ready.set()
            self.on_line(line)
        self.ready.set()

    def stop(self) -> None:
        """SIGTERM: `kit serve` lets jobs in flight finish and stops its workers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        kill_group(process)  # whatever is left of its group
        if self._reader is not None:
            self._reader.join(5)
        atexit.unregister(self.stop)
        if RUNNING.get(self.notebook) is self:
            del RUNNING[self.notebook]

    def run_sync(self, job: dict, timeout: float = 90.0) -> dict:
        """POST the job to /runsync; the job's status dict as RunPod's API answers it."""
        request = urllib.request.Request(
            f"{self.url}/v2/local/runsync?wait={int(timeout * 1000)}",
            data=json.dumps(job).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout + 10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            return {"status": f"HTTP {error.code}", "error": error.read().decode(errors="replace")}
