"""`kit serve`: a local RunPod endpoint running the exported worker through the SDK's real loop.

A `QueueEmulator` speaks RunPod's endpoint API to clients; a `WorkerPool`
runs N unmodified ``python handler.py`` processes pointed at it through the
``RUNPOD_WEBHOOK_*`` env vars, restarts the ones that die (their jobs are
marked FAILED, never lost) and drains them on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kit import platform, workerdir
from kit.errors import KitEnvironmentError, KitError
from kit.local.emulator import QueueEmulator
from kit.processes import kill_group

# A worker that dies this many times in a row before taking its first job is
# broken (an import error, a bad requirement): stop instead of looping.
STARTUP_FAILURES = 3
DRAIN_TIMEOUT = 30.0


@dataclass
class _Process:
    worker_id: str
    popen: subprocess.Popen
    spawned: float  # time.monotonic() just before the spawn
    log_path: Path


class WorkerPool:
    """N worker processes running `handler.py` against an emulator, kept alive."""

    def __init__(
        self,
        worker_dir: Path,
        emulator: QueueEmulator,
        count: int,
        *,
        log_dir: Path,
        env: dict[str, str] | None = None,
        say: Callable[[str], None] = print,
        command: list[str] | None = None,
    ):
        if count < 1:
            raise KitError(f"--workers must be at least 1, not {count}")
        self.worker_dir = Path(worker_dir)
        self.emulator = emulator
        self.count = count
        self.log_dir = Path(log_dir)
        self.env = env or {}
        self.say = say
        # What each worker process runs in the worker directory: the exported handler.py, or
        # (kit serve --watch) kit.local.launcher, which runs it with warm reload.
        self.command = command or [sys.executable, "handler.py"]
        self.processes: dict[str, _Process] = {}
        self._startup_failures: dict[str, int] = {}

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, self.count + 1):
            self._spawn(f"worker-{n}")

    def _spawn(self, worker_id: str) -> None:
        env = platform.worker_env({**self.env, **self.emulator.worker_env(worker_id)})
        log_path = self.log_dir / f"{worker_id}.log"
        with open(log_path, "ab") as log:
            spawned = time.monotonic()
            popen = subprocess.Popen(
                self.command,
                cwd=self.worker_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C reaches only us, we stop it
            )
        self.processes[worker_id] = _Process(worker_id, popen, spawned, log_path)

    def check(self) -> None:
        """Restart workers that exited; report the jobs they took down with them."""
        for worker_id, process in list(self.processes.items()):
            code = process.popen.poll()
            if code is None:
                continue
            kill_group(process.popen)  # the SDK's heartbeat process outlives a killed worker
            asked_to_refresh = self.emulator.expected_exit(worker_id)
            started = self.emulator.worker_times(worker_id)["first_request"] is not None
            lost = self.emulator.worker_exited(worker_id, f"exited with code {code}")
            # A refresh is a clean exit with nothing in flight: a worker that took more jobs
            # after its refresh job and then died is reported like any other death.
            refreshed = asked_to_refresh and code == 0 and not lost
            if not refreshed:
                message = f"{worker_id} exited with code {code} (log: {process.log_path})"
                if lost:
                    message += f"; FAILED its job(s) {', '.join(lost)}"
                self.say(message + "; restarting")
            if started or refreshed:
                self._startup_failures[worker_id] = 0
            else:
                failures = self._startup_failures.get(worker_id, 0) + 1
                self._startup_failures[worker_id] = failures
                if failures >= STARTUP_FAILURES:
                    raise KitEnvironmentError(
                        f"the worker exited with code {code} before taking a job, {failures} times in a row: "
                        f"{_last_line(process.log_path)}",
                        f"see {process.log_path}",
                    )
            self._spawn(worker_id)

    def reload(self) -> None:
        """Ask every worker run by kit.local.launcher to swap in the handler code it is told of."""
        from kit.local.launcher import RELOAD_SIGNAL

        for process in self.processes.values():
            if process.popen.poll() is None:
                process.popen.send_signal(RELOAD_SIGNAL)

    def restart(self, worker_dir: Path) -> None:
        """Drain and stop every worker, then start them again on `worker_dir`."""
        worker_ids = list(self.processes) or [f"worker-{n}" for n in range(1, self.count + 1)]
        for worker_id in self.processes:
            self.emulator.release_worker(worker_id)  # no new jobs for them from here on
        if self.emulator.health()["jobs"]["inProgress"] == 0:
            # Nothing to drain: skip the SDK's shutdown and the interpreter's teardown (seconds with torch).
            for process in self.processes.values():
                kill_group(process.popen)
            self.processes.clear()
        else:
            self.stop()
        for worker_id in worker_ids:
            lost = self.emulator.worker_exited(worker_id, "was restarted")  # its record starts over
            if lost:
                self.say(f"{worker_id} was restarted with job(s) in flight: FAILED {', '.join(lost)}")
        self._startup_failures.clear()
        self.worker_dir = Path(worker_dir)
        self.start()

    def stop(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """SIGTERM every worker, let the SDK drain jobs in flight, SIGKILL what is left."""
        for worker_id, process in self.processes.items():
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
            self.emulator.release_worker(worker_id)
        deadline = time.monotonic() + timeout
        try:
            for process in self.processes.values():
                try:
                    process.popen.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.say(f"{process.worker_id} did not stop within {timeout:.0f} s; killing it")
        finally:  # also when a second Ctrl-C cuts the drain short: never leave a worker behind
            for process in self.processes.values():
                kill_group(process.popen)
            self.processes.clear()


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def job_line(state: dict) -> str:
    """One log line per finished job."""
    parts = [f"{state['status']:<9}", state["id"], state.get("workerId", "-")]
    if "delayTime" in state:
        parts.append(f"queue {state['delayTime']} ms")
    if "executionTime" in state:
        parts.append(f"run {state['executionTime']} ms")
    if "error" in state:
        parts.append(f"error: {platform.error_summary(state['error'])}")
    return time.strftime("%H:%M:%S ") + "  ".join(parts)


_output = threading.Lock()


def say_line(text: str) -> None:
    """One whole line on stdout: job lines come from the emulator's thread, reload lines from the main one."""
    with _output:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class _Stopped(Exception):
    """SIGTERM arrived: leave the supervision loop and drain."""


