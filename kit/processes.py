"""Child processes the kit starts (the `kit test` harness, `kit serve`'s workers): one way to end them."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def kill_group(popen: subprocess.Popen) -> None:
    """SIGKILL the process group `popen` leads (started with start_new_session), then reap it.

    The whole group: whatever the worker started (the SDK's heartbeat process, a user's
    subprocess) goes with it.
    """
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone
    popen.wait()


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), so `end_descendants` finds them all.

    A daemon the worker starts (fork, setsid, fork again) leaves the process group
    that `kill_group` ends, and its parent exits: without this it is re-parented to
    init and runs on after the kit is done. False where prctl is not available.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _children_by_parent() -> dict[int, list[tuple[int, str]]]:
    """{parent pid: [(pid, command name), ...]} of the live (not zombie) processes, read from /proc."""
    found: dict[int, list[tuple[int, str]]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as stat:
                text = stat.read()
        except OSError:
            continue  # gone meanwhile
        command, _, rest = text[text.index("(") + 1 :].rpartition(")")
        fields = rest.split()
        if len(fields) > 1 and fields[0] != "Z":
            found.setdefault(int(fields[1]), []).append((int(name), command))
    return found


def end_descendants() -> list[str]:
    """SIGKILL every process descended from this one, reap them; "PID (name)" of each one ended.

    Bounded: a descendant that keeps forking is looked for again a few times.
    """
    me, ended = os.getpid(), []
    for _ in range(20):
        children = _children_by_parent()
        found, parents = [], [me]
        while parents:
            for pid, command in children.get(parents.pop(), []):
                found.append((pid, command))
                parents.append(pid)
        for pid, command in found:
            try:
                os.kill(pid, signal.SIGKILL)
                ended.append(f"{pid} ({command})")
            except OSError:
                pass
        _reap_children()
        if not found:
            break
    return list(dict.fromkeys(ended))


def _reap_children() -> None:
    """Collect the exit status of every child that has ended (killed ones become zombies until then)."""
    for _ in range(200):  # bounded: SIGKILL takes effect at once, but is delivered asynchronously
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not _children_by_parent().get(os.getpid()):
                return
            time.sleep(0.005)
