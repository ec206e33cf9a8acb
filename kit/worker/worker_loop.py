"""RunPod's serverless worker loop, minus its fixed delays. Exported beside handler.py by the kit.

handler.py calls `start(config)` instead of `runpod.serverless.start(config)`.
The SDK still does all the talking to RunPod (job-take, job-done, streams,
job-stop, heartbeat) with its own requests and payloads; two things change:

- Fetching. The stock `JobScaler` sleeps a whole second whenever the worker is
  full and polls its job queue every 0.1 s, so a worker takes at most
  `concurrency` jobs a second however fast the handler is. `FastJobScaler`
  waits on events instead: a finished job wakes the fetcher, a fetched job
  starts at once.
- Import. `import runpod` runs a `cpuinfo.get_cpu_info()` subprocess (about
  1.3 s) to fill in one string of the `--rp_debugger` report. Importing this
  module first imports runpod with that string read from /proc/cpuinfo.

Both ride on SDK internals, so they are used only with the runpod versions
they were tested with (TESTED_RUNPOD), and only when the internals they use
are there (`_why_not_these_internals`: the JobScaler methods and attributes
FastJobScaler relies on, and a worker that looks `rp_scale.JobScaler` up when
it starts). Otherwise, or with KIT_WORKER_LOOP=stock in the environment, the
stock loop runs unchanged and the log says why.

Results. In a queue worker, a handler's dict or list result (and each chunk a
generator yields) is handed to the SDK as a copy whose repr is bounded
(`_short_repr`): the SDK formats every result into debug f-strings
("Handler output: ...", "run_job return: ...") whether or not debug lines are
logged, which for a large result costs as much as its JSON, on the event loop,
holding the GIL that the handler's threads need. The JSON the SDK posts is
unchanged; its debug lines show an abbreviated result.

On a runpod with prestart hooks (2.0), an exception that escapes handler.py's
setup cells in a queue worker goes through the SDK's prestart-failure path
(`_report_setup_failure`): the worker claims one job, fails it with the error
and exits 1, so the caller sees the error instead of a job waiting forever.
This file does not need the kit to run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import platform
import reprlib
import sys
from collections.abc import MutableMapping
from importlib import metadata

TESTED_RUNPOD = ("1.12.0", "2.0.0rc2")
LOOP_ENV = "KIT_WORKER_LOOP"  # "stock" forces the SDK's own loop


def _why_stock() -> str | None:
    """Why the stock loop must run, or None when the fast one may."""
    if os.environ.get(LOOP_ENV, "").strip().lower() == "stock":
        return f"{LOOP_ENV}=stock is set"
    try:
        version = metadata.version("runpod")
    except metadata.PackageNotFoundError:
        return "the runpod package has no version metadata"
    if version not in TESTED_RUNPOD:
        return f"runpod {version} is not a version the fast loop was tested with ({', '.join(TESTED_RUNPOD)})"
    return None


# What FastJobScaler uses of rp_scale.JobScaler: methods (async or not) and
# the attributes its __init__ sets, with their types.
SCALER_METHODS = {
    "set_scale": True,
    "run_jobs": True,
    "handle_job": True,
    "kill_worker": False,
    "is_alive": False,
    "current_occupancy": False,
}
SCALER_ATTRIBUTES = {
    "current_concurrency": int,
    "jobs_queue": asyncio.Queue,
    "jobs_tasks": MutableMapping,
    "_shutdown_event": asyncio.Event,
}


def _why_not_these_internals() -> str | None:
    """Why this runpod's internals do not fit FastJobScaler, or None when they do (runpod is imported)."""
    import inspect

    try:
        from runpod.serverless import worker
        from runpod.serverless.modules import rp_scale
    except ImportError as error:
        return f"runpod has no serverless worker modules ({error})"
    scaler = getattr(rp_scale, "JobScaler", None)
    if not isinstance(scaler, type):
        return "runpod.serverless.modules.rp_scale has no JobScaler class"
    for name, is_async in SCALER_METHODS.items():
        method = getattr(scaler, name, None)
        if not callable(method) or inspect.iscoroutinefunction(method) != is_async:
            return f"rp_scale.JobScaler has no {'async ' if is_async else ''}method {name}()"
    try:
        probe = scaler({"handler": lambda job: None})
    except Exception as error:
        return f"rp_scale.JobScaler(config) raised {type(error).__name__}: {error}"
    for name, kind in SCALER_ATTRIBUTES.items():
        if not isinstance(getattr(probe, name, None), kind):
            return f"rp_scale.JobScaler has no {name} attribute of type {kind.__name__}"
    run_worker = getattr(worker, "run_worker", None)
    names = getattr(getattr(run_worker, "__code__", None), "co_names", ())
    if getattr(worker, "rp_scale", None) is not rp_scale or not {"rp_scale", "JobScaler"} <= set(names):
        return "runpod.serverless.worker.run_worker does not look up rp_scale.JobScaler when it starts"
    return None


