"""`kit test`'s jobs through the runpod SDK's own per-job path, as its worker loop runs a job it took.

The SDK's worker loop (``rp_scale.JobScaler``) takes a job (``get_jobs``: into
``jobs_queue`` and the ``JobsProgress`` set), starts it (``run_jobs``: a task
per job, kept in ``jobs_tasks``) and runs it with ``JobScaler.handle_job``,
which calls ``rp_job.handle_job``: the handler through ``run_job`` or
``run_job_generator``, each chunk posted to the job-stream URL, the result to
the job-done URL, and the SDK's per-job state cleared after the job
(rp_debugger's checkpoints, the job's place in JobsProgress, its task, the
log's batch id). A worker whose handler relies on that clearing (a
``@rp_debugger.FunctionTimer`` handler adds a checkpoint per call) works job
after job only on that path.

kit test has no queue to take jobs from, so `JobRunner.start` does the taking
the way ``get_jobs`` and ``run_jobs`` do (the SDK's own queue, set and task
map); the rest is the SDK's code. `ResultSink` receives what it posts, on
127.0.0.1: RUNPOD_WEBHOOK_POST_OUTPUT and RUNPOD_WEBHOOK_POST_STREAM point at
it (set before the worker's code imports runpod, which reads them once), with
the URL shapes RunPod gives a worker (``.../job-done/<worker>/<job>?...``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import socket
import threading
import types
import urllib.parse
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kit.worker.direct_calls import preview
from kit.workerdir import HandlerKind

DONE_ENV = "RUNPOD_WEBHOOK_POST_OUTPUT"
STREAM_ENV = "RUNPOD_WEBHOOK_POST_STREAM"
MAX_BODY = 64 * 1024 * 1024  # larger than any result RunPod accepts: the size check reports those
MAX_UPDATES_SHOWN = 20


@dataclass
class Posted:
    """What the SDK posted for one job: its streamed chunks, its progress updates, and its result."""

    chunks: list = field(default_factory=list)
    result: dict | None = None
    problems: list[str] = field(default_factory=list)  # posts that RunPod would not accept


class ResultSink:
    """The job-done and job-stream endpoints of kit test: each post is checked and kept by job id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posted: dict[str, Posted] = {}
        # Listening from now on (the URLs are known before runpod is imported); served from serve() on.
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]

    def environment(self) -> dict[str, str]:
        """The URLs the SDK posts to, as RunPod sets them for a worker ($ID: the job, $RUNPOD_POD_ID: the worker)."""
        base = f"http://127.0.0.1:{self.port}"
        return {
            DONE_ENV: f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=local",
            STREAM_ENV: f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=local",
        }

    def serve(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # not before the cold start is timed

        sink = self

        class Endpoint(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # one connection for all of a job's posts, as aiohttp keeps it

            def do_POST(self) -> None:
                status = sink._receive(self.path, self.headers.get("Content-Length"), self.rfile)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # the harness's log stays the worker's
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Endpoint, bind_and_activate=False)
        server.socket.close()
        server.socket = self._socket
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="kit-test-results", daemon=True).start()

    def take(self, job_id: str) -> Posted:
        with self._lock:
            return self._posted.pop(job_id, Posted())

    def _receive(self, path: str, length: str | None, body_file) -> int:
        url = urllib.parse.urlsplit(path)
        parts = url.path.strip("/").split("/")
        query = urllib.parse.parse_qs(url.query)
        if len(parts) != 3 or parts[0] not in ("job-done", "job-stream") or query.get("isStream", [""])[0] not in ("true", "false"):
            return 404
        try:
            size = int(length or "")
        except ValueError:
            return 411
        if not 0 <= size <= MAX_BODY:
            return 413
        try:
            body = json.loads(body_file.read(size))
        except ValueError:
            body = None
        job_id = urllib.parse.unquote(parts[2])
        with self._lock:
            posted = self._posted.setdefault(job_id, Posted())
            if not isinstance(body, dict):
                posted.problems.append(f"the SDK posted a {parts[0]} body that is not a JSON object")
            elif parts[0] == "job-stream":
                posted.chunks.append(body.get("output"))
            elif body.get("status") != "IN_PROGRESS":  # a progress update (kit test records those itself)
                if posted.result is not None:
                    posted.problems.append("the SDK posted a second result for the job")
                posted.result = body
        return 200


def install(sink: ResultSink) -> None:
    """Point the SDK's result URLs at `sink` (before runpod is imported: it reads them once)."""
    os.environ.update(sink.environment())


