"""A local RunPod queue: the endpoint API clients call, the worker API the SDK's loop speaks.

`QueueEmulator` plays the part of RunPod's managed queue for `kit serve`,
`kit bench` and tests. Clients talk to it exactly as to
``https://api.runpod.ai/v2`` (``/run``, ``/runsync``, ``/status``, ``/stream``,
``/cancel``, ``/health``, ``/purge-queue``, any endpoint id); real worker
processes, pointed at it by `QueueEmulator.worker_env`, run the SDK's own
worker loop against its ``job-take``/``job-take-batch``, ``job-done``,
``job-stream``, ``job-stop`` and ``ping`` routes.

The server runs on its own event loop in a background thread; the public
methods are thread-safe and blocking. All state lives on that loop, so no
locks: every change happens in a coroutine or callback on it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from kit.errors import KitError

FINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

# How long results stay fetchable after a job ends, as on RunPod: 30 minutes
# for /run, 1 minute for /runsync.
RETENTION_RUN = 30 * 60.0
RETENTION_RUNSYNC = 60.0

# A worker's job-take and job-stop requests are held open this long before a
# 204: an immediate 204 makes the SDK spin (its own timeout is 90 s).
LONG_POLL = 20.0

# /runsync answers with the job's current status after this long, as RunPod
# does; `?wait=<ms>` overrides it per request.
RUNSYNC_WAIT = 90.0

_ABSENT = object()


@dataclass(eq=False)
class _Job:
    id: str
    input: Any
    extra: dict  # other request fields (webhook, policy, ...): they reach the handler's job dict
    sync: bool
    submitted: float
    done: asyncio.Event
    status: str = "IN_QUEUE"
    output: Any = _ABSENT
    error: Any = _ABSENT
    unread: list = field(default_factory=list)  # stream chunks not yet fetched by /stream
    worker: str | None = None
    taken: float | None = None
    finished: float | None = None
    done_posts: int = 0

    def state(self) -> dict:
        """The job as /status shows it."""
        state: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.taken is not None:
            state["delayTime"] = round((self.taken - self.submitted) * 1000)
            if self.finished is not None:
                state["executionTime"] = round((self.finished - self.taken) * 1000)
        if self.worker is not None:
            state["workerId"] = self.worker
        if self.output is not _ABSENT:
            state["output"] = self.output
        if self.error is not _ABSENT:
            state["error"] = self.error
        return state


@dataclass(eq=False)
class _Worker:
    id: str
    jobs: set = field(default_factory=set)  # ids of jobs in flight
    stops: list = field(default_factory=list)  # job ids to send on the stop channel
    cancelled: set = field(default_factory=set)  # stopped jobs its pings may still list
    stop_wake: asyncio.Event = field(default_factory=asyncio.Event)
    first_request: float | None = None  # first job-take: the worker is up
    first_job: float | None = None
    last_ping: float | None = None
    released: bool = False  # shutting down or gone: no more jobs for it
    refresh: bool = False  # its last job asked for stopPod (refresh_worker)


@dataclass
class Counters:
    """What happened to every job since the emulator started."""

    submitted: int = 0
    taken: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    duplicate_results: int = 0  # a second job-done for a finished job: must stay 0
    unknown_results: int = 0  # job-done for a job id the queue never issued


class QueueEmulator:
    """RunPod's queue, locally. See the module docstring; use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        endpoint_id: str = "local",
        long_poll: float = LONG_POLL,
        runsync_wait: float = RUNSYNC_WAIT,
        on_job_end: Callable[[dict], None] | None = None,
    ):
        self.host = host
        self.port = port
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.long_poll = long_poll
        self.runsync_wait = runsync_wait
        self.on_job_end = on_job_end
        self.counters = Counters()
        # The key workers present (RUNPOD_AI_API_KEY), distinct from the client key.
        self._worker_key = secrets.token_hex(16)
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Job] = deque()
        self._workers: dict[str, _Worker] = {}
        self._arrival: asyncio.Future | None = None  # resolved when jobs arrive
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._expiry: asyncio.Task | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "QueueEmulator":
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._start_server())
            except BaseException as error:  # reported to the caller of start()
                failure.append(error)
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._finish_leftover_tasks()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="kit-queue-emulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            error = failure[0]
            if isinstance(error, OSError):
                raise KitError(
                    f"cannot listen on {self.host}:{self.port}: {error.strerror or error}",
                    "pick another port with --port",
                ) from error
            raise error
        return self

    def _finish_leftover_tasks(self) -> None:
        """Cancel and await the request handlers cleanup left cancelling (a client still waiting on
        /runsync): closing the loop over them prints "Task was destroyed but it is pending!"."""
        leftover = asyncio.all_tasks(self._loop)
        for task in leftover:
            task.cancel()
        if leftover:
            self._loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))

    def stop(self) -> None:
        """Answer every open long-poll, close the server and end the thread."""
        if self._thread is None:
            return
        self._call(self._close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> "QueueEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _start_server(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._arrival = self._loop.create_future()
        self._expiry = self._loop.create_task(self._expire_results())

    def _close(self) -> None:
        self._closing = True
        self._expiry.cancel()
        self._wake_takers()
        for worker in self._workers.values():
            worker.stop_wake.set()

    def _call(self, function: Callable, *args) -> Any:
        """Run `function(*args)` on the emulator's loop and return its result."""

        async def call():
            result = function(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    # ----------------------------------------------------------- public API
    def worker_env(self, worker_id: str) -> dict[str, str]:
        """Env vars that point a real `runpod` worker process at this queue as `worker_id`."""
        self._call(self._worker, worker_id)
        base = f"{self.url}/v2/{self.endpoint_id}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=local",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=local",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=local",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=local",
            "RUNPOD_AI_API_KEY": self._worker_key,
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_PING_INTERVAL": "2000",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }

    def submit(self, request: dict, *, sync: bool = False) -> str:
        """Enqueue a job as `POST /v2/<ep>/run` would; returns its id."""
        return self._call(self._submit, request, sync).id

    def wait(self, job_id: str, timeout: float = 60.0) -> dict:
        """Block until the job ends (or `timeout` passes); return its /status dict."""

        async def wait():
            job = self._jobs[job_id]
            try:
                await asyncio.wait_for(job.done.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            return job.state()

        return self._call(wait)

    def status(self, job_id: str) -> dict:
        return self._call(lambda: self._jobs[job_id].state())

    def health(self) -> dict:
        return self._call(self._health)

    def cpu_time(self) -> float:
        """CPU seconds the emulator's thread has used: its own overhead, apart from the client's and workers'."""
        return self._call(time.thread_time)

    def worker_times(self, worker_id: str) -> dict:
        """Monotonic times of the worker's first job-take request and first job taken (None if not yet)."""

        def times():
            worker = self._worker(worker_id)
            return {"first_request": worker.first_request, "first_job": worker.first_job}

        return self._call(times)

    def release_worker(self, worker_id: str) -> None:
        """The worker is shutting down: hand it no more jobs and answer its open polls."""

        def release():
            worker = self._worker(worker_id)
            worker.released = True
            worker.stop_wake.set()
            self._wake_takers()

        self._call(release)

    def worker_exited(self, worker_id: str, reason: str) -> list[str]:
        """The worker process is gone: fail the jobs it held (never lose them silently).

        Returns the ids of the jobs marked FAILED. Its id may be used again by
        a new process: the record starts over.
        """

        def exited():
            worker = self._workers.pop(worker_id, None)
            if worker is None:
                return []
            lost = sorted(worker.jobs)
            for job_id in lost:
                self._finish(self._jobs[job_id], "FAILED", error=f"worker {worker_id} {reason} while running this job")
            self._wake_takers()
            return lost

        return self._call(exited)

    def expected_exit(self, worker_id: str) -> bool:
        """Whether the worker's last job asked it to stop (`refresh_worker`)."""
        return self._call(lambda: self._worker(worker_id).refresh)

    # -------------------------------------------------------------- state
    def _worker(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            worker = self._workers[worker_id] = _Worker(worker_id)
        return worker

    def _submit(self, request: dict, sync: bool) -> _Job:
        extra = {k: v for k, v in request.items() if k not in ("id", "input")}
        prefix = "sync-" if sync else ""
        job = _Job(
            id=f"{prefix}{uuid.uuid4()}-e1",
            input=request["input"],
            extra=extra,
            sync=sync,
            submitted=time.monotonic(),
            done=asyncio.Event(),
        )
        self._jobs[job.id] = job
        self._queue.append(job)
        self.counters.submitted += 1
        self._wake_takers()
        return job

    def _wake_takers(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
            self._arrival = self._loop.create_future()

    def _take(self, worker: _Worker, count: int) -> list[dict]:
        now = time.monotonic()
        taken = []
        while self._queue and len(taken) < count:
            job = self._queue.popleft()
            job.status, job.worker, job.taken = "IN_PROGRESS", worker.id, now
            worker.jobs.add(job.id)
            self.counters.taken += 1
            taken.append({"id": job.id, "input": job.input, **job.extra})
        if taken and worker.first_job is None:
            worker.first_job = now
        return taken

    def _finish(self, job: _Job, status: str, *, output: Any = _ABSENT, error: Any = _ABSENT) -> None:
        job.status, job.finished = status, time.monotonic()
        if output is not _ABSENT:
            job.output = output
        if error is not _ABSENT:
            job.error = error
        if job.worker is not None and job.worker in self._workers:
            self._workers[job.worker].jobs.discard(job.id)
        counter = {"COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled"}[status]
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        job.done.set()
        if self.on_job_end is not None:
            self.on_job_end(job.state())

    def _cancel(self, job: _Job) -> None:
        if job.status in FINAL_STATUSES:
            return
        if job.status == "IN_QUEUE":
            self._queue.remove(job)
        elif job.worker in self._workers:
            self._signal_stop(self._workers[job.worker], job.id)
        self._finish(job, "CANCELLED")

    def _signal_stop(self, worker: _Worker, job_id: str) -> None:
        if job_id not in worker.stops:
            worker.stops.append(job_id)
        worker.cancelled.add(job_id)
        worker.stop_wake.set()

    def _health(self) -> dict:
        in_queue = len(self._queue)
        in_progress = sum(1 for job in self._jobs.values() if job.status == "IN_PROGRESS")
        alive = [w for w in self._workers.values() if not w.released]
        running = sum(1 for w in alive if w.jobs)
        ready = sum(1 for w in alive if w.first_request is not None)
        return {
            "jobs": {
                "completed": self.counters.completed,
                "failed": self.counters.failed,
                "inProgress": in_progress,
                "inQueue": in_queue,
                "retried": 0,
            },
            "workers": {
                "idle": ready - running,
                "initializing": len(alive) - ready,
                "ready": ready,
                "running": running,
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    async def _expire_results(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            expired = [
                job_id
                for job_id, job in self._jobs.items()
                if job.finished is not None
                and now - job.finished > (RETENTION_RUNSYNC if job.sync else RETENTION_RUN)
            ]
            for job_id in expired:
                del self._jobs[job_id]

    # ------------------------------------------------------------- routes
    def _routes(self, app: web.Application) -> None:
        client = [
            ("POST", "/v2/{endpoint}/run", self._handle_run),
            ("POST", "/v2/{endpoint}/runsync", self._handle_runsync),
            ("GET", "/v2/{endpoint}/status/{job}", self._handle_status),
            ("POST", "/v2/{endpoint}/status/{job}", self._handle_status),
            ("GET", "/v2/{endpoint}/stream/{job}", self._handle_stream),
            ("POST", "/v2/{endpoint}/stream/{job}", self._handle_stream),
            ("POST", "/v2/{endpoint}/cancel/{job}", self._handle_cancel),
            ("GET", "/v2/{endpoint}/health", self._handle_health),
            ("POST", "/v2/{endpoint}/purge-queue", self._handle_purge),
        ]
        worker = [
            ("GET", "/v2/{endpoint}/job-take/{worker}", self._handle_take),
            ("GET", "/v2/{endpoint}/job-take-batch/{worker}", self._handle_take_batch),
            ("GET", "/v2/{endpoint}/job-stop/{worker}", self._handle_stop),
            ("POST", "/v2/{endpoint}/job-done/{worker}/{job}", self._handle_done),
            ("POST", "/v2/{endpoint}/job-stream/{worker}/{job}", self._handle_stream_post),
            ("GET", "/v2/{endpoint}/ping/{worker}", self._handle_ping),
        ]
        for method, path, handler in client:
            app.router.add_route(method, path, self._client_auth(handler))
        for method, path, handler in worker:
            app.router.add_route(method, path, self._worker_auth(handler))

    def _client_auth(self, handler):
        async def checked(request: web.Request) -> web.StreamResponse:
            if self.api_key is not None:
                sent = request.headers.get("Authorization", "")
                if sent.removeprefix("Bearer ").strip() != self.api_key:
                    return web.json_response({"error": "Unauthorized"}, status=401)
            return await handler(request)

        return checked

    def _worker_auth(self, handler):
        async def checked(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") != self._worker_key:
                return web.json_response({"error": "Unauthorized"}, status=401)
            return await handler(request)

        return checked

    async def _job_request(self, request: web.Request) -> dict | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "request body is not valid JSON"}, status=400)
        if not isinstance(body, dict) or "input" not in body:
            return web.json_response({"error": 'request body must be a JSON object with an "input" key'}, status=400)
        return body

    def _known_job(self, request: web.Request) -> _Job | web.Response:
        job = self._jobs.get(request.match_info["job"])
        if job is None:
            return web.json_response({"error": "request does not exist"}, status=404)
        return job

    async def _handle_run(self, request: web.Request) -> web.Response:
        body = await self._job_request(request)
        if isinstance(body, web.Response):
            return body
        job = self._submit(body, sync=False)
        return web.json_response({"id": job.id, "status": job.status})

    async def _handle_runsync(self, request: web.Request) -> web.Response:
        body = await self._job_request(request)
        if isinstance(body, web.Response):
            return body
        job = self._submit(body, sync=True)
        wait = self.runsync_wait
        if "wait" in request.query:
            wait = float(request.query["wait"]) / 1000
        try:
            await asyncio.wait_for(job.done.wait(), wait)
        except asyncio.TimeoutError:
            pass
        return web.json_response(job.state())

    async def _handle_status(self, request: web.Request) -> web.Response:
        job = self._known_job(request)
        if isinstance(job, web.Response):
            return job
        return web.json_response(job.state())

    async def _handle_stream(self, request: web.Request) -> web.Response:
        job = self._known_job(request)
        if isinstance(job, web.Response):
            return job
        chunks, job.unread = job.unread, []
        return web.json_response({"id": job.id, "status": job.status, "stream": chunks})

    async def _handle_cancel(self, request: web.Request) -> web.Response:
        job = self._known_job(request)
        if isinstance(job, web.Response):
            return job
        self._cancel(job)
        return web.json_response({"id": job.id, "status": job.status})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self._health())

    async def _handle_purge(self, request: web.Request) -> web.Response:
        queued = list(self._queue)
        for job in queued:
            self._cancel(job)
        return web.json_response({"removed": len(queued), "status": "completed"})

    async def _handle_take(self, request: web.Request) -> web.Response:
        taken = await self._long_poll_take(request, 1)
        return web.json_response(taken[0]) if taken else web.Response(status=204)

    async def _handle_take_batch(self, request: web.Request) -> web.Response:
        taken = await self._long_poll_take(request, int(request.query.get("batch_size", "1")))
        return web.json_response(taken) if taken else web.Response(status=204)

    async def _long_poll_take(self, request: web.Request, count: int) -> list[dict]:
        """Up to `count` jobs for the worker, waiting for the first one up to the long-poll time."""
        worker = self._worker(request.match_info["worker"])
        if worker.first_request is None:
            worker.first_request = time.monotonic()
        deadline = time.monotonic() + self.long_poll
        while not (self._closing or worker.released):
            if request.transport is None or request.transport.is_closing():
                return []  # the worker hung up: keep the jobs queued for another
            taken = self._take(worker, count)
            if taken:
                return taken
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(asyncio.shield(self._arrival), remaining)
            except asyncio.TimeoutError:
                return []
        if worker.released and not self._closing:
            # Its loop is stopping; a short hold keeps it from spinning until it notices.
            await asyncio.sleep(0.5)
        return []

    async def _handle_stop(self, request: web.Request) -> web.Response:
        worker = self._worker(request.match_info["worker"])
        if not worker.stops and not (self._closing or worker.released):
            try:
                await asyncio.wait_for(worker.stop_wake.wait(), self.long_poll)
            except asyncio.TimeoutError:
                pass
        worker.stop_wake.clear()
        if not worker.stops:
            if worker.released and not self._closing:
                await asyncio.sleep(0.5)
            return web.Response(status=204)
        stops, worker.stops = worker.stops, []
        return web.json_response({"jobsToStop": stops})

    async def _worker_post(self, request: web.Request) -> tuple[_Job | None, Any]:
        """The job and the JSON body of a job-done/job-stream post (the SDK sends raw JSON)."""
        body = json.loads(await request.text())
        return self._jobs.get(request.match_info["job"]), body

    async def _handle_done(self, request: web.Request) -> web.Response:
        try:
            job, body = await self._worker_post(request)
        except ValueError:
            return web.json_response({"error": "result is not valid JSON"}, status=400)
        if job is None:
            self.counters.unknown_results += 1
            return web.json_response({"error": "request does not exist"}, status=404)
        if body.get("stopPod"):
            self._worker(request.match_info["worker"]).refresh = True
        if body.get("status") == "IN_PROGRESS":  # runpod.serverless.progress_update
            if job.status == "IN_PROGRESS":
                job.output = body.get("output")
            return web.json_response({})
        job.done_posts += 1
        if job.done_posts > 1:
            self.counters.duplicate_results += 1
        if job.status in FINAL_STATUSES:  # cancelled, or the worker was declared dead
            return web.json_response({})
        output = body.get("output", _ABSENT)
        if body.get("error"):
            self._finish(job, "FAILED", output=output, error=body["error"])
        else:
            self._finish(job, "COMPLETED", output=output)
        return web.json_response({})

    async def _handle_stream_post(self, request: web.Request) -> web.Response:
        try:
            job, body = await self._worker_post(request)
        except ValueError:
            return web.json_response({"error": "stream chunk is not valid JSON"}, status=400)
        if job is None:
            return web.json_response({"error": "request does not exist"}, status=404)
        if job.status == "IN_PROGRESS":
            job.unread.append({"output": body.get("output")})
        return web.json_response({})

    async def _handle_ping(self, request: web.Request) -> web.Response:
        worker = self._worker(request.match_info["worker"])
        worker.last_ping = time.monotonic()
        # A stop that reached the SDK before the job's task existed is dropped
        # there; while the worker still reports the job, send the stop again.
        running = set(filter(None, request.query.get("job_id", "").split(",")))
        for job_id in list(worker.cancelled):
            if job_id in running:
                self._signal_stop(worker, job_id)
            else:
                worker.cancelled.discard(job_id)
        return web.json_response({})