WHY_STOCK = _why_stock()


def _processor_name() -> dict:
    """What rp_debugger reads from cpuinfo.get_cpu_info(), without its subprocess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return {"brand_raw": line.split(":", 1)[1].strip()}
    except OSError:
        pass
    return {"brand_raw": platform.processor() or "Unable to get processor info."}


def _import_runpod_without_cpu_probe() -> None:
    import cpuinfo

    probe = cpuinfo.get_cpu_info
    cpuinfo.get_cpu_info = _processor_name
    try:
        import runpod  # noqa: F401
    finally:
        cpuinfo.get_cpu_info = probe  # the user's own calls get the real probe


_CPU_PROBE_RAN = "runpod" in sys.modules  # imported by the setup cells before this module
if WHY_STOCK is None and not _CPU_PROBE_RAN:
    _import_runpod_without_cpu_probe()

import runpod  # noqa: E402
from runpod.serverless.modules.rp_logger import RunPodLogger  # noqa: E402

log = RunPodLogger()

if WHY_STOCK is None:
    WHY_STOCK = _why_not_these_internals()


def _report_setup_failure(kind, error, trace) -> None:
    """sys.excepthook while handler.py's setup runs: hand the error to the SDK's prestart-failure path.

    The traceback is printed as usual; then the SDK, with the error as its only
    prestart hook, claims one job, fails it with a `prestart_failed` payload
    (type, message, traceback) and exits 1.
    """
    sys.excepthook = sys.__excepthook__
    sys.__excepthook__(kind, error, trace)
    if not isinstance(error, Exception):
        return

    def setup_cells():
        raise error

    runpod.serverless.register_prestart_hook(setup_cells)
    runpod.serverless.start({"handler": _no_handler})


def _no_handler(job):  # never called: no job runs after a failed prestart
    raise RuntimeError("handler.py's setup failed")


# Only in a queue worker (what RunPod runs), only on SDKs with the prestart path,
# only for exceptions escaping the module: start() puts the default hook back.
if (
    os.environ.get("RUNPOD_WEBHOOK_GET_JOB")
    and not os.environ.get("RUNPOD_REALTIME_PORT")
    and callable(getattr(runpod.serverless, "register_prestart_hook", None))
    and sys.excepthook is sys.__excepthook__
):
    sys.excepthook = _report_setup_failure

if WHY_STOCK is None:
    from runpod.serverless.modules import rp_scale

    class FastJobScaler(rp_scale.JobScaler):
        """The SDK's JobScaler, woken by events instead of a 1 s / 0.1 s tick."""

        def __init__(self, config):
            super().__init__(config)
            self._slot_freed = asyncio.Event()

        def kill_worker(self):
            super().kill_worker()
            self._slot_freed.set()  # a fetcher waiting for room sees the shutdown at once

        async def set_scale(self):
            # The stock get_jobs starts every turn with set_scale() and, when the
            # worker is full, sleeps 1 s. Waiting here until a job finishes means
            # get_jobs only runs its turn when it has room, so it never sleeps.
            await super().set_scale()
            while self.is_alive() and self.current_occupancy() >= self.current_concurrency:
                self._slot_freed.clear()
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    await super().set_scale()  # re-read the concurrency modifier as often as the stock loop

        async def run_jobs(self, session):
            """Start each fetched job as soon as it is queued; drain on shutdown (as the stock loop does)."""
            tasks: set[asyncio.Task] = set()
            getter: asyncio.Task | None = None  # a pending jobs_queue.get() while there is room
            getter_queue = None
            stopping = asyncio.ensure_future(self._shutdown_event.wait())
            try:
                while self.is_alive() or not self.jobs_queue.empty() or (getter is not None and getter.done()):
                    if getter is not None and (getter.done() or getter_queue is not self.jobs_queue):
                        if getter.done():
                            tasks.add(self._start_job(session, getter.result()))
                        else:  # set_scale replaced the queue: wait on the new one
                            getter.cancel()
                        getter = None
                    while len(tasks) < self.current_concurrency and not self.jobs_queue.empty():
                        tasks.add(self._start_job(session, self.jobs_queue.get_nowait()))
                    if getter is None and len(tasks) < self.current_concurrency and self.is_alive():
                        getter_queue = self.jobs_queue
                        getter = asyncio.ensure_future(getter_queue.get())
                    wakers = tasks | {stopping} | ({getter} if getter else set())
                    done, _ = await asyncio.wait(wakers, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                    tasks -= done
            finally:
                stopping.cancel()
                if getter is not None and not getter.done():
                    getter.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.error(f"FastJobScaler.run_jobs | Task failed during shutdown drain: {result}")

        def _start_job(self, session, job) -> asyncio.Task:
            task = asyncio.create_task(self.handle_job(session, job))
            task.add_done_callback(lambda _: self._slot_freed.set())
            self.jobs_tasks[job["id"]] = task
            return task


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 3, 8, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40


def _bounded_repr(base: type) -> type:
    """A subclass of `base` whose repr (and str) is bounded; json.dumps sees a `base`."""

    def __repr__(self) -> str:
        return _SHORT.repr(base(self))  # a plain copy: reprlib dispatches on the type's name

    return type(f"_Short{base.__name__}", (base,), {"__slots__": (), "__repr__": __repr__, "__str__": __repr__})


_SHORT_TYPES = {dict: _bounded_repr(dict), list: _bounded_repr(list)}


def _short_repr(value):
    """`value` as the SDK gets it: a shallow copy with a bounded repr when it is a dict or a list."""
    short = _SHORT_TYPES.get(type(value))
    return value if short is None else short(value)


def handler_kind(handler) -> str:
    """How the SDK calls `handler`: "function", "async", "generator" or "async_generator".

    A copy of kit.workerdir.HandlerKind.of (this file never imports the kit);
    tests/test_workerdir.py checks that the two agree on every kind.
    """
    if inspect.isasyncgenfunction(handler):
        return "async_generator"
    if inspect.isgeneratorfunction(handler):
        return "generator"
    return "async" if inspect.iscoroutinefunction(handler) else "function"


def _wrap_handler(handler, *, short_results: bool):
    """`handler`, such that a process it forks without exec (a bare `os.fork()`) stops when
    its copy of the handler call ends, instead of running a second copy of this worker
    loop on the same connections (which stalls the worker); with `short_results`, its
    results and chunks reach the SDK through `_short_repr`."""
    owner = os.getpid()
    out = _short_repr if short_results else (lambda value: value)

    def leave_if_forked():
        if os.getpid() != owner:
            os._exit(0)

    kind = handler_kind(handler)
    if kind == "async_generator":

        async def wrapped(job):
            chunks = handler(job)
            try:
                async for chunk in chunks:
                    yield out(chunk)
            finally:
                await chunks.aclose()
                leave_if_forked()
    elif kind == "generator":

        def wrapped(job):
            chunks = handler(job)
            try:
                for chunk in chunks:
                    yield out(chunk)
            finally:
                chunks.close()
                leave_if_forked()
    elif kind == "async":

        async def wrapped(job):  # type: ignore[misc]  # one wrapper per kind; the SDK inspects which it got
            try:
                return out(await handler(job))
            finally:
                leave_if_forked()
    else:

        def wrapped(job):
            try:
                result = handler(job)
                # A sync handler returning an awaitable: the SDK awaits it; its result stays as it is.
                return result if inspect.isawaitable(result) else out(result)
            finally:
                leave_if_forked()

    return functools.update_wrapper(wrapped, handler)


def start(config: dict) -> None:
    """`runpod.serverless.start(config)`, on the fast loop when this runpod version allows it."""
    if sys.excepthook is _report_setup_failure:
        sys.excepthook = sys.__excepthook__  # setup is over

    if callable(config.get("handler")):
        # Short reprs only against a job queue: `python handler.py`'s local test logs the whole result.
        queue = bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) and not os.environ.get("RUNPOD_REALTIME_PORT")
        config = {**config, "handler": _wrap_handler(config["handler"], short_results=queue)}
    if WHY_STOCK is None:
        rp_scale.JobScaler = FastJobScaler
        log.info("worker_loop: running the fast worker loop (fetching on room, no 1 s tick)")
        if _CPU_PROBE_RAN:
            log.info("worker_loop: runpod was imported before worker_loop, so its CPU probe already ran")
    elif os.environ.get(LOOP_ENV):
        log.info(f"worker_loop: running the SDK's stock worker loop: {WHY_STOCK}")
    else:
        log.warn(f"worker_loop: running the SDK's stock worker loop: {WHY_STOCK}")
    runpod.serverless.start(config)
