"""The worker pool behind `kit serve` and `kit bench`.

A `WorkerPool` runs N unmodified ``python handler.py`` processes pointed at a
`QueueEmulator` through the ``RUNPOD_WEBHOOK_*`` env vars, restarts the ones
that die (their jobs are marked FAILED, never lost) and drains them on stop.

Nothing outlives the pool: each worker runs under `launch.py`, which holds
the read end of a pipe whose write end only the pool holds, and kills the
worker's whole process group and removes its log when that pipe closes (the
kit exited, or was killed with SIGKILL or SIGHUP). `stop` closes it last.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kit import platform
from kit.errors import KitEnvironmentError, KitError
from kit.platform import PRESTART_FAILED, prestart_failure
from kit.processes import kill_group
from kit.serve.emulator import QueueEmulator

# A worker that dies this many times in a row before taking its first job is
# broken (an import error, a bad requirement): stop instead of looping.
STARTUP_FAILURES = 3
DRAIN_TIMEOUT = 30.0


LAUNCHER = Path(__file__).resolve().parent.parent / "worker" / "launch.py"


@dataclass
class _Process:
    worker_id: str
    popen: subprocess.Popen  # launch.py, the worker's process group leader
    spawned: float  # time.monotonic() just before the spawn
    log_path: Path
    lifeline: int  # the write end of the pipe launch.py watches
    log_offset: int = 0  # where this process's output starts in the (appended) log
    refreshing: bool = False  # asked to stop by a refresh_worker job; restarted when it exits


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
        base_env: dict[str, str] | None = None,
    ):
        if count < 1:
            raise KitError(f"--workers must be at least 1, not {count}")
        self.worker_dir = Path(worker_dir)
        self.emulator = emulator
        self.count = count
        self.log_dir = Path(log_dir)
        self.env = env or {}
        self.base_env = base_env  # the environment the workers start from (default: this process's)
        self.say = say
        # What each worker process runs in the worker directory: the exported handler.py, or
        # (kit serve --watch) kit.worker.reloader, which runs it with warm reload.
        self.command = command or [sys.executable, "handler.py"]
        self.processes: dict[str, _Process] = {}
        self._startup_failures: dict[str, int] = {}
        self.unexpected_exits = 0  # workers that died; their logs are worth keeping

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1, self.count + 1):
            self._spawn(f"worker-{n}")

    def _spawn(self, worker_id: str) -> None:
        env = platform.worker_env({**self.env, **self.emulator.worker_env(worker_id)}, base=self.base_env)
        log_path = self.log_dir / f"{worker_id}.log"
        watched, lifeline = os.pipe()
        try:
            with open(log_path, "ab") as log:
                offset = log.tell()
                spawned = time.monotonic()
                popen = subprocess.Popen(
                    [sys.executable, str(LAUNCHER), str(watched), str(log_path), "--", *self.command],
                    cwd=self.worker_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(watched,),
                    start_new_session=True,  # its own process group: Ctrl-C reaches only us, we stop it
                )
        except BaseException:
            os.close(lifeline)
            raise
        finally:
            os.close(watched)
        self.processes[worker_id] = _Process(worker_id, popen, spawned, log_path, lifeline, offset)

    def check(self) -> None:
        """Restart workers that exited; report the jobs they took down with them."""
        for worker_id, process in list(self.processes.items()):
            code = process.popen.poll()
            if code is None:
                self._refresh_if_asked(worker_id, process)
                continue
            _kill_group(process)  # the SDK's heartbeat process outlives a killed worker
            asked_to_refresh = self.emulator.expected_exit(worker_id)
            # runpod 2.0 reports a failed setup through a job (or only in its log when none was queued).
            setup_error = self.emulator.setup_failure(worker_id) or _setup_failure_in_log(process)
            started = self.emulator.worker_times(worker_id)["first_request"] is not None and setup_error is None
            reason = f"exited with code {code}" + (f" after its setup failed ({setup_error})" if setup_error else "")
            lost = self.emulator.worker_exited(worker_id, reason)
            # A refresh is a clean exit with nothing in flight: a worker that took more jobs
            # after its refresh job and then died is reported like any other death.
            refreshed = asked_to_refresh and code == 0 and not lost
            if refreshed:
                self.say(f"{worker_id} restarted: its job returned refresh_worker: true (RunPod restarts the worker then)")
            else:
                self.unexpected_exits += 1
                message = f"{worker_id} exited with code {code} (log: {process.log_path})"
                if setup_error:
                    message = f"{worker_id}'s setup failed: {setup_error}; it exited with code {code} (log: {process.log_path})"
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
                        f"the worker's setup failed {failures} times in a row: {setup_error}"
                        if setup_error
                        else f"the worker exited with code {code} before taking a job, {failures} times in a row: "
                        f"{_last_line(process.log_path)}",
                        f"see {process.log_path}",
                    )
            self._spawn(worker_id)

    def ready(self, worker_id: str, at: float) -> None:
        """The worker asked for its first job (`at`, time.monotonic()): say so, with its start-up time.

        Called from the emulator's thread (`QueueEmulator(on_worker_ready=...)`)."""
        process = self.processes.get(worker_id)  # one lookup: the main thread may be restarting the pool
        if process is not None:
            self.say(f"{worker_id} is taking jobs: start-up took {_startup_seconds(process, at):.2f} s")

    def startup_seconds(self) -> dict[str, float | None]:
        """Each worker's start-up (process start to first job-take request), None while it starts."""
        return {
            worker_id: None if (at := self.emulator.worker_times(worker_id)["first_request"]) is None else _startup_seconds(process, at)
            for worker_id, process in list(self.processes.items())
        }

    def _refresh_if_asked(self, worker_id: str, process: _Process) -> None:
        """A job returned `refresh_worker: true`: the SDK posts stopPod and RunPod stops the worker,
        so module state starts over. Here: no more jobs for it, SIGTERM (it drains), and check()
        starts a fresh process when it has exited."""
        if process.refreshing or not self.emulator.expected_exit(worker_id):
            return
        process.refreshing = True
        self.emulator.release_worker(worker_id)
        process.popen.send_signal(signal.SIGTERM)

    def reload(self) -> None:
        """Ask every worker run by kit.worker.reloader to swap in the handler code it is told of."""
        from kit.worker.reload_events import RELOAD_SIGNAL

        for process in self.processes.values():
            if process.popen.poll() is None:
                process.popen.send_signal(RELOAD_SIGNAL)  # launch.py passes it on to the worker

    def restart(self, worker_dir: Path) -> None:
        """Drain and stop every worker, then start them again on `worker_dir`."""
        worker_ids = list(self.processes) or [f"worker-{n}" for n in range(1, self.count + 1)]
        for worker_id in self.processes:
            self.emulator.release_worker(worker_id)  # no new jobs for them from here on
        if self.emulator.health()["jobs"]["inProgress"] == 0:
            # Nothing to drain: skip the SDK's shutdown and the interpreter's teardown (seconds with torch).
            for process in self.processes.values():
                _kill_group(process)
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
                _kill_group(process)
            self.processes.clear()

    def remove_logs(self) -> None:
        """Remove the log folder (after `stop`), when nothing in it is worth keeping."""
        shutil.rmtree(self.log_dir, ignore_errors=True)


def _setup_failure_in_log(process: _Process) -> str | None:
    """The prestart failure runpod 2.0 logged (`prestart_failed | {json}`) since this process started, if any."""
    try:
        with open(process.log_path, "rb") as log:
            log.seek(process.log_offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    marker = f"{PRESTART_FAILED} | "
    for line in reversed(text.splitlines()):
        try:  # the SDK logs one JSON object a line on a worker ({"message": ...}), plain text elsewhere
            record = json.loads(line)
            message = record["message"] if isinstance(record, dict) else line
        except (ValueError, KeyError):
            message = line
        if not isinstance(message, str) or marker not in message:
            continue
        try:
            info, _ = json.JSONDecoder().raw_decode(message, message.index(marker) + len(marker))
        except ValueError:
            continue
        return prestart_failure(json.dumps(info))
    return None


def _startup_seconds(process: _Process, first_request: float) -> float:
    """From the process's start to its first job-take request (both time.monotonic())."""
    return max(0.0, first_request - process.spawned)


def _kill_group(process: _Process) -> None:
    kill_group(process.popen)
    if process.lifeline >= 0:
        os.close(process.lifeline)
        process.lifeline = -1  # never close a number the process may have reused


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
