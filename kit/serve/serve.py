"""`kit serve`: a local RunPod endpoint running the exported worker through the SDK's real loop.

A `QueueEmulator` speaks RunPod's endpoint API to clients; a `WorkerPool`
runs N unmodified ``python handler.py`` processes pointed at it through the
``RUNPOD_WEBHOOK_*`` env vars, restarts the ones that die (their jobs are
marked FAILED, never lost) and drains them on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import ast
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from kit import platform, workerdir
from kit.serve.emulator import QueueEmulator
from kit.serve.pool import WorkerPool
from kit.serve.routes import OPENAI_ROUTE


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

_output = threading.Lock()


def say_line(text: str) -> None:
    """One whole line on stdout: job lines come from the emulator's thread, reload lines from the main one."""
    with _output:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def serve(
    target: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    api_key: str | None = None,
    execution_timeout: float | None = None,
    watch: bool = False,
) -> int:
    """Serve `target` (a notebook or a worker directory) until Ctrl-C, SIGTERM or SIGHUP.

    The signal handlers only set an event; the supervision loop notices it and
    shuts down from one place, so a signal never interrupts the pool halfway
    through starting a worker.

    `execution_timeout` (seconds) is the endpoint's default policy.executionTimeout. `watch`:
    re-export the notebook on every save and reload the workers (kit.serve.watch).
    """
    from kit.export.export import worker_dir
    from kit.serve.watch import Watcher

    stopping = threading.Event()
    pools: list[WorkerPool] = []

    def on_worker_ready(worker_id: str, at: float) -> None:  # the emulator's thread
        if pools:
            pools[0].ready(worker_id, at)

    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        stopping.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        watcher = Watcher(target, say=say_line) if watch else None
        with (
            watcher.serving() if watcher else worker_dir(target) as path,
            QueueEmulator(
                host,
                port,
                api_key,
                on_job_end=lambda state: say_line(job_line(state)),
                on_worker_ready=on_worker_ready,
                say=say_line,
                execution_timeout=platform.EXECUTION_TIMEOUT if execution_timeout is None else execution_timeout,
            ) as emulator,
        ):
            log_dir = Path(tempfile.mkdtemp(prefix="kit-serve-logs-"))
            pool = WorkerPool(path, emulator, workers, log_dir=log_dir, say=say_line, **(watcher.pool_options() if watcher else {}))
            pools.append(pool)
            clean = False
            try:
                pool.start()
                _print_banner(path, emulator, workers, log_dir)
                if watcher:
                    say_line(f"watching {target}: every save reloads the workers")
                while not stopping.wait(watcher.tick if watcher else 0.2):
                    if watcher:
                        watcher.poll(pool)
                    else:
                        pool.check()
                print(f"stopping ({signal.Signals(received[0]).name}): draining jobs in flight", flush=True)
                # A second Ctrl-C cuts the drain short (the finally below still stops every worker).
                signal.signal(signal.SIGINT, signal.default_int_handler)
                clean = True
            finally:
                pool.stop()
                if clean and not pool.unexpected_exits:
                    pool.remove_logs()
                else:
                    print(f"worker logs kept in {log_dir}", flush=True)
        print("stopped", flush=True)
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serves_openai(path: Path) -> bool:
    """Whether the worker handles RunPod's OpenAI routes: its code (handler.py or a local module
    it copies) names the `openai_route` job key, or its test job carries one."""
    example = workerdir.example_job(path) or {}
    if isinstance(example.get("input"), dict) and OPENAI_ROUTE in example["input"]:
        return True
    for source in _worker_sources(path):
        try:
            tree = ast.parse(source.read_bytes())
        except (SyntaxError, ValueError, OSError, RecursionError):
            continue
        if any(isinstance(node, ast.Constant) and node.value == OPENAI_ROUTE for node in ast.walk(tree)):
            return True
    return False


def _worker_sources(path: Path, most: int = 200, largest: int = 2_000_000) -> list[Path]:
    """handler.py and the local modules the export copied (kit.json's files; in a worker written by
    hand, the .py files beside handler.py): inside the folder, regular files, bounded in number and size."""
    manifest = workerdir.Manifest.read(path)
    names = [n for n in manifest.files if isinstance(n, str)] if manifest else [p.name for p in path.glob("*.py")]
    root = path.resolve()
    found: list[Path] = []
    for name in [workerdir.HANDLER, *names]:
        if name != workerdir.HANDLER and name in workerdir.GENERATED:  # the kit's own files
            continue
        candidate = (path / name).resolve()
        if not candidate.is_relative_to(root):
            continue
        found += sorted(candidate.rglob("*.py")) if candidate.is_dir() else [candidate]
    return [p for p in dict.fromkeys(found) if p.suffix == ".py" and p.is_file() and p.stat().st_size <= largest][:most]


def _print_banner(path: Path, emulator: QueueEmulator, workers: int, log_dir: Path) -> None:
    example = workerdir.example_job(path) or {"input": {}}
    example = {k: v for k, v in example.items() if k != "id"}  # a client sends only the body: RunPod gives the job its id
    auth = f" -H 'Authorization: Bearer {emulator.api_key}'" if emulator.api_key else ""
    say_line(
        f"kit serve: {path}/handler.py on {workers} worker(s) (logs: {log_dir})\n"
        f"endpoint: {emulator.url}/v2/<any endpoint id>\n"
        f"  curl -X POST {emulator.url}/v2/local/runsync -H 'Content-Type: application/json'{auth}"
        f" -d '{json.dumps(example)}'\n"
        f"  python client: RUNPOD_ENDPOINT_BASE_URL={emulator.url}/v2, then runpod.Endpoint('local').run_sync(...)\n"
        + (f"  OpenAI client: openai.OpenAI(base_url='{emulator.url}/v2/local/openai/v1', api_key=...)\n" if serves_openai(path) else "")
        + "Ctrl-C to stop."
    )
