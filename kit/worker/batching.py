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

In a queue worker with a plain `def batch_handler`, handler.py's header calls
`split`: `python handler.py` runs only the SDK's loop and starts a child of
its own that runs the cells (the model) and `batch_handler`; each batch goes
to the child as one pickled message and comes back as one (see `split`). The
model then never waits for the GIL while the loop takes jobs, posts results
and sends heartbeats. KIT_BATCH_PROCESS=0 keeps everything in one process,
with `batch_handler` on a thread; so do an `async def batch_handler` (it runs
on the loop), `kit serve --watch` (a warm reload swaps it in place) and
`python handler.py`'s local test mode.

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
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_BATCH_WAIT_MS = 10.0
REPORT_ENV = "KIT_BATCH_REPORT"


def setting(namespace: dict, name: str, default: float, *, integer: bool) -> float:
    """`name` from the env var of that name, else from `namespace` (handler.py's globals), else `default`."""
    raw = os.environ.get(name, "").strip()
    value: object
    if raw:
        where, value = f"the env var {name}", raw
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            value = raw
    else:
        where, value = f"{name} in handler.py", namespace.get(name, default)
    kind = "a whole number of at least 1" if integer else "a number of milliseconds, 0 or more"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{where} must be {kind}, not {value!r}")
    assert isinstance(value, (int, float))  # for mypy: checked just above
    if not (value >= 1 if integer else 0 <= value < float("inf")):
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
    handler: Callable[[dict], Any]
    if inspect.iscoroutinefunction(batch_handler):

        async def handle_async(job):
            return _only(await batch_handler([job]))

        handler = handle_async
    else:

        def handle(job):
            return _only(batch_handler([job]))

        handler = handle
    handler.__name__ = "handler"
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
        deadline = self.deadline()
        if deadline is None or (not self.full and now < deadline):
            return None
        waited = now - self._items[0][0]
        count = min(self.max_size, len(self._items))
        return [self._items.popleft()[1] for _ in range(count)], waited


class Batcher:
    """Runs `batch_handler` on batches of the jobs that `handle(job)` is called with."""

    def __init__(
        self,
        batch_handler,
        max_size: float = DEFAULT_MAX_BATCH_SIZE,
        max_wait_ms: float = DEFAULT_MAX_BATCH_WAIT_MS,
        report_dir: str | None = None,
    ):
        self.batch_handler = batch_handler
        self.max_size = int(max_size)  # a whole number: `setting` checked it
        self.max_wait_ms = max_wait_ms
        self._queue = BatchQueue(self.max_size, max_wait_ms / 1000)
        self._async = inspect.iscoroutinefunction(batch_handler)
        self._thread: ThreadPoolExecutor | None = None  # created on the first sync call
        self._full: asyncio.Event | None = None
        self._dispatching = False
        self._dispatcher: asyncio.Task | None = None  # a strong reference: the loop keeps only weak ones
        self.remote: RemoteBatchHandler | None = None  # set in the worker loop's process when batch_handler runs in another
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
        full = self._full
        assert full is not None  # handle() made it before it started this task
        try:
            while len(self._queue):
                taken = self._queue.take(loop.time())
                if taken is None:
                    full.clear()
                    try:
                        await asyncio.wait_for(full.wait(), max(0.0, (self._queue.deadline() or 0.0) - loop.time()))
                    except asyncio.TimeoutError:
                        pass
                    continue
                await self._run(*taken)
        except BaseException as error:  # the loop is shutting down: no job may wait forever
            while (left := self._queue.take(float("inf"))) is not None:
                _fail(left[0], RuntimeError(f"the batch was not run: {error!r}"))
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
            if self.remote is not None:
                results = await self.remote(jobs)
            elif self._async:
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


# --------------------------------------------------------------------------- batch_handler in a process of its own

PROCESS_ENV = "KIT_BATCH_PROCESS"  # "0": batch_handler runs on a thread of the worker loop's process
CHILD_ENV = "KIT_BATCH_CHILD"  # set by `split` in the process it starts: the fds of its two sockets
_FRAME = struct.Struct("!Q")  # the length of the pickled message that follows
_OK, _RAISED, _READY, _ALONE = "ok", "raised", "ready", "one process"
_CHILD_EXIT_WAIT = 10.0  # seconds batch_handler's process gets to leave after the loop's has closed its end
_MODIFIER_EVERY = 1.0  # seconds between two calls of the notebook's concurrency_modifier (as the stock loop)
_child: dict = {}  # in batch_handler's process: its two sockets


def why_one_process() -> str | None:
    """Why handler.py must run as one process, or None when `split` may start batch_handler's own."""
    if os.environ.get(PROCESS_ENV, "").strip() == "0":
        return f"{PROCESS_ENV}=0 is set"
    if not os.environ.get("RUNPOD_WEBHOOK_GET_JOB") or os.environ.get("RUNPOD_REALTIME_PORT"):
        return "not a queue worker"
    if os.name != "posix":
        return "not a POSIX system"
    return None


