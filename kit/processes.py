"""Child processes the kit starts (the `kit test` harness, `kit serve`'s workers): one way to end them."""

from __future__ import annotations

import os
import signal
import subprocess


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
