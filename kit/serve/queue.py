"""RunPod's queue as a plain state machine: jobs and workers, no sockets, no threads.

`Queue` holds every job and worker record and changes them only through its
methods, each a step of RunPod's protocol (submit, take, stream chunk,
done, cancel, retry, ping). Time comes from an injected clock and passes only
in `tick()`, which ends what the clock has run out on: execution timeouts,
TTLs, result retention, workers that stopped pinging or dropped a job
without a result. The HTTP routes (`kit.serve.routes`) and the thread host
(`kit.serve.emulator`) drive it; unit tests drive it directly with a fake
clock.

What the host must react to (wake a long-poll, post a webhook) is reported
through `notify(event, subject)`, an `Event` and what it is about (see
`Event`). A worker's record moves through `WorkerState`; each transition
asserts the state it leaves, as Cog's worker does.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kit import platform


class Status(str, enum.Enum):
    """A job's status, as RunPod spells it."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    """What the queue tells its host through `notify(event, subject)`; the subject is in brackets."""

    QUEUED = "queued"  # (None) jobs are waiting for a worker: wake its job-take long-polls
    CHANGED = "changed"  # (the Job) its status, output or stream changed: wake who waits on it
    ENDED = "ended"  # (the Job) it reached a final status: post its webhook
    STOP = "stop"  # (the Worker) it has job ids to stop on its job-stop channel
    READY = "ready"  # (the Worker) its first job-take request: its start-up is over


class WorkerState(enum.Enum):
    """Where a worker's record stands. STARTING -> READY (first job-take); either -> UNRESPONSIVE
    (no ping for ping_timeout) -> back when it pings again; any -> RELEASED (final: no more jobs)."""

    STARTING = "starting"  # registered; has not asked for a job yet
    READY = "ready"  # asks for jobs (busy or idle: see its jobs)
    UNRESPONSIVE = "unresponsive"  # stopped pinging: frozen or hung; handed no jobs
    RELEASED = "released"  # shutting down or gone: handed no jobs, for good


FINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT})
RETRYABLE = frozenset({Status.FAILED, Status.TIMED_OUT})

# RunPod's request policy (timeouts, TTL, retention) lives in kit.platform, which says where RunPod
# states each. What follows is the emulator's own (RunPod does not publish how it judges a worker).

# A worker that has pinged and then stays silent this long is frozen or hung
# (the SDK pings every RUNPOD_PING_INTERVAL, 2 s here): its jobs fail.
PING_TIMEOUT = 12.0
# A job its worker's pings stop listing, with no result posted, was dropped by
# the SDK (a result it could not serialise or send): it fails after this many
# consecutive pings without it, and no sooner than DROPPED_AFTER_SECONDS after it was taken: runpod
# 2.0's prestart-failure path can lose a job it had just taken and then claims another for up to
# 10 s before exiting; by 15 s the pool has seen that worker exit and fails the job with its setup error.
DROPPED_AFTER_PINGS = 3
DROPPED_AFTER_SECONDS = 15.0

_ABSENT = object()


class RequestError(ValueError):
    """A request the queue refuses; its message is the client's error text."""


@dataclass(eq=False)
class Job:
    id: str
    input: Any
    extra: dict  # other request fields (webhook, policy, ...): they reach the handler's job dict
    sync: bool
    submitted: float
    execution_timeout: float
    expires: float  # submitted + policy.ttl; /status?ttl= moves it
    status: Status = Status.IN_QUEUE
    output: Any = _ABSENT
    output_json: bytes | None = None  # `output` as the worker posted it (JSON text), when that could be kept
    error: Any = _ABSENT
    chunks: list = field(default_factory=list)  # every stream chunk, in order
    read: int = 0  # chunks already handed to /stream
    worker: str | None = None
    taken: float | None = None
    finished: float | None = None
    done_posts: int = 0
    unlisted_pings: int = 0  # consecutive pings of its worker that did not list it
    retries: int = 0

    @property
    def webhook(self) -> str | None:
        hook = self.extra.get("webhook")
        return hook if isinstance(hook, str) and hook else None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def state(self) -> dict:
        """The job as /status shows it."""
        state: dict[str, Any] = {"id": self.id, "status": self.status.value}
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
        if self.retries:
            state["retries"] = self.retries
        return state

    def state_body(self) -> bytes:
        """`state()` as a JSON body; the output as the worker posted it when its text was kept, so a
        large result is not encoded again for every client that reads it."""
        state = self.state()
        if self.output_json is None or "output" not in state:
            return json.dumps(state).encode()
        del state["output"]
        return json.dumps(state).encode()[:-1] + b', "output": ' + self.output_json + b"}"

    def webhook_body(self) -> dict:
        """What RunPod POSTs to the job's webhook: the /status body plus its input and webhook."""
        body = {**self.state(), "input": self.input, "webhook": self.webhook}
        body.setdefault("delayTime", 0)
        body.setdefault("executionTime", 0)
        return body