def split(path: str, start_worker) -> None:
    """Called from handler.py's header: in a queue worker, run the SDK's loop here and the rest in a child.

    The child is `python handler.py` again: it runs the cells and, in the start
    block, `start`, which sends this process its batch settings and start
    options and then answers each batch with batch_handler's results. This
    process runs the SDK's loop (`start_worker`) with a Batcher whose calls go
    to the child; RunPod sees it as the worker (signals, draining, exit
    status). The child gets SIGKILL when this process dies. If the child dies,
    its batch fails saying so and this worker exits 1 once the SDK drained; if
    it exits before it is ready (its setup failed and said so), this process
    exits with its status. A child that cannot serve from another process (an
    `async def batch_handler`, start options that are functions) says why and
    exits, and this process runs handler.py itself.
    """
    if os.environ.get(CHILD_ENV):
        _become_child()
        return
    if why_one_process() is not None:
        return
    ours, theirs = socket.socketpair()
    our_control, their_control = socket.socketpair()
    fds = (theirs.fileno(), their_control.fileno())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    argv = sys.argv if sys.argv and os.path.abspath(sys.argv[0]) == os.path.abspath(path) else [path]
    flags: list[str] = getattr(subprocess, "_args_from_interpreter_flags", list)()  # -u, -X ..., -O: as this interpreter was started
    child = subprocess.Popen(
        [sys.executable, *flags, *argv],
        env={**os.environ, CHILD_ENV: f"{fds[0]},{fds[1]}"},
        pass_fds=fds,
        preexec_fn=_die_with_parent,  # the parent has no threads yet: only runpod is imported
    )
    theirs.close()
    their_control.close()
    try:
        ready = _receive(ours.makefile("rb"))
    except (OSError, EOFError, pickle.UnpicklingError):
        ready = None
    if ready is None:  # its setup failed (and said so), or it was killed
        code = child.wait()
        sys.exit(code if code >= 0 else 128 - code)
    if ready[0] == _ALONE:
        child.wait()
        ours.close()
        our_control.close()
        print(f"batching: batch_handler runs in this process: {ready[1]}", flush=True)
        return
    settings = ready[1]
    print(f"batching: batch_handler runs in process {child.pid}, the worker loop in process {os.getpid()}", flush=True)
    batcher = Batcher(None, settings["max_size"], settings["max_wait_ms"], os.environ.get(REPORT_ENV) or None)
    batcher.remote = remote = RemoteBatchHandler(ours, child)
    modifier = RemoteModifier(our_control) if settings["modifier"] else batcher.concurrency
    code = 0
    try:
        start_worker({"handler": batcher.handle, "concurrency_modifier": modifier, **settings["options"]})
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        ours.close()  # the child's cue to leave
        our_control.close()
        try:
            child.wait(_CHILD_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    sys.exit(code or (1 if remote.lost and not remote.out_of_step else 0))


def start(batcher: Batcher, start_worker, config: dict) -> None:
    """handler.py's start block: `start_worker(config)`, or, in the process `split` started, serve its batches."""
    if not _child:
        start_worker(config)
        return
    batch, control = _child["batch"], _child["control"]
    options = {key: value for key, value in config.items() if key not in ("handler", "concurrency_modifier")}
    modifier = config.get("concurrency_modifier")
    why = None
    if batcher._async:
        why = "batch_handler is an async def: it runs on the worker loop"
    elif any(callable(value) for value in options.values()):
        why = "a start option in RUNPOD_CONFIG is a function"
    else:
        try:
            pickle.dumps(options)
        except Exception as error:
            why = f"the start options in RUNPOD_CONFIG cannot be sent to another process ({error})"
    if why is not None:
        _send(batch, (_ALONE, why))
        sys.exit(0)
    own = getattr(modifier, "__self__", None) is batcher
    settings = {"max_size": batcher.max_size, "max_wait_ms": batcher.max_wait_ms, "modifier": not own, "options": options}
    _send(batch, (_READY, settings))
    if not own and callable(modifier):
        threading.Thread(target=_answer_modifier, args=(modifier, control), name="concurrency_modifier", daemon=True).start()
    _answer(batcher.batch_handler, batch)
    sys.exit(0)


def _become_child() -> None:
    batch_fd, control_fd = (int(fd) for fd in os.environ.pop(CHILD_ENV).split(","))
    _child["batch"] = socket.socket(fileno=batch_fd)
    _child["control"] = socket.socket(fileno=control_fd)
    # Ctrl-C in a terminal reaches the whole process group: the SDK's process drains, this one keeps serving.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the worker loop's process dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _send(sock: socket.socket, message) -> None:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    sock.sendall(_FRAME.pack(len(data)) + data)


def _receive(stream):
    """The next message from a socket's binary file, or None at its end."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return pickle.loads(body)


# ------------------------------------------------- the worker loop's process


class BatchProcessLost(RuntimeError):
    """batch_handler's process is gone: the batch cannot run, and the worker exits."""


class RemoteTraceback(Exception):
    """The traceback batch_handler raised with, in its own process (shown as the error's cause)."""


class RemoteBatchHandler:
    """`await remote(jobs)`: batch_handler(jobs) in batch_handler's process, one call at a time."""

    def __init__(self, sock: socket.socket, child: subprocess.Popen):
        self._sock = sock
        self._child = child
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock: asyncio.Lock | None = None
        self.lost: str | None = None  # why no batch can run any more
        self.out_of_step = False  # lost by a cancellation (the loop's shutdown), not by the process's end

    async def __call__(self, jobs: list):
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.lost is not None:
                raise BatchProcessLost(self.lost)
            payload = pickle.dumps(jobs, pickle.HIGHEST_PROTOCOL)
            try:
                if self._streams is None:
                    self._streams = await asyncio.open_connection(sock=self._sock)
                reader, writer = self._streams
                writer.write(_FRAME.pack(len(payload)) + payload)
                await writer.drain()
                (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
                kind, value = pickle.loads(await reader.readexactly(size))
            except (OSError, EOFError, asyncio.IncompleteReadError):
                raise self._lose(await self._how_it_ended()) from None
            except BaseException:  # cancelled mid-message: the stream is out of step from here on
                self.out_of_step = True
                self.lost = "the worker loop stopped while batch_handler ran"
                raise
        if kind == _OK:
            return value
        raise _rebuilt(*value)

    async def _how_it_ended(self) -> str:
        for _ in range(20):  # it closed its end: it is exiting, give it a moment to be reaped
            if self._child.poll() is not None:
                break
            await asyncio.sleep(0.05)
        code = self._child.returncode
        how = "" if code is None else f", killed by signal {-code}" if code < 0 else f", exit status {code}"
        return f"batch_handler's process (pid {self._child.pid}) ended while it ran this batch{how}"

    def _lose(self, why: str) -> BatchProcessLost:
        if self.lost is None:
            self.lost = f"{why}: this worker exits, to be started again"
            print(f"batching: {self.lost}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # the SDK drains (failing the jobs it holds) and exits
        return BatchProcessLost(self.lost)


class RemoteModifier:
    """The notebook's concurrency_modifier, called in batch_handler's process at most once a second."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._stream = sock.makefile("rb")
        self._value: int | None = None
        self._when = 0.0

    def __call__(self, current: int) -> int:
        if self._value is not None and time.monotonic() - self._when < _MODIFIER_EVERY:
            return self._value
        try:
            _send(self._sock, current)
            self._sock.settimeout(5.0)
            value = _receive(self._stream)
        except (OSError, EOFError, pickle.UnpicklingError):
            value = None
        self._value, self._when = (value if isinstance(value, int) else current), time.monotonic()
        return self._value


def _rebuilt(blob: bytes | None, name: str, message: str, trace: str) -> BaseException:
    error = None
    if blob is not None:
        try:
            error = pickle.loads(blob)
        except Exception:  # a class this process does not have: described instead
            error = None
    if not isinstance(error, BaseException):
        error = RuntimeError(f"{name}: {message}")
    error.__cause__ = RemoteTraceback(f"\n\n(in batch_handler's process)\n{trace}")
    return error


# ------------------------------------------------- batch_handler's process


def _answer(batch_handler, sock: socket.socket) -> None:
    """Call batch_handler on each batch that arrives, send its results back; return at the socket's end."""
    stream = sock.makefile("rb")
    loop: asyncio.AbstractEventLoop | None = None  # for a def batch_handler that returns an awaitable
    while True:
        try:
            jobs = _receive(stream)
        except OSError:
            return
        if jobs is None:
            return  # the worker loop's process closed its end: it is exiting
        reply: tuple
        try:
            results = batch_handler(jobs)
            if inspect.isawaitable(results):
                loop = loop or asyncio.new_event_loop()
                results = loop.run_until_complete(results)  # ensure_future takes any awaitable
            reply = (_OK, results)
        except Exception as error:  # fails every job of the batch, with the handler's traceback
            reply = (_RAISED, _portable(error))
        except BaseException as error:  # SystemExit in batch_handler: the batch fails, the worker serves on
            reply = (_RAISED, _portable(RuntimeError(f"batch_handler was interrupted: {error!r}")))
        try:
            data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # a result pickle refuses is not JSON either
            problem = TypeError(f"batch_handler returned a result that cannot be sent as JSON ({type(error).__name__}: {error})")
            data = pickle.dumps((_RAISED, _portable(problem)), pickle.HIGHEST_PROTOCOL)
        try:
            sock.sendall(_FRAME.pack(len(data)) + data)
        except OSError:
            return


def _answer_modifier(modifier, sock: socket.socket) -> None:
    stream = sock.makefile("rb")
    while True:
        try:
            current = _receive(stream)
            if current is None:
                return
            try:
                value = modifier(current)
            except Exception:  # the SDK's own loop would log it and keep the current concurrency
                traceback.print_exc()
                value = current
            _send(sock, value)
        except OSError:
            return


def _portable(error: BaseException) -> tuple:
    """`error` as the other process rebuilds it: pickled when it can be, its type, message and traceback."""
    try:
        blob: bytes | None = pickle.dumps(error, pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle is described instead
        blob = None
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return blob, type(error).__name__, str(error), trace
