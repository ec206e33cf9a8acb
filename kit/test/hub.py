"""`kit test DIR` on a repository: `.runpod/tests.json` run as the RunPod Hub runs it.

The Hub starts the worker on a fresh endpoint, sends each test's `input` as a job and
passes the test when the job completes (HTTP 200, status COMPLETED) within its
`timeout` (ms). Here the endpoint is `kit serve`'s: a QueueEmulator and one worker
process running the unmodified `python handler.py` (the SDK's own loop) with the env
of tests.json's `config.env`. The first test's time includes the worker's cold start,
as on the Hub. One line per test; hub.json and tests.json are checked first
(kit.export.hub), and a broken one is a one-line KitError naming the file and where.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kit import platform
from kit.errors import KitEnvironmentError, KitError
from kit.export import hub

DEFAULT_TIMEOUT_MS = 300_000  # the Hub's when a test gives none is not documented; the kit assumes 5 minutes
POLL = 0.25  # seconds between checks of the worker process while a job runs


@dataclass
class HubTest:
    name: str
    status: str  # COMPLETED, FAILED, TIMED_OUT (here: not done within its timeout), ...
    seconds: float
    timeout: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "COMPLETED" and self.seconds <= self.timeout

    def line(self) -> str:
        mark = "PASS" if self.ok else "FAIL"
        text = f"{mark}  hub test {self.name}  {self.seconds:.1f} s of {self.timeout:.0f} s  {self.status}"
        if self.error:
            text += f"  {self.error}"
        elif self.ok and self.seconds > self.timeout / 2:
            text += "  (less than 2x headroom: raise its timeout)"
        return text


def has_hub_tests(directory: Path) -> bool:
    return (directory / hub.TESTS).exists()


def run_hub_tests(directory: Path, say: Callable[[str], None] = print) -> list[HubTest]:
    """Run every test of `directory`/.runpod/tests.json through the local endpoint, in order."""
    from kit.serve.emulator import QueueEmulator
    from kit.serve.pool import WorkerPool

    checked = hub.read_repo(directory)
    if checked is None:
        raise KitError(f"{directory}: no {hub.TESTS}", "export with --repo to write one")
    hub_json, tests = checked
    env = {str(item["key"]): _env_value(item["value"]) for item in tests["config"].get("env", [])}
    # The worker's own env inputs come from tests.json alone, as on the Hub: not from this shell.
    declared = {str(item["key"]) for item in hub_json["config"].get("env", [])}
    base = {key: value for key, value in os.environ.items() if key not in declared}
    results: list[HubTest] = []
    with tempfile.TemporaryDirectory(prefix="kit-hub-logs-") as logs, QueueEmulator("127.0.0.1", 0, say=lambda _: None) as emulator:
        pool = WorkerPool(directory, emulator, 1, log_dir=Path(logs), env=env, say=lambda _: None, base_env=base)
        pool.start()
        try:
            for test in tests["tests"]:
                results.append(_run_one(test, emulator, pool))
                say(results[-1].line())
        except KitEnvironmentError as error:  # its log goes with the temporary folder: say what the Hub would need
            raise KitEnvironmentError(
                f"{directory / hub.TESTS}: the worker did not start: {error.message}",
                "the Hub starts it with the env of tests.json's config.env only: give there what the setup reads",
            ) from None
        finally:
            pool.stop()
    return results


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _run_one(test: dict, emulator, pool) -> HubTest:
    timeout = test.get("timeout", DEFAULT_TIMEOUT_MS) / 1000
    started = time.monotonic()
    job_id = emulator.submit({"input": test["input"]})
    state: dict = {}
    while True:
        left = started + timeout - time.monotonic()
        state = emulator.wait(job_id, timeout=max(0.0, min(POLL, left)))
        if state.get("status") in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") or left <= 0:
            break
        pool.check()  # a worker that died is restarted (its job FAILED), one that cannot start raises
    seconds = time.monotonic() - started
    status = str(state.get("status", "UNKNOWN"))
    error = platform.error_summary(state["error"]) if "error" in state else None
    if status not in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
        error = f"not done within its timeout of {test.get('timeout', DEFAULT_TIMEOUT_MS)} ms (still {status})"
        status = "TIMED_OUT"
    return HubTest(str(test["name"]), status, seconds, timeout, error)
