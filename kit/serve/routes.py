"""The emulator's HTTP face: RunPod's endpoint API for clients, the worker API the SDK's loop speaks.

`EndpointAPI` turns requests into steps of a `kit.serve.queue.Queue` and
holds long-polls open on asyncio events the queue's notifications set. It
runs on one event loop (the emulator's thread) and keeps no state of its own
beyond those waiters; every job and worker record lives in the queue.

Client routes (any endpoint id): ``/run``, ``/runsync``, ``/status``,
``/status-sync``, ``/stream``, ``/cancel``, ``/retry``, ``/health``,
``/purge-queue`` and the OpenAI-compatible ``/openai/v1/...``. Worker routes:
``job-take``, ``job-take-batch``, ``job-stop``, ``job-done``, ``job-stream``,
``ping``. Every answer, errors and unknown routes included, is JSON.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from kit.platform import RUN_LIMIT, RUNSYNC_LIMIT, RUNSYNC_WAIT_RANGE_MS  # RunPod's limits
from kit.serve.queue import Job, Queue, RequestError, Status

log = logging.getLogger("kit.serve")
# The job input key that carries an OpenAI request's route (worker-vllm's contract).
OPENAI_ROUTE = "openai_route"
# The largest body the emulator reads at all (a job-done result, an OpenAI request).
BODY_LIMIT = 64 * 1024**2


def _state(job: Job) -> web.Response:
    """The job as /status shows it (its output's JSON text passed through as the worker posted it)."""
    return web.Response(body=job.state_body(), content_type="application/json")


_OUTPUT_ONLY = b'{"output": '  # how the SDK's json.dumps begins a result body that holds nothing else


def _output_text(body: Any, raw: bytes) -> bytes | None:
    """The JSON text of `body["output"]` inside the posted `raw` body, when the body holds nothing else."""
    if isinstance(body, dict) and len(body) == 1 and "output" in body and raw.startswith(_OUTPUT_ONLY) and raw.endswith(b"}"):
        return raw[len(_OUTPUT_ONLY) : -1]
    return None


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _Refused(Exception):
    """A request answered with an error before it reaches the queue."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.response = _error(message, status)


class Waiters:
    """asyncio events keyed by what they wait for: a job id, "queued", ("stop", worker id)."""

    def __init__(self):
        self._events: dict[Any, asyncio.Event] = {}
        self.closing = False

    def wake(self, key: Any) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        for key in list(self._events):
            self.wake(key)

    async def wait(self, key: Any, timeout: float) -> None:
        """Return when `key` is woken or after `timeout` seconds, whichever comes first."""
        if self.closing or timeout <= 0:
            return
        event = self._events.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class EndpointAPI:
    """The aiohttp routes over one queue. See the module docstring."""

    def __init__(
        self,
        queue: Queue,
        waiters: Waiters,
        *,
        api_key: str | None,
        worker_key: str,
        long_poll: float,
        runsync_wait: float,
        stream_hold: float,
        body_timeout: float,
        clock: Callable[[], float],
    ):
        self.queue = queue
        self.waiters = waiters
        self.api_key = api_key
        self.worker_key = worker_key
        self.long_poll = long_poll
        self.runsync_wait = runsync_wait
        self.stream_hold = stream_hold
        self.body_timeout = body_timeout
        self.clock = clock
        self.requests: collections.Counter[str] = collections.Counter()  # per route, e.g. "stream"

    def install(self, app: web.Application) -> None:
        client = [
            ("POST", "/run", self._run),
            ("POST", "/runsync", self._runsync),
            ("GET", "/status/{job}", self._status),
            ("POST", "/status/{job}", self._status),
            ("GET", "/status-sync/{job}", self._status_sync),
            ("POST", "/status-sync/{job}", self._status_sync),
            ("GET", "/stream/{job}", self._stream),
            ("POST", "/stream/{job}", self._stream),
            ("POST", "/cancel/{job}", self._cancel),
            ("POST", "/retry/{job}", self._retry),
            ("GET", "/health", self._health),
            ("POST", "/purge-queue", self._purge),
            ("GET", "/openai/v1/models", self._openai),
            ("POST", "/openai/v1/chat/completions", self._openai),
            ("POST", "/openai/v1/completions", self._openai),
        ]
        worker = [
            ("GET", "/job-take/{worker}", self._take),
            ("GET", "/job-take-batch/{worker}", self._take_batch),
            ("GET", "/job-stop/{worker}", self._stop),
            ("POST", "/job-done/{worker}/{job}", self._done),
            ("POST", "/job-stream/{worker}/{job}", self._stream_post),
            ("GET", "/ping/{worker}", self._ping),
        ]
        app.middlewares.append(_json_errors)
        for method, path, handler in client:
            app.router.add_route(method, "/v2/{endpoint}" + path, self._checked(path, handler, self._client_allowed))
        for method, path, handler in worker:
            app.router.add_route(method, "/v2/{endpoint}" + path, self._checked(path, handler, self._worker_allowed))

    # ------------------------------------------------------------- plumbing
    def _client_allowed(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("Authorization", "").removeprefix("Bearer ").strip() == self.api_key

    def _worker_allowed(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == self.worker_key

    def _checked(self, path: str, handler, allowed):
        name = path.strip("/").split("/{")[0]

        async def checked(request: web.Request) -> web.StreamResponse:
            self.requests[name] += 1
            if not allowed(request):
                return _error("Unauthorized", 401)
            try:
                return await handler(request)
            except _Refused as refused:
                return refused.response

        return checked

    async def _read(self, request: web.Request, what: str) -> bytes:
        """The raw body; a client that sends it slower than the idle timeout gets a 408."""
        try:
            return await asyncio.wait_for(request.read(), self.body_timeout)
        except asyncio.TimeoutError:
            raise _Refused(f"{what} did not arrive within {self.body_timeout:g} s", 408) from None

    async def _json_body(self, request: web.Request, limit: int, what: str) -> Any:
        """The request's JSON body, refused with a 400 naming the problem (size, syntax, depth)."""
        try:
            raw = await self._read(request, what)
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(f"{what} is over {limit / 1000**2:.0f} MB, the most RunPod accepts") from None
        if len(raw) > limit:
            raise _Refused(f"{what} is {len(raw) / 1000**2:.1f} MB; RunPod accepts at most {limit / 1000**2:.0f} MB")
        try:
            return json.loads(raw)
        except RecursionError:
            raise _Refused(f"{what} is nested too deeply to parse") from None
        except ValueError:
            raise _Refused(f"{what} is not valid JSON") from None

    def _known(self, request: web.Request) -> Job:
        job = self.queue.get(request.match_info["job"])
        if job is None:
            raise _Refused("request does not exist", 404)
        return job

    def _wait_ms(self, request: web.Request) -> float:
        """`?wait=<ms>` in seconds (the default when absent); 400 outside RunPod's range."""
        if "wait" not in request.query:
            return self.runsync_wait
        low, high = RUNSYNC_WAIT_RANGE_MS
        try:
            wait = int(request.query["wait"])
        except ValueError:
            wait = None
        if wait is None or not low <= wait <= high:
            raise _Refused(f"wait is invalid; must be between {low} and {high}")
        return wait / 1000

    def _submit(self, body: Any, *, sync: bool) -> Job:
        try:
            return self.queue.submit(body, sync=sync)
        except RequestError as error:
            raise _Refused(str(error)) from None

    async def _until(self, job: Job, done: Callable[[], bool], timeout: float) -> None:
        """Wait until `done()` holds, the job is gone, or `timeout` seconds pass."""
        deadline = self.clock() + timeout
        while not done() and self.queue.get(job.id) is job and not self.waiters.closing:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            await self.waiters.wait(job.id, remaining)

    # -------------------------------------------------------------- clients
    async def _run(self, request: web.Request) -> web.Response:
        job = self._submit(await self._json_body(request, RUN_LIMIT, "the /run request body"), sync=False)
        return web.json_response({"id": job.id, "status": job.status.value})

    async def _runsync(self, request: web.Request) -> web.Response:
        wait = self._wait_ms(request)  # before anything is queued
        job = self._submit(await self._json_body(request, RUNSYNC_LIMIT, "the /runsync request body"), sync=True)
        await self._until(job, lambda: job.final, wait)
        return _state(job)

    async def _status(self, request: web.Request) -> web.Response:
        job = self._known(request)
        if "ttl" in request.query:
            try:
                self.queue.set_ttl(job, float(request.query["ttl"]) / 1000)
            except (ValueError, RequestError):
                raise _Refused("ttl must be a positive number of milliseconds up to 7 days") from None
        return _state(job)

    async def _status_sync(self, request: web.Request) -> web.Response:
        wait = self._wait_ms(request)
        job = self._known(request)
        await self._until(job, lambda: job.final, wait)
        return _state(job)

    async def _stream(self, request: web.Request) -> web.Response:
        """New chunks, held open until some arrive or the job ends (at most `stream_hold` s)."""
        job = self._known(request)
        await self._until(job, lambda: job.final or len(job.chunks) > job.read, self.stream_hold)
        body = {"id": job.id, "status": job.status.value, "stream": self.queue.read_stream(job)}
        if "error" in (state := job.state()):  # a failed job says why, as /status does
            body["error"] = state["error"]
        return web.json_response(body)

    async def _cancel(self, request: web.Request) -> web.Response:
        job = self._known(request)
        self.queue.cancel(job)
        return web.json_response({"id": job.id, "status": job.status.value})

    async def _retry(self, request: web.Request) -> web.Response:
        job = self._known(request)
        try:
            self.queue.retry(job)
        except RequestError as error:
            raise _Refused(str(error)) from None
        return web.json_response({"id": job.id, "status": job.status.value})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue.health())

    async def _purge(self, request: web.Request) -> web.Response:
        return web.json_response({"removed": self.queue.purge(), "status": "completed"})

    # --------------------------------------------------------------- OpenAI
    async def _openai(self, request: web.Request) -> web.StreamResponse:
        """An OpenAI request as a job: input {"openai_route": "/v1/...", "openai_input": body} (worker-vllm's contract)."""
        route = "/v1" + request.path.split("/openai/v1", 1)[1]
        job_input: dict[str, Any] = {OPENAI_ROUTE: route}
        body: Any = None
        if request.method == "POST":
            body = await self._json_body(request, RUNSYNC_LIMIT, "the request body")
            if not isinstance(body, dict):
                raise _Refused("the request body must be a JSON object")
            job_input["openai_input"] = body
        job = self._submit({"input": job_input}, sync=True)
        if isinstance(body, dict) and body.get("stream") is True:
            return await self._openai_events(request, job)
        await self._until(job, lambda: job.final, job.execution_timeout + 1.0)
        return _openai_answer(job)

    async def _openai_events(self, request: web.Request, job: Job) -> web.StreamResponse:
        """Server-sent events of the job's stream chunks, as they arrive, then `data: [DONE]`."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        sent, done_seen = 0, False
        try:
            while True:
                await self._until(job, lambda: job.final or len(job.chunks) > sent, job.execution_timeout + 1.0)
                for chunk in job.chunks[sent:]:
                    text = _sse(chunk)
                    done_seen = done_seen or "data: [DONE]" in text
                    await response.write(text.encode())
                sent = len(job.chunks)
                if job.final or self.queue.get(job.id) is not job:
                    break
            if not job.chunks and job.status is Status.COMPLETED and job.output not in (None, []):
                outputs = job.output if isinstance(job.output, list) else [job.output]
                for output in outputs:  # a handler that returned instead of yielding
                    text = _sse(output)
                    done_seen = done_seen or "data: [DONE]" in text
                    await response.write(text.encode())
            if job.status is not Status.COMPLETED:
                error = _openai_error(job)
                await response.write(f"data: {json.dumps(error)}\n\n".encode())
            if not done_seen:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.queue.cancel(job)  # the client hung up: stop the worker's task
            raise
        return response

    # -------------------------------------------------------------- workers
    def _worker_record(self, request: web.Request):
        return self.queue.worker(request.match_info["worker"])

    async def _take(self, request: web.Request) -> web.Response:
        taken = await self._long_poll_take(request, 1)
        return web.json_response(taken[0]) if taken else web.Response(status=204)

    async def _take_batch(self, request: web.Request) -> web.Response:
        try:
            count = int(request.query.get("batch_size", "1"))
        except ValueError:
            count = 0
        if count < 1:
            raise _Refused("batch_size must be a positive integer")
        taken = await self._long_poll_take(request, count)
        return web.json_response(taken) if taken else web.Response(status=204)

    async def _long_poll_take(self, request: web.Request, count: int) -> list[dict]:
        """Up to `count` jobs for the worker, waiting for the first one up to the long-poll time."""
        worker = self._worker_record(request)
        deadline = self.clock() + self.long_poll
        while not self.waiters.closing:
            if request.transport is None or request.transport.is_closing():
                return []  # the worker hung up: keep the jobs queued for another
            taken = self.queue.take(worker, count)
            if taken:
                return taken
            if worker.released:
                # Its loop is stopping; a short hold keeps it from spinning until it notices.
                await asyncio.sleep(0.5)
                return []
            remaining = deadline - self.clock()
            if remaining <= 0:
                return []
            await self.waiters.wait("queued", remaining)
        return []

    async def _stop(self, request: web.Request) -> web.Response:
        worker = self._worker_record(request)
        if not worker.stops and not worker.released:
            await self.waiters.wait(("stop", worker.id), self.long_poll)
        stops = self.queue.take_stops(worker)
        if not stops:
            if worker.released and not self.waiters.closing:
                await asyncio.sleep(0.5)
            return web.Response(status=204)
        return web.json_response({"jobsToStop": stops})

    async def _worker_body(self, request: web.Request, what: str) -> tuple[bytes, Any]:
        """The SDK posts raw JSON (whatever its Content-Type says): the body and what it parses to."""
        raw = await self._read(request, what)
        try:
            return raw, json.loads(raw)
        except RecursionError:
            raise _Refused(f"{what} is nested too deeply to parse") from None
        except ValueError:
            raise _Refused(f"{what} is not valid JSON") from None

    async def _posted(self, request: web.Request, step: Callable, what: str) -> web.Response:
        worker_id, job_id = request.match_info["worker"], request.match_info["job"]
        try:
            raw, body = await self._worker_body(request, what)
        except web.HTTPRequestEntityTooLarge:
            try:
                self.queue.fail_result(
                    worker_id,
                    job_id,
                    f"the worker's {what} is over the emulator's {BODY_LIMIT // 1024**2} MiB body limit "
                    f"(RunPod accepts at most {RUNSYNC_LIMIT // 1000**2} MB): nothing was stored",
                )
            except (LookupError, PermissionError):
                pass
            return _error(f"{what} is over {BODY_LIMIT // 1024**2} MiB", 413)
        try:
            step(worker_id, job_id, body, raw)
        except RequestError as error:
            return _error(str(error), 400)
        except PermissionError as error:
            return _error(str(error), 403)
        except LookupError as error:
            return _error(str(error), 404)
        return web.json_response({})

    async def _done(self, request: web.Request) -> web.Response:
        return await self._posted(
            request, lambda worker, job, body, raw: self.queue.done(worker, job, body, _output_text(body, raw)), "result"
        )

    async def _stream_post(self, request: web.Request) -> web.Response:
        return await self._posted(request, lambda worker, job, body, raw: self.queue.stream(worker, job, body), "stream chunk")

    async def _ping(self, request: web.Request) -> web.Response:
        running = set(filter(None, request.query.get("job_id", "").split(",")))
        self.queue.ping(self._worker_record(request), running)
        return web.json_response({})


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Unknown routes, wrong methods and anything unexpected answer JSON, never plain text."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = f"no route {request.method} {request.path}" if error.status in (404, 405) else error.reason
        return _error(message, error.status)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as error:  # a kit bug: answer, log, keep serving
        log.exception("kit emulator: %s %s failed", request.method, request.path)
        return _error(f"internal error in the emulator: {type(error).__name__}: {error}", 500)


# ------------------------------------------------------------------ OpenAI
def _sse(chunk: Any) -> str:
    """A worker's stream chunk as server-sent event text.

    Real workers yield either ready SSE strings (``'data: {...}\\n\\n'``,
    worker-vllm and the Ollama workers; possibly split anywhere, so they pass
    through as they are) or OpenAI chunk dicts (framed here).
    """
    if isinstance(chunk, str):
        return chunk
    if isinstance(chunk, (bytes, bytearray)):
        return chunk.decode("utf-8", "replace")
    return f"data: {json.dumps(chunk)}\n\n"


def _yielded_error(error: Any) -> Any:
    """The SDK posts a yielded {"error": {...}} as str() of the dict: read that Python literal back."""
    if isinstance(error, str) and error.startswith("{") and len(error) < 100_000:
        try:
            return ast.literal_eval(error)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            pass
    return error


def _openai_error(job: Job) -> dict:
    error = _yielded_error(job.state().get("error"))
    if isinstance(error, dict) and "message" in error:  # the worker yielded an OpenAI error (worker-vllm's shape)
        return {"error": error}
    if job.status is Status.TIMED_OUT or job.status is Status.IN_PROGRESS or job.status is Status.IN_QUEUE:
        message = f"the job did not finish: {job.status.value}"
    else:
        message = f"the job ended {job.status.value}: {job.state().get('error', 'no error message')}"
    return {"error": {"message": message, "type": "worker_error", "code": job.status.value}}


def _openai_answer(job: Job) -> web.Response:
    """A non-streaming OpenAI answer: the handler's one result (returned, or yielded once)."""
    if job.status is not Status.COMPLETED:
        error = _openai_error(job)
        if job.status in (Status.TIMED_OUT, Status.IN_QUEUE, Status.IN_PROGRESS):
            status = 504
        else:
            status = 400 if error["error"].get("type") != "worker_error" else 500
        return web.json_response(error, status=status)
    output = job.output
    if output in (None, []) and job.chunks:  # a generator without return_aggregate_stream
        output = job.chunks
    if isinstance(output, list) and len(output) == 1:
        output = output[0]
    if isinstance(output, dict) and set(output) == {"error"}:  # worker-vllm's error shape
        return web.json_response(output, status=400)
    return web.json_response(output)