@dataclass(eq=False)
class Worker:
    id: str
    jobs: set = field(default_factory=set)  # ids of jobs in flight
    stops: list = field(default_factory=list)  # job ids to send on the stop channel
    cancelled: set = field(default_factory=set)  # stopped jobs its pings may still list
    state: WorkerState = WorkerState.STARTING
    first_request: float | None = None  # first job-take: the worker is up
    first_job: float | None = None
    last_ping: float | None = None
    unresponsive: str | None = None  # why it is UNRESPONSIVE (missed pings)
    refresh: bool = False  # its last job asked for stopPod (refresh_worker)
    setup_error: str | None = None  # runpod 2.0's prestart failure it reported through a job

    @property
    def released(self) -> bool:
        return self.state is WorkerState.RELEASED

    @property
    def healthy(self) -> bool:
        """It may be handed jobs."""
        return self.state in (WorkerState.STARTING, WorkerState.READY)

    def move(self, leaving: WorkerState | tuple[WorkerState, ...], to: WorkerState) -> None:
        """A transition: asserts the state it leaves (a wrong one is a bug of the queue)."""
        assert self.state in (leaving if isinstance(leaving, tuple) else (leaving,)), f"{self.id}: {self.state.value} -> {to.value}"
        self.state = to


@dataclass
class Counters:
    """What happened to every job since the queue started."""

    submitted: int = 0
    taken: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    timed_out: int = 0
    expired: int = 0  # removed by their TTL before they ended
    retried: int = 0
    duplicate_results: int = 0  # a second job-done for a finished job: must stay 0
    unknown_results: int = 0  # job-done for a job id the queue never issued
    foreign_results: int = 0  # job-done from a worker that does not hold the job


_COUNTER = {
    Status.COMPLETED: "completed",
    Status.FAILED: "failed",
    Status.CANCELLED: "cancelled",
    Status.TIMED_OUT: "timed_out",
}


