"""Dynamic batching: one `batch_handler(jobs)` call serves many jobs. Exported beside handler.py by the kit.

When the notebook defines `batch_handler(jobs)`, handler.py starts RunPod's
worker loop with `Batcher.handle` as its handler. The SDK still does all the
talking to RunPod (job-take-batch, one job-done per job, job-stop,
heartbeats, its accounting); it only sees an ordinary async handler, one call
per job it holds:

- `handle(job)` queues the job and waits for that job's own result;
- one dispatcher task groups the queued jobs into batches of at most
  MAX_BATCH_SIZE, oldest first, and waits at most MAX_BATCH_WAIT_MS after the
  oldest queued job when a batch is not full;
- it calls `batch_handler` once per batch, one batch at a time: an `async def`
  on the event loop, a plain function in a thread, so the loop keeps taking
  jobs and sending heartbeats while the model runs;
- each job gets the element of the returned list at its position (an element
  `{"error": ...}` fails that job alone); an exception fails every job of the
  batch with it; a result that is not a list of one result per job fails them
  all with a message saying so;
- a job stopped while its batch runs (job-stop cancels its task) ends
  CANCELLED and its result is dropped; one stopped before its batch starts is
  left out of the batch.

Nothing here touches SDK internals, so it runs the same on the SDK's stock
loop (which takes jobs more slowly) as on worker_loop.py's fast one. The
worker holds 2 x MAX_BATCH_SIZE jobs by default (one batch running, the next
one filling); CONCURRENCY_MODIFIER or the notebook's `concurrency_modifier`
overrides that. MAX_BATCH_SIZE and MAX_BATCH_WAIT_MS are read from handler.py
(the notebook's module constants), and the env vars of the same names
override them. With KIT_BATCH_REPORT set to a directory, each batch appends
"size wait_ms call_ms" to batches-<pid>.txt there (`kit bench` reads it).

This file needs neither the kit nor the runpod SDK.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import time
from concurrent.futures import ThreadPoolExecutor

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_BATCH_WAIT_MS = 10.0
REPORT_ENV = "KIT_BATCH_REPORT"


def setting(namespace: dict, name: str, default: float, *, integer: bool) -> float:
    """`name` from the env var of that name, else from `namespace` (handler.py's globals), else `default`."""
    raw = os.environ.get(name, "").strip()
    if raw:
        where, value = f"the env var {name}", raw
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            value = raw
    else:
        where, value = f"{name} in handler.py", namespace.get(name, default)
    kind = "a whole number of at least 1" if integer else "a number of milliseconds, 0 or more"
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not number or not (value >= 1 if integer else 0 <= value < float("inf")):
        raise ValueError(f"{where} must be {kind}, not {value!r}")
    return value


def result_problem(results, count: int) -> str | None:
    """Why `results` cannot be one result per job of a batch of `count`, or None."""
    if not isinstance(results, (list, tuple)):
        return f"batch_handler returned {type(results).__name__}, not a list: it must return one result per job, in the jobs' order"
    if len(results) != count:
        return f"batch_handler returned {len(results)} result(s) for a batch of {count} job(s): it must return one result per job, in the jobs' order"
    return None


def single_job_handler(batch_handler):
    """`handler(job)` for a notebook that defines only `batch_handler`: a batch of one."""
    if inspect.iscoroutinefunction(batch_handler):

        async def handler(job):
            return _only(await batch_handler([job]))

    else:

        def handler(job):
            return _only(batch_handler([job]))

    handler.__doc__ = "batch_handler([job]), one job at a time (provided by the kit: the notebook defines no handler)"
    return handler


def _only(results):
    problem = result_problem(results, 1)
    return {"error": problem} if problem else results[0]


class BatchQueue:
    """Which queued jobs make the next batch, and when: plain code on an explicit clock (seconds)."""

    def __init__(self, max_size: int, max_wait: float):
        self.max_size = max_size
        self.max_wait = max_wait
        self._items: collections.deque = collections.deque()  # (arrival, item), oldest first

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_size

    def add(self, item, now: float) -> None:
        self._items.append((now, item))

    def discard(self, item) -> None:
        for entry in self._items:
            if entry[1] is item:
                self._items.remove(entry)
                return

    def deadline(self) -> float | None:
        """When the oldest queued item has waited long enough for a batch that is not full."""
        return self._items[0][0] + self.max_wait if self._items else None

    def take(self, now: float) -> tuple[list, float] | None:
        """The next batch and how long its oldest item waited, or None while a partial batch may still grow."""
        if not self._items or (not self.full and now < self.deadline()):
            return None
        waited = now - self._items[0][0]
        count = min(self.max_size, len(self._items))
        return [self._items.popleft()[1] for _ in range(count)], waited


class Batcher:
    """Runs `batch_handler` on batches of the jobs that `handle(job)` is called with."""

    def __init__(
        self,
        batch_handler,
        max_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_BATCH_WAIT_MS,
        report_dir: str | None = None,
    ):
        self.batch_handler = batch_handler
        self.max_size = max_size
        self.max_wait_ms = max_wait_ms
        self._queue = BatchQueue(max_size, max_wait_ms / 1000)
        self._async = inspect.iscoroutinefunction(batch_handler)
        self._thread: ThreadPoolExecutor | None = None  # created on the first sync call
        self._full: asyncio.Event | None = None
        self._dispatching = False
        self._dispatcher: asyncio.Task | None = None  # a strong reference: the loop keeps only weak ones
        self._report = None
        if report_dir:
            os.makedirs(report_dir, exist_ok=True)
            self._report = open(os.path.join(report_dir, f"batches-{os.getpid()}.txt"), "a", buffering=1, encoding="utf-8")

    @classmethod
    def from_namespace(cls, namespace: dict) -> Batcher:
        """The batcher handler.py starts: its batch_handler and settings, the env vars overriding them."""
        return cls(
            namespace["batch_handler"],
            setting(namespace, "MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, integer=True),
            setting(namespace, "MAX_BATCH_WAIT_MS", DEFAULT_MAX_BATCH_WAIT_MS, integer=False),
            os.environ.get(REPORT_ENV) or None,
        )

    def concurrency(self, current: int) -> int:
        """How many jobs the SDK holds: CONCURRENCY_MODIFIER, else room for a running batch and the next."""
        raw = os.environ.get("CONCURRENCY_MODIFIER", "").strip()
        return int(raw) if raw else 2 * self.max_size

    async def handle(self, job: dict):
        """One job, as the SDK's worker loop calls a handler: its result, once its batch has run."""
        loop = asyncio.get_running_loop()
        entry = (job, loop.create_future())
        self._queue.add(entry, loop.time())
        if self._full is None:
            self._full = asyncio.Event()
        if self._queue.full:
            self._full.set()
        if not self._dispatching:
            self._dispatching = True
            self._dispatcher = loop.create_task(self._dispatch())
        try:
            return await entry[1]
        except asyncio.CancelledError:  # job-stop: a job not yet in a batch stays out of it
            self._queue.discard(entry)
            raise

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while len(self._queue):
                taken = self._queue.take(loop.time())
                if taken is None:
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), max(0.0, self._queue.deadline() - loop.time()))
                    except asyncio.TimeoutError:
                        pass
                    continue
                await self._run(*taken)
        except BaseException as error:  # the loop is shutting down: no job may wait forever
            while len(self._queue):
                _fail(self._queue.take(float("inf"))[0], RuntimeError(f"the batch was not run: {error!r}"))
            raise
        finally:
            self._dispatching = False

    async def _run(self, entries: list, waited: float) -> None:
        entries = [(job, future) for job, future in entries if not future.done()]
        if not entries:
            return
        jobs = [job for job, _ in entries]
        started = time.perf_counter()
        try:
            if self._async:
                results = await self.batch_handler(jobs)
            else:
                if self._thread is None:
                    self._thread = ThreadPoolExecutor(1, thread_name_prefix="batch_handler")
                results = await asyncio.get_running_loop().run_in_executor(self._thread, self.batch_handler, jobs)
                if inspect.isawaitable(results):
                    results = await results
        except Exception as error:  # fails every job of the batch, each with the handler's traceback
            _fail(entries, error)
            return
        except BaseException as error:  # shutdown, or SystemExit in batch_handler: no job may wait forever
            _fail(entries, RuntimeError(f"batch_handler was interrupted: {error!r}"))
            raise
        finally:
            if self._report:
                self._report.write(f"{len(jobs)} {waited * 1000:.2f} {(time.perf_counter() - started) * 1000:.2f}\n")
        problem = result_problem(results, len(jobs))
        for index, (_, future) in enumerate(entries):
            if not future.done():  # done already: stopped while its batch ran, so its result is dropped
                future.set_result({"error": problem} if problem else results[index])


def _fail(entries: list, error: BaseException) -> None:
    for _, future in entries:
        if not future.done():
            future.set_exception(error)
