"""Runs one worker process for `kit serve` / `kit bench` and takes it down with the kit.

    python launch.py LIFELINE_FD LOG_PATH -- COMMAND...

The pool starts this script (standard library only) in a session of its own;
it starts COMMAND (``python handler.py``, unchanged) in the same process group
and watches LIFELINE_FD, the read end of a pipe whose only write end the kit
holds. When the kit dies in any way (SIGKILL, SIGHUP, a crash), the kernel
closes that end; this script then SIGKILLs its whole group (the worker, the
SDK's heartbeat process, whatever the handler started), removes the worker's
log and, if it was the last one, the log folder, and exits. SIGTERM, SIGINT
and SIGHUP are passed on to the worker, so the SDK drains as it would on
RunPod (and SIGUSR1, kit serve --watch's reload). Its exit status is the worker's (a worker killed by signal N makes it
die of signal N too); before exiting it kills what the worker left in the group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the worker, before exec: SIGKILL it if this launcher dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _kill_rest_of_group() -> None:
    """SIGKILL every other process in this process group (found through /proc)."""
    me, group = os.getpid(), os.getpgid(0)
    for _ in range(5):  # a process may fork while we look
        found = False
        try:
            pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
        except OSError:
            return
        for pid in pids:
            if pid == me:
                continue
            try:
                if os.getpgid(pid) == group:
                    os.kill(pid, signal.SIGKILL)
                    found = True
            except OSError:
                pass
        if not found:
            return


def _remove_log(log_path: str) -> None:
    try:
        os.unlink(log_path)
        os.rmdir(os.path.dirname(log_path))  # only when it was the last log in the folder
    except OSError:
        pass


def main(argv: list[str]) -> int:
    lifeline, log_path, separator, *command = argv
    assert separator == "--" and command, "usage: launch.py LIFELINE_FD LOG_PATH -- COMMAND..."
    fd = int(lifeline)
    worker = subprocess.Popen(command, preexec_fn=_die_with_parent, close_fds=True)

    def forward(signum, frame):
        try:
            worker.send_signal(signum)
        except OSError:
            pass

    # SIGUSR1: kit serve --watch's warm reload (kit.worker.reloader); only sent to workers it runs.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, forward)

    def watch() -> None:
        try:
            while os.read(fd, 64):
                pass
        except OSError:
            pass
        # The kit is gone: nothing may outlive it, not even its logs.
        _kill_rest_of_group()
        _remove_log(log_path)
        os._exit(137)

    threading.Thread(target=watch, name="kit-lifeline", daemon=True).start()
    code = worker.wait()
    _kill_rest_of_group()
    if code < 0:  # die of the same signal, so the pool reports the worker's own exit status
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # SIGKILL, SIGSTOP: no handler to reset
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