def _ms_policy(policy: dict, key: str, default: float, bounds: tuple[float, float] | None) -> float:
    if key not in policy:
        return default
    value = policy[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise RequestError(f"policy.{key} must be a number of milliseconds, not {value!r}")
    seconds = value / 1000
    low, high = bounds or (0.001, float("inf"))
    if not low <= seconds <= high:
        raise RequestError(f"policy.{key} must be between {low * 1000:.0f} and {high * 1000:.0f} ms, not {value}")
    return seconds


class Queue:
    """Jobs and workers of one local endpoint. Every method is a step; none blocks."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        notify: Callable[[Event, Any], None] = lambda event, subject: None,
        execution_timeout: float = platform.EXECUTION_TIMEOUT,
        ping_timeout: float = PING_TIMEOUT,
    ):
        low, high = platform.EXECUTION_TIMEOUT_RANGE
        if not low <= execution_timeout <= high:
            raise ValueError(f"the execution timeout must be between {low:.0f} s and 7 days, not {execution_timeout} s")
        self.clock = clock
        self.notify = notify
        self.execution_timeout = execution_timeout
        self.ping_timeout = ping_timeout
        self.counters = Counters()
        self.jobs: dict[str, Job] = {}
        self.queue: deque[Job] = deque()
        self.workers: dict[str, Worker] = {}

    # ------------------------------------------------------------ clients
    def submit(self, request: dict, *, sync: bool = False) -> Job:
        """Enqueue a job as `POST /run` (or `/runsync`) does. Raises RequestError for a bad request."""
        if not isinstance(request, dict) or "input" not in request:
            raise RequestError('request body must be a JSON object with an "input" key')
        policy = request.get("policy", {})
        if not isinstance(policy, dict):
            raise RequestError("policy must be a JSON object")
        execution_timeout = _ms_policy(policy, "executionTimeout", self.execution_timeout, platform.EXECUTION_TIMEOUT_RANGE)
        ttl = _ms_policy(policy, "ttl", platform.TTL, platform.TTL_RANGE)
        webhook = request.get("webhook")
        if webhook is not None and not (isinstance(webhook, str) and webhook.startswith(("http://", "https://"))):
            raise RequestError(f"webhook must be an http(s) URL, not {webhook!r}")
        now = self.clock()
        job = Job(
            id=f"{'sync-' if sync else ''}{uuid.uuid4()}-e1",
            input=request["input"],
            extra={k: v for k, v in request.items() if k not in ("id", "input")},
            sync=sync,
            submitted=now,
            execution_timeout=execution_timeout,
            expires=now + ttl,
        )
        self.jobs[job.id] = job
        self.queue.append(job)
        self.counters.submitted += 1
        self.notify(Event.QUEUED, None)
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def read_stream(self, job: Job) -> list[dict]:
        """Stream chunks not yet handed out, each `{"output": chunk}`, as /stream answers."""
        chunks = job.chunks[job.read :]
        job.read = len(job.chunks)
        return [{"output": chunk} for chunk in chunks]

    def set_ttl(self, job: Job, seconds: float) -> None:
        """`/status/{id}?ttl=ms`: remove this job (queued, running or done) that long from now."""
        if not 0 < seconds <= platform.TTL_RANGE[1]:
            raise RequestError(f"ttl must be a positive number of milliseconds up to 7 days, not {seconds * 1000:g}")
        job.expires = self.clock() + seconds

    def cancel(self, job: Job) -> None:
        if job.final:
            return
        if job.status is Status.IN_QUEUE:
            self.queue.remove(job)
        self._finish(job, Status.CANCELLED)

    def purge(self) -> int:
        queued = list(self.queue)
        for job in queued:
            self.cancel(job)
        return len(queued)

    def retry(self, job: Job) -> None:
        """`POST /retry/{id}`: a FAILED or TIMED_OUT job goes back in the queue under its id."""
        if job.status not in RETRYABLE:
            raise RequestError(f"job {job.id} is {job.status.value}; only FAILED or TIMED_OUT jobs can be retried")
        job.status, job.output, job.output_json, job.error = Status.IN_QUEUE, _ABSENT, None, _ABSENT
        job.chunks, job.read, job.worker, job.taken, job.finished = [], 0, None, None, None
        job.done_posts, job.unlisted_pings = 0, 0
        job.retries += 1
        job.submitted = self.clock()
        self.queue.append(job)
        self.counters.retried += 1
        self.notify(Event.CHANGED, job)
        self.notify(Event.QUEUED, None)

    def health(self) -> dict:
        in_progress = sum(1 for job in self.jobs.values() if job.status is Status.IN_PROGRESS)
        alive = [w for w in self.workers.values() if not w.released]
        healthy = [w for w in alive if w.healthy]
        running = sum(1 for w in healthy if w.jobs)
        ready = sum(1 for w in healthy if w.state is WorkerState.READY)
        return {
            "jobs": {
                "completed": self.counters.completed,
                "failed": self.counters.failed + self.counters.timed_out,
                "inProgress": in_progress,
                "inQueue": len(self.queue),
                "retried": self.counters.retried,
            },
            "workers": {
                "idle": ready - running,
                "initializing": len(healthy) - ready,
                "ready": ready,
                "running": running,
                "throttled": 0,
                "unhealthy": len(alive) - len(healthy),
            },
        }

    # ------------------------------------------------------------ workers
    def worker(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = Worker(worker_id)
        return worker

    def may_take(self, worker: Worker) -> bool:
        return worker.healthy

    def take(self, worker: Worker, count: int = 1) -> list[dict]:
        """Up to `count` queued jobs for the worker, as job-take hands them out."""
        now = self.clock()
        if worker.first_request is None:
            worker.first_request = now
            if worker.state is WorkerState.STARTING:  # (an unresponsive one that polls stays so until it pings)
                worker.move(WorkerState.STARTING, WorkerState.READY)
            self.notify(Event.READY, worker)
        taken: list[dict] = []
        while self.queue and len(taken) < count and self.may_take(worker):
            job = self.queue.popleft()
            job.status, job.worker, job.taken = Status.IN_PROGRESS, worker.id, now
            job.unlisted_pings = 0
            worker.jobs.add(job.id)
            self.counters.taken += 1
            taken.append({"id": job.id, "input": job.input, **job.extra})
            self.notify(Event.CHANGED, job)
        if taken and worker.first_job is None:
            worker.first_job = now
        return taken

    def take_stops(self, worker: Worker) -> list[str]:
        stops, worker.stops = worker.stops, []
        return stops

    def _held(self, worker_id: str, job_id: str) -> Job:
        """The job a worker posts about. Raises LookupError when it is unknown and PermissionError when
        another worker holds it (each counted): the routes answer 404 and 403."""
        job = self.jobs.get(job_id)
        if job is None:
            self.counters.unknown_results += 1
            raise LookupError("request does not exist")
        if job.worker != worker_id:
            self.counters.foreign_results += 1
            raise PermissionError(f"worker {worker_id} does not hold job {job_id}")
        return job

    def done(self, worker_id: str, job_id: str, body: Any, output_json: bytes | None = None) -> None:
        """A job-done post: a progress update, a result or an error.

        `output_json`, when given, is the JSON text of `body["output"]` as the
        worker posted it (kept for the clients' responses). Raises LookupError
        for an unknown job, PermissionError when another worker holds it,
        RequestError for a body that is not a JSON object.
        """
        if not isinstance(body, dict):
            raise RequestError("result must be a JSON object")
        job = self._held(worker_id, job_id)
        if body.get("stopPod"):
            self.worker(worker_id).refresh = True
        if (failure := platform.prestart_failure(body.get("error"))) is not None:
            self.worker(worker_id).setup_error = failure
        if body.get("status") == "IN_PROGRESS":  # runpod.serverless.progress_update
            if job.status is Status.IN_PROGRESS:
                job.output, job.output_json = body.get("output"), None
                self.notify(Event.CHANGED, job)
            return
        job.done_posts += 1
        if job.done_posts > 1:
            self.counters.duplicate_results += 1
        if job.final:  # cancelled, timed out, or the worker was declared dead
            return
        output = body.get("output", _ABSENT)
        if body.get("error"):
            self._finish(job, Status.FAILED, output=output, error=body["error"])
        else:
            self._finish(job, Status.COMPLETED, output=output, output_json=output_json)

    def stream(self, worker_id: str, job_id: str, body: Any) -> None:
        """A job-stream post: one chunk a generator handler yielded."""
        if not isinstance(body, dict):
            raise RequestError("stream chunk must be a JSON object")
        job = self._held(worker_id, job_id)
        if job.status is Status.IN_PROGRESS:
            job.chunks.append(body.get("output"))
            self.notify(Event.CHANGED, job)

    def fail_result(self, worker_id: str, job_id: str, reason: str) -> None:
        """A job-done post the emulator could not accept (too large): the job fails, naming why."""
        job = self._held(worker_id, job_id)
        job.done_posts += 1
        if not job.final:
            self._finish(job, Status.FAILED, error=reason)

    def ping(self, worker: Worker, running: set[str]) -> None:
        """A heartbeat listing the job ids the worker's SDK is running."""
        now = self.clock()
        worker.last_ping = now
        if worker.state is WorkerState.UNRESPONSIVE:  # it came back (SIGCONT): it may take jobs again
            worker.move(WorkerState.UNRESPONSIVE, WorkerState.STARTING if worker.first_request is None else WorkerState.READY)
            worker.unresponsive = None
            self.notify(Event.QUEUED, None)
        # A stop that reached the SDK before the job's task existed is dropped
        # there; while the worker still reports the job, send the stop again.
        for job_id in list(worker.cancelled):
            if job_id in running:
                self._signal_stop(worker, job_id)
            else:
                worker.cancelled.discard(job_id)
        for job_id in list(worker.jobs):
            job = self.jobs[job_id]
            if job_id in running:
                job.unlisted_pings = 0
                continue
            job.unlisted_pings += 1
            if job.unlisted_pings >= DROPPED_AFTER_PINGS and now - (job.taken or now) >= DROPPED_AFTER_SECONDS:
                self._finish(
                    job,
                    Status.FAILED,
                    error=f"worker {worker.id} stopped running this job without posting a result "
                    "(the SDK could not serialise or send it; see the worker log)",
                )

    def release(self, worker: Worker) -> None:
        worker.state = WorkerState.RELEASED  # from any state, and again: shutting down is always allowed
        self.notify(Event.STOP, worker)

    def worker_exited(self, worker_id: str, reason: str) -> list[str]:
        """The worker process is gone: fail the jobs it held. Its id may be used again."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return []
        lost = sorted(worker.jobs)
        for job_id in lost:
            self._finish(self.jobs[job_id], Status.FAILED, error=f"worker {worker_id} {reason} while running this job")
        self.notify(Event.QUEUED, None)
        return lost

    # ------------------------------------------------------------- time
    def tick(self) -> None:
        """End what the clock has run out on. The host calls this every fraction of a second."""
        now = self.clock()
        for job in list(self.jobs.values()):
            if now > job.expires:
                self._expire(job)
            elif job.final:
                if now - (job.finished or now) > (platform.RETENTION_RUNSYNC if job.sync else platform.RETENTION_RUN):
                    del self.jobs[job.id]
            elif job.status is Status.IN_PROGRESS and now - (job.taken or now) > job.execution_timeout:
                self._finish(
                    job,
                    Status.TIMED_OUT,
                    error=f"job timed out after {job.execution_timeout * 1000:.0f} ms (policy.executionTimeout)",
                )
        for worker in self.workers.values():
            if not worker.healthy or worker.last_ping is None:
                continue
            silent = now - worker.last_ping
            if silent > self.ping_timeout:
                worker.move((WorkerState.STARTING, WorkerState.READY), WorkerState.UNRESPONSIVE)
                worker.unresponsive = f"no ping for {silent:.0f} s"
                for job_id in sorted(worker.jobs):
                    self._finish(
                        self.jobs[job_id],
                        Status.FAILED,
                        error=f"worker {worker.id} stopped sending pings for {silent:.0f} s (frozen or hung) while running this job",
                    )

    def _expire(self, job: Job) -> None:
        """Its TTL ran out: the job is gone whatever its state, as on RunPod (/status answers 404)."""
        if job.final:
            del self.jobs[job.id]
            return
        if job.status is Status.IN_QUEUE:
            self.queue.remove(job)
        elif job.worker in self.workers:
            worker = self.workers[job.worker]
            worker.jobs.discard(job.id)
            self._signal_stop(worker, job.id)
        del self.jobs[job.id]
        self.counters.expired += 1
        self.notify(Event.CHANGED, job)

    # ----------------------------------------------------------- endings
    def _finish(self, job: Job, status: Status, *, output: Any = _ABSENT, error: Any = _ABSENT, output_json: bytes | None = None) -> None:
        was_running = job.status is Status.IN_PROGRESS
        job.status, job.finished = status, self.clock()
        if output is not _ABSENT:
            job.output, job.output_json = output, output_json
        if error is not _ABSENT:
            job.error = error
        worker = self.workers.get(job.worker) if job.worker is not None else None
        if worker is not None:
            worker.jobs.discard(job.id)
            if was_running and status in (Status.CANCELLED, Status.TIMED_OUT):
                self._signal_stop(worker, job.id)  # the SDK's own job-stop cancels the handler's task
        counter = _COUNTER[status]
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        self.notify(Event.CHANGED, job)
        self.notify(Event.ENDED, job)

    def _signal_stop(self, worker: Worker, job_id: str) -> None:
        if job_id not in worker.stops:
            worker.stops.append(job_id)
        worker.cancelled.add(job_id)
        self.notify(Event.STOP, worker)
