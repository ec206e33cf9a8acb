"""A local RunPod queue: the endpoint API clients call, the worker API the SDK's loop speaks.

`QueueEmulator` plays the part of RunPod's managed queue for `kit serve`,
`kit bench` and tests. Clients talk to it exactly as to
``https://api.runpod.ai/v2`` (any endpoint id); real worker processes,
pointed at it by `QueueEmulator.worker_env`, run the SDK's own worker loop
against its worker routes.

Three layers: `kit.serve.queue` is the job and worker state machine (plain
synchronous code), `kit.serve.routes` the aiohttp routes over it, and this
module the host: an event loop in a background thread that runs the server,
ticks the queue's clock, posts webhooks, and offers thread-safe blocking
methods. All state lives on that loop, so no locks.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from kit import platform
from kit.errors import KitEnvironmentError, KitError
from kit.serve.queue import (  # noqa: F401  (FINAL_STATUSES: part of this module's API, bench reads it)
    FINAL_STATUSES,
    PING_TIMEOUT,
    Counters,
    Event,
    Queue,
)
from kit.serve.routes import BODY_LIMIT, EndpointAPI, Waiters

log = logging.getLogger("kit.serve")

# A worker's job-take and job-stop requests are held open this long before a
# 204: an immediate 204 makes the SDK spin (its own timeout is 90 s).
LONG_POLL = 20.0

# /stream holds a request this long for new chunks (the SDK's client times out at 10 s).
STREAM_HOLD = 5.0

# How long one webhook delivery may take (RunPod's retries and their delay: kit.platform).
WEBHOOK_TIMEOUT = 10.0

# How often the queue's clock is checked (timeouts, TTLs, missed pings).
TICK = 0.25

# A request body that has not fully arrived after this long is answered 408 (slow clients).
IDLE_TIMEOUT = 75.0
# A request line and headers must arrive within this long of the connection opening (or of the
# previous response on a kept-alive connection), else the connection is closed: a client that sends
# half a request holds no connection for long. An idle kept-alive connection is closed after as long.
HEADER_TIMEOUT = 15.0


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
        runsync_wait: float = platform.RUNSYNC_WAIT,
        stream_hold: float = STREAM_HOLD,
        execution_timeout: float = platform.EXECUTION_TIMEOUT,
        ping_timeout: float = PING_TIMEOUT,
        webhook_retry_delay: float = platform.WEBHOOK_RETRY_DELAY,
        idle_timeout: float = IDLE_TIMEOUT,
        header_timeout: float = HEADER_TIMEOUT,
        on_job_end: Callable[[dict], None] | None = None,
        on_worker_ready: Callable[[str, float], None] | None = None,
        say: Callable[[str], None] = lambda line: None,
    ):
        if api_key is not None and not api_key.strip():
            raise KitError("--api-key is empty, which would turn authentication off", "give a key, or leave --api-key out")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.endpoint_id = endpoint_id
        self.on_job_end = on_job_end
        self.on_worker_ready = on_worker_ready  # (worker id, monotonic time of its first job-take request)
        self.say = say
        self.webhook_retry_delay = webhook_retry_delay
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.webhooks: list[dict] = []  # one record per delivery attempt
        self._waiters = Waiters()
        try:
            self.queue = Queue(notify=self._notify, execution_timeout=execution_timeout, ping_timeout=ping_timeout)
        except ValueError as error:
            raise KitError(str(error), "--execution-timeout takes seconds, 5 to 604800") from None
        # The key workers present (RUNPOD_AI_API_KEY), distinct from the client key.
        self._worker_key = secrets.token_hex(16)
        self._api = EndpointAPI(
            self.queue,
            self._waiters,
            api_key=api_key,
            worker_key=self._worker_key,
            long_poll=long_poll,
            runsync_wait=runsync_wait,
            stream_hold=stream_hold,
            body_timeout=idle_timeout,
            clock=self.queue.clock,
        )
        self.runsync_wait = runsync_wait  # how long /runsync holds a request (seconds): bench's clients wait that long
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None  # for webhooks, made on first use

    @property
    def counters(self) -> Counters:
        return self.queue.counters

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> QueueEmulator:
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
            self._loop.run_until_complete(self._shutdown())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="kit-queue-emulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            error = failure[0]
            if isinstance(error, OSError):
                raise KitEnvironmentError(
                    f"cannot listen on {self.host}:{self.port}: {error.strerror or error}",
                    "pick another port with --port",
                ) from error
            raise error
        return self

    def stop(self) -> None:
        """Answer every open long-poll, close the server and end the thread."""
        if self._thread is None:
            return
        self._call(self._close)
        loop = self._running_loop
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    @property
    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the emulator has not started"
        return self._loop

    def __enter__(self) -> QueueEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _start_server(self) -> None:
        app = web.Application(client_max_size=BODY_LIMIT)
        self._api.install(app)
        # aiohttp's only header-read guard is its keep-alive timer: armed at connect and after each
        # response, it closes a connection that has not delivered a whole request head by then (a
        # slow body is the routes' job: 408 after idle_timeout).
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, keepalive_timeout=self.header_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._spawn(self._ticker())

    def _spawn(self, coroutine) -> None:
        task = self._running_loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.queue.tick()

    def _close(self) -> None:
        self._waiters.closing = True
        self._waiters.wake_all()

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        # Connection handlers aiohttp left waiting (a client that keeps its socket open).
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)

    def _call(self, function: Callable, *args) -> Any:
        """Run `function(*args)` on the emulator's loop and return its result.

        Called from the loop's own thread (an `on_job_end` callback), a plain
        function runs at once instead of waiting on itself.
        """
        if threading.current_thread() is self._thread:
            result = function(*args)
            if asyncio.iscoroutine(result):
                result.close()
                raise RuntimeError("a blocking QueueEmulator method that waits cannot run on the emulator's own thread")
            return result

        async def call():
            result = function(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self._running_loop).result()

    # ------------------------------------------------------- notifications
    def _notify(self, event: Event, subject: Any) -> None:
        if event is Event.QUEUED:
            self._waiters.wake("queued")
        elif event is Event.CHANGED:
            self._waiters.wake(subject.id)
        elif event is Event.STOP:
            self._waiters.wake(("stop", subject.id))
        elif event is Event.READY:
            if self.on_worker_ready is not None:
                self.on_worker_ready(subject.id, subject.first_request)
        elif event is Event.ENDED:
            state = subject.state()
            if subject.webhook is not None and self._loop is not None:
                self._spawn(self._deliver_webhook(subject.webhook, subject.webhook_body()))
            if self.on_job_end is not None:
                self.on_job_end(state)

    async def _deliver_webhook(self, url: str, body: dict) -> None:
        """POST the job's final state to its webhook, retried as RunPod does; never blocks the job."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT))
        for attempt in range(1 + platform.WEBHOOK_RETRIES):
            if attempt:
                await asyncio.sleep(self.webhook_retry_delay)
            try:
                async with self._session.post(url, json=body) as response:
                    outcome = f"HTTP {response.status}"
                    delivered = 200 <= response.status < 300
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
                outcome, delivered = f"{type(error).__name__}: {error}", False
            self.webhooks.append({"job": body["id"], "url": url, "attempt": attempt + 1, "outcome": outcome, "delivered": delivered})
            if delivered:
                return
        self.say(f"webhook for {body['id']} to {url} not delivered after {1 + platform.WEBHOOK_RETRIES} attempts: {outcome}")

    # ----------------------------------------------------------- public API
    def worker_env(self, worker_id: str) -> dict[str, str]:
        """Env vars that point a real `runpod` worker process at this queue as `worker_id`."""
        self._call(self.queue.worker, worker_id)
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
            **platform.OFFLINE_ENV,  # a local worker never dials out
        }

    def submit(self, request: dict, *, sync: bool = False) -> str:
        """Enqueue a job as `POST /v2/<ep>/run` would; returns its id."""
        return self._call(lambda: self.queue.submit(request, sync=sync).id)

    def wait(self, job_id: str, timeout: float = 60.0) -> dict:
        """Block until the job ends (or `timeout` passes); return its /status dict."""

        async def wait():
            job = self.queue.jobs[job_id]
            deadline = time.monotonic() + timeout
            while not job.final and time.monotonic() < deadline and not self._waiters.closing:
                await self._waiters.wait(job.id, deadline - time.monotonic())
            return job.state()

        return self._call(wait)

    def status(self, job_id: str) -> dict:
        return self._call(lambda: self.queue.jobs[job_id].state())

    def health(self) -> dict:
        return self._call(self.queue.health)

    def cpu_time(self) -> float:
        """CPU seconds the emulator's thread has used: its own overhead, apart from the client's and workers'."""
        return self._call(time.thread_time)

    def worker_times(self, worker_id: str) -> dict:
        """Monotonic times of the worker's first job-take request and first job taken (None if not yet)."""

        def times():
            worker = self.queue.worker(worker_id)
            return {"first_request": worker.first_request, "first_job": worker.first_job}

        return self._call(times)

    def release_worker(self, worker_id: str) -> None:
        """The worker is shutting down: hand it no more jobs and answer its open polls."""

        def release():
            self.queue.release(self.queue.worker(worker_id))
            self._waiters.wake("queued")

        self._call(release)

    def worker_exited(self, worker_id: str, reason: str) -> list[str]:
        """The worker process is gone: fail the jobs it held (never lose them silently).

        Returns the ids of the jobs marked FAILED. Its id may be used again by
        a new process: the record starts over.
        """
        return self._call(self.queue.worker_exited, worker_id, reason)

    def setup_failure(self, worker_id: str) -> str | None:
        """The setup error ("Type: message") the worker failed a job with (runpod 2.0's prestart path), or None."""
        return self._call(lambda: self.queue.worker(worker_id).setup_error)

    def expected_exit(self, worker_id: str) -> bool:
        """Whether the worker's last job asked it to stop (`refresh_worker`)."""
        return self._call(lambda: self.queue.worker(worker_id).refresh)

    def requests(self) -> dict[str, int]:
        """How many requests each route has answered, e.g. {"stream": 3}: how hard a client polls."""
        return self._call(lambda: dict(self._api.requests))

    def unresponsive_workers(self) -> dict[str, str]:
        """Workers that stopped pinging (frozen or hung), with why."""
        return self._call(lambda: {w.id: w.unresponsive for w in self.queue.workers.values() if w.unresponsive})
