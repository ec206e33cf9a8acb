"""`python -m kit.worker.reloader`: the exported worker as `kit serve --watch` runs it, with warm reload.

Run in a worker directory instead of ``python handler.py``. It runs
handler.py's header and cells once, as ``python handler.py`` would (setup
included), then runs handler.py's own start block (`# %% worker start`: the
exported `worker_loop.start(config)`, the SDK's real loop) with two stand-ins
in the config: a `handler` that always calls the current generation's
handler, and a `concurrency_modifier` that calls the current generation's
modifier when the notebook defines one. handler.py itself is unchanged and
never imports the kit; only this launcher does.

Warm reload: the supervisor (`kit.serve.watch`) publishes the new handler.py
as a `Generation` and sends the reload signal (the protocol and its files:
`kit.worker.reload_events`). A control thread then runs only the new file's
`handler` cells, in a copy of the current namespace (setup's objects, the
model, are shared, not re-made), and swaps the copy in: a job already running
keeps the functions and globals of its own generation, a job started after
the swap gets the new ones. For each generation the launcher reports `Loaded`
when the new code is in place, or `LoadFailed` with why it is not.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
import types
from pathlib import Path

from kit import workerdir
from kit.worker import batching, loader, reload_events
from kit.worker.loader import SourceMap, WorkerSource
from kit.worker.reload_events import CONTROL_ENV, RELOAD_SIGNAL
from kit.workerdir import HandlerKind


class Generation:
    """One version of the handler code: its number and module namespace."""

    def __init__(self, number: int, module: types.ModuleType):
        self.number = number
        self.module = module


class Launcher:
    def __init__(self, worker: Path, control: Path | None, worker_id: str):
        self.worker = worker
        self.control = control
        self.worker_id = worker_id
        self.path = worker / workerdir.HANDLER
        self.sources = SourceMap()
        self.lock = threading.Lock()
        self.current: Generation  # set by load()
        self.loaded: str = str(self.path)
        self.footer = ""
        self.flags = 0
        self.kind = HandlerKind.FUNCTION  # the loaded handler's, set by load()

    # ------------------------------------------------------------ startup: handler.py as it is
    def load(self) -> None:
        source = WorkerSource.read(self.path)
        self.sources.add(self.path, source.cells)
        self.footer = source.footer
        module = types.ModuleType("__main__")
        module.__file__ = str(self.path)
        module.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = module  # as `python handler.py`: the user's code is __main__
        self.flags = loader.run_header(source, module.__dict__)
        for cell in source.cells:
            loader.run_cell(self.path, cell, module.__dict__, self.flags)
        published = reload_events.published(self.control) if self.control else None
        number = published.number if published and published.handler == str(self.path) else 0
        self.current = Generation(number, module)
        self.kind = HandlerKind.of(module.__dict__.get("handler"))

    # ------------------------------------------------------------ warm reload
    def reload(self) -> None:
        """Swap in the handler cells of the published generation, if it is newer than the current one."""
        if self.control is None:
            return
        with self.lock:
            wanted = reload_events.published(self.control)
            if wanted is None or wanted.number <= self.current.number:
                return
            number, path = wanted.number, Path(wanted.handler)
            try:
                source = WorkerSource.read(path)
                module = types.ModuleType("__main__")
                module.__dict__.update(self.current.module.__dict__)  # setup's objects, shared
                module.__file__ = str(path)
                self.sources.add(path, source.cells)
                for cell in source.cells:
                    if cell.tag == "handler":
                        loader.run_cell(path, cell, module.__dict__, self.flags)
                if _family(HandlerKind.of(module.__dict__.get("handler"))) != _family(self.kind):
                    raise TypeError("the handler's kind changed: a warm reload cannot change it")
                if _batch_kind(module.__dict__) != _batch_kind(self.current.module.__dict__):
                    raise TypeError("batch_handler changed between def and async def (or came or went): a warm reload cannot change that")
            except BaseException as error:
                self._report(reload_events.LoadFailed(self.worker_id, os.getpid(), number, self.sources.locate(error)))
                return
            self.current = Generation(number, module)
            sys.modules["__main__"] = module
            self._report(reload_events.Loaded(self.worker_id, os.getpid(), number, time.time()))

    def _report(self, event: reload_events.Report) -> None:
        if self.control is not None:
            reload_events.report(self.control, event)

    def control_loop(self) -> None:
        while True:
            signal.sigwait({RELOAD_SIGNAL})
            try:
                self.reload()
            except Exception:  # a kit bug: say it in the worker's log, keep serving
                traceback.print_exc()

    # ------------------------------------------------------------ what the SDK calls
    def handler(self):
        """A function of the handler's kind that calls the current generation's handler
        (looked up when the job starts: a job keeps its generation's code to the end)."""
        launcher = self

        if self.kind is HandlerKind.ASYNC_GENERATOR:

            async def handler(job):
                async for chunk in launcher.current.module.handler(job):
                    yield chunk

        elif self.kind is HandlerKind.GENERATOR:

            def handler(job):
                yield from launcher.current.module.handler(job)

        else:

            def handler(job):
                return launcher.current.module.handler(job)  # a coroutine, for an async handler: the SDK awaits it

        return handler

    def batch_handler(self):
        """A batch_handler of the notebook's kind (def or async def) that calls the current generation's."""
        launcher = self

        async def batch_handler_async(jobs):
            return await launcher.current.module.batch_handler(jobs)

        def batch_handler(jobs):
            return launcher.current.module.batch_handler(jobs)

        return batch_handler_async if HandlerKind.of(self.current.module.batch_handler).is_async else batch_handler

    def concurrency_modifier(self, current: int) -> int:
        return self.current.module.concurrency_modifier(current)

    def start(self) -> None:
        """handler.py's own start block, with the stand-ins."""
        namespace = {
            "__name__": "__main__",
            "__file__": str(self.path),
            "__builtins__": __builtins__,
            "handler": self.handler(),
            "concurrency_modifier": self.concurrency_modifier,
        }
        module = self.current.module.__dict__
        if callable(module.get("batch_handler")):  # the start block reads batch_handler and its settings
            namespace["batch_handler"] = self.batch_handler()
            namespace.update({name: module[name] for name in ("MAX_BATCH_SIZE", "MAX_BATCH_WAIT_MS") if name in module})
        exec(compile(self.footer, str(self.path), "exec", dont_inherit=True), namespace)


def _batch_kind(namespace: dict) -> HandlerKind | None:
    batch_handler = namespace.get("batch_handler")
    return HandlerKind.of(batch_handler) if callable(batch_handler) else None


def _family(kind: HandlerKind) -> str:
    """Kinds one stand-in serves: a plain stand-in returns a coroutine as readily as a value."""
    return kind.value if kind.streaming else "plain"


def main() -> int:
    # Only the control thread takes the reload signal (sigwait): blocked here, before any
    # thread starts, so every thread inherits the mask and the SDK's loop is never interrupted.
    signal.pthread_sigmask(signal.SIG_BLOCK, {RELOAD_SIGNAL})
    # A warm reload swaps batch_handler in this process: handler.py must not split (see batching.py).
    os.environ[batching.PROCESS_ENV] = "0"
    worker = Path.cwd()
    if str(worker) not in sys.path:
        sys.path.insert(0, str(worker))
    control = Path(os.environ[CONTROL_ENV]) if os.environ.get(CONTROL_ENV) else None
    launcher = Launcher(worker, control, os.environ.get("RUNPOD_POD_ID", "worker"))
    launcher.load()
    launcher._report(reload_events.Loaded(launcher.worker_id, os.getpid(), launcher.current.number, time.time()))
    threading.Thread(target=launcher.control_loop, name="kit-reload", daemon=True).start()
    launcher.reload()  # a save that came while this worker started
    launcher.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