def _raise_stopped(signum, frame):
    raise _Stopped


def serve(
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    api_key: str | None = None,
    watch: bool = False,
) -> int:
    """Serve `target` (a notebook or a worker directory) until Ctrl-C or SIGTERM.

    `watch`: re-export the notebook on every save and reload the workers (kit.local.watch).
    """
    from kit.build.export import worker_dir
    from kit.local.watch import Watcher

    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        watcher = Watcher(target, say=say_line) if watch else None
        with (watcher.serving() if watcher else worker_dir(target)) as path, QueueEmulator(
            host, port, api_key, on_job_end=lambda state: say_line(job_line(state))
        ) as emulator:
            log_dir = Path(tempfile.mkdtemp(prefix="kit-serve-logs-"))
            pool = WorkerPool(path, emulator, workers, log_dir=log_dir, **(watcher.pool_options() if watcher else {}))
            try:
                pool.start()
                _print_banner(path, emulator, workers, log_dir)
                if watcher:
                    print(f"watching {target}: every save reloads the workers", flush=True)
                while True:
                    if watcher:
                        watcher.poll(pool)
                    else:
                        pool.check()
                    time.sleep(watcher.tick if watcher else 0.2)
            except (KeyboardInterrupt, _Stopped):
                print("stopping: draining jobs in flight", flush=True)
            finally:
                pool.stop()
        print("stopped", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_banner(path: Path, emulator: QueueEmulator, workers: int, log_dir: Path) -> None:
    example = workerdir.example_job(path) or {"input": {}}
    auth = f" -H 'Authorization: Bearer {emulator.api_key}'" if emulator.api_key else ""
    print(
        f"kit serve: {path}/handler.py on {workers} worker(s) (logs: {log_dir})\n"
        f"endpoint: {emulator.url}/v2/<any endpoint id>\n"
        f"  curl -X POST {emulator.url}/v2/local/runsync -H 'Content-Type: application/json'{auth}"
        f" -d '{json.dumps(example)}'\n"
        f"  python client: RUNPOD_ENDPOINT_BASE_URL={emulator.url}/v2, then runpod.Endpoint('local').run_sync(...)\n"
        "Ctrl-C to stop.",
        flush=True,
    )