class Returned:
    """What the handler itself gave for each job, by job id: its value, or the chunks it yielded.

    The checks of a result (JSON, size, NaN) read these Python objects: a result
    the SDK cannot serialise never reaches the sink. The stand-in is of the
    handler's own kind, as the SDK tells kinds apart (`is_generator`, awaiting).
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def take(self, job_id: str, default: Any = None) -> Any:
        return self._values.pop(job_id, default)

    def wrap(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        values = self._values
        kind = HandlerKind.of(handler)
        recorded: Callable[..., Any]  # of the handler's kind: one variant per branch
        if kind is HandlerKind.ASYNC_GENERATOR:

            async def recorded(job):
                chunks = values[job["id"]] = []
                async for chunk in handler(job):
                    chunks.append(chunk)
                    yield chunk

        elif kind is HandlerKind.GENERATOR:

            def recorded(job):
                chunks = values[job["id"]] = []
                for chunk in handler(job):
                    chunks.append(chunk)
                    yield chunk

        elif kind is HandlerKind.ASYNC:

            async def recorded(job):
                value = values[job["id"]] = await handler(job)
                return value

        else:

            def recorded(job):
                value = handler(job)
                if inspect.isawaitable(value):
                    return _recorded(value, values, job["id"])
                values[job["id"]] = value
                return value

        return functools.wraps(handler)(recorded)


async def _recorded(awaitable, values: dict, job_id: str):
    value = values[job_id] = await awaitable
    return value


class JobRunner:
    """Takes jobs into one of the SDK's JobScalers and runs each through its handle_job."""

    def __init__(self, config: dict, sink: ResultSink):
        from runpod.serverless.modules import rp_scale

        self.sink = sink
        self.scaler = rp_scale.JobScaler(config)
        self._session = None

    async def open(self):
        """The session the SDK posts with, opened once (as its worker loop does, before any job)."""
        if self._session is None:
            import aiohttp
            from runpod.user_agent import USER_AGENT

            # The SDK's AsyncClientSession, less the Authorization header: the posts stay on this machine.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
                timeout=aiohttp.ClientTimeout(600),
            )
            if getattr(self.scaler, "prestart_hooks", None):
                # runpod 2.0: hooks the worker's setup registered run before any job is handled, as
                # JobScaler.run starts them; a failed one fails each job through the SDK's own path.
                await self.scaler._run_prestart()
        return self._session

    async def start(self, job: dict) -> asyncio.Task:
        """What get_jobs and run_jobs do with a job the queue gave: queue it, track it, start its task."""
        session = await self.open()
        scaler = self.scaler
        await scaler.jobs_queue.put(job)
        scaler.job_progress.add(job)
        taken = await scaler.jobs_queue.get()
        task = asyncio.ensure_future(scaler.handle_job(session, taken))
        scaler.jobs_tasks[taken["id"]] = task
        return task

    async def run(self, job: dict) -> Posted:
        """One job, start to end; what the SDK posted for it (`result` None if nothing was posted)."""
        await (await self.start(job))
        return self.sink.take(job["id"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def clear_per_job_state() -> None:
    """What the SDK's handle_job clears after every job (unless --rp_debugger asks for its report):
    rp_debugger's checkpoints. For a test cell's direct call of handler(job), which is a job too."""
    from runpod.serverless.utils import rp_debugger

    rp_debugger.clear_debugger_output()


class ProgressUpdates:
    """`runpod.serverless.progress_update(job, progress)` during kit test: recorded, not posted.

    The SDK posts each update from a thread of its own, which may land after
    its job (or test cell) ended; recorded at once, the report shows each
    update under the cell or job that sent it, in order.
    """

    def __init__(self) -> None:
        self.current: list | None = None

    def install(self) -> None:
        from runpod.serverless.modules import rp_progress

        updates = self

        class InlineThread:  # progress_update posts from a thread: record at once, in order
            def __init__(self, target=None, args=(), kwargs=None, daemon=None):
                self._args = args

            def start(self):
                job, progress = self._args
                if updates.current is not None:
                    updates.current.append(preview(progress))

        rp_progress.threading = types.SimpleNamespace(Thread=InlineThread)

    @contextmanager
    def capturing(self):
        captured = _Updates()
        self.current = captured.items
        try:
            yield captured
        finally:
            self.current = None


class _Updates:
    def __init__(self) -> None:
        self.items: list[str] = []

    def fields(self) -> dict:
        return {"progress": self.items[:MAX_UPDATES_SHOWN], "progress_count": len(self.items)} if self.items else {}
