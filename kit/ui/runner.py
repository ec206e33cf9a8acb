"""Calling the kernel's handler as RunPod's worker would, inside the notebook kernel (the panel's Run).

`call_handler` accepts every handler kind (plain, async, generator, async
generator); coroutines run on `HANDLER_LOOP`, a long-lived loop in a thread
of its own, and what the handler prints while it runs can be routed to the
caller. No widgets here: the panel shows what these return.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from kit.workerdir import GENERATOR_KINDS


@dataclass
class HandlerRun:
    kind: str  # "function", "async", "generator" or "async_generator"
    seconds: float
    output: object = None  # the return value (None for generators)
    chunks: list = field(default_factory=list)  # what a generator yielded
    error: str | None = None  # the traceback when the handler raised

    @property
    def streamed(self) -> bool:
        return self.kind in GENERATOR_KINDS

    @property
    def result(self):
        """What the job's client gets: the output, or the aggregated stream."""
        return self.chunks if self.streamed else self.output


def call_handler(handler, job: dict | list, on_chunk=None, on_print=None) -> HandlerRun:
    """Call `handler(job)` as RunPod's worker would, whatever kind of handler it is.

    Coroutines and async generators run on the panel's own event loop (a
    thread, not the kernel's loop, which is busy running the kernel); each
    chunk a generator yields is passed to `on_chunk` as it arrives, and what
    the handler prints to `on_print` (when given).
    """
    on_chunk = on_chunk or (lambda chunk: None)
    run = HandlerRun(kind="function", seconds=0.0)
    caller = threading.get_ident()
    saved = sys.stdout, sys.stderr
    if on_print is not None:

        def ours():
            return threading.get_ident() in (caller, HANDLER_LOOP.thread_id)

        sys.stdout = _ThreadOutput(saved[0], ours, on_print)
        sys.stderr = _ThreadOutput(saved[1], ours, on_print)
    started = time.perf_counter()
    try:
        value = handler(job)
        if inspect.isasyncgen(value):
            run.kind = "async_generator"
            HANDLER_LOOP.run(_drain_async(value, run.chunks, on_chunk))
        elif inspect.isgenerator(value):
            run.kind = "generator"
            for chunk in value:
                run.chunks.append(chunk)
                on_chunk(chunk)
        elif inspect.isawaitable(value):
            run.kind = "async"
            run.output = HANDLER_LOOP.run(_await(value))
        else:
            run.output = value
    except Exception:
        run.error = traceback.format_exc()
    finally:
        run.seconds = time.perf_counter() - started
        sys.stdout, sys.stderr = saved
    return run


async def _await(awaitable):
    return await awaitable


async def _drain_async(agen, chunks: list, on_chunk) -> None:
    async for chunk in agen:
        chunks.append(chunk)
        on_chunk(chunk)


class HandlerLoop:
    """One long-lived event loop in its own thread, for the handler's coroutines.

    What a handler caches across jobs (clients, locks) stays bound to one loop,
    as in a worker; the kernel's own loop is busy running the kernel.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread_id: int | None = None

    def run(self, coroutine):
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._loop.run_forever, name="kit-panel-handler-loop", daemon=True)
                thread.start()
                self.thread_id = thread.ident
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


# The kernel's handler loop: one per kernel, shared by every panel in it.
HANDLER_LOOP = HandlerLoop()


class _ThreadOutput:
    """sys.stdout/stderr while the handler runs: what the handler's threads
    print goes to the panel; every other thread's output is left alone."""

    def __init__(self, original, ours, write):
        self._original = original
        self._ours = ours
        self._write = write

    def write(self, text):
        if self._ours():
            self._write(text)
            return len(text)
        return self._original.write(text)

    def __getattr__(self, name):
        return getattr(self._original, name)
