"""`python -m kit.worker.reloader`: the exported worker as `kit serve --watch` runs it, with warm reload.

Run in a worker directory instead of ``python handler.py``. It runs
handler.py's header and cells once, as ``python handler.py`` would (setup
included), then runs handler.py's own start block (`# %% worker start`: the
exported `worker_loop.start(config)`, the SDK's real loop) with two stand-ins
in the config: a `handler` that always calls the current generation's
handler, and a `concurrency_modifier` that calls the current generation's
modifier when the notebook defines one. handler.py itself is unchanged and
never imports the kit; only this launcher does.

Warm reload: the supervisor (`kit.serve.watch`) writes the new handler.py's
path to ``$KIT_RELOAD_DIR/generation.json`` and sends SIGUSR1. A control
thread then runs only the new file's `handler` cells, in a copy of the
current namespace (setup's objects, the model, are shared, not re-made), and
swaps the copy in: a job already running keeps the functions and globals of
its own generation, a job started after the swap gets the new ones. For each
generation the launcher writes ``$KIT_RELOAD_DIR/<worker id>.json`` when the
new code is in place (or why it is not) and when it served its first job.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
import types
from pathlib import Path

from kit import percent, workerdir
from kit.percent import PercentCell
from kit.worker import batching
from kit.worker.harness import FUTURE_FLAGS, SourceMap
from kit.workerdir import HandlerKind

CONTROL_ENV = "KIT_RELOAD_DIR"
GENERATION_FILE = "generation.json"
RELOAD_SIGNAL = signal.SIGUSR1


def write_json(path: Path, data: dict) -> None:
    """Write `data` to `path` atomically (a reader never sees half a file)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(data), encoding="utf-8")
    os.replace(partial, path)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Generation:
    """One version of the handler code: its module namespace, and whether it served a job yet."""

    def __init__(self, number: int, module: types.ModuleType):
        self.number = number
        self.module = module
        self.served = False


class Launcher:
    def __init__(self, worker: Path, control: Path | None, worker_id: str):
        self.worker = worker
        self.control = control
        self.worker_id = worker_id
        self.path = worker / workerdir.HANDLER
        self.sources = SourceMap()
        self.lock = threading.Lock()
        self.current: Generation | None = None
        self.loaded: str = str(self.path)
        self.footer = ""
        self.flags = 0
        self._report: dict = {"worker": worker_id, "pid": os.getpid()}

    # ------------------------------------------------------------ startup: handler.py as it is
    def load(self) -> None:
        parsed = percent.parse(self.path.read_text(encoding="utf-8"))
        cells = parsed.cells or [PercentCell(None, "module", parsed.header, 1)]
        header = parsed.header if parsed.cells else ""
        self.sources.add(self.path, cells)
        self.footer = parsed.footer
        module = types.ModuleType("__main__")
        module.__file__ = str(self.path)
        module.__builtins__ = __builtins__
        sys.modules["__main__"] = module  # as `python handler.py`: the user's code is __main__
        header_code = compile(header, str(self.path), "exec", dont_inherit=True)
        self.flags = header_code.co_flags & FUTURE_FLAGS
        exec(header_code, module.__dict__)
        for cell in cells:
            self._run_cell(self.path, cell, module)
        generation = read_json(self.control / GENERATION_FILE) if self.control else None
        number = generation.get("generation", 0) if generation and generation.get("handler") == str(self.path) else 0
        self.current = Generation(number, module)
        self.kind = _kind(module.__dict__.get("handler"))

    def _run_cell(self, path: Path, cell: PercentCell, module: types.ModuleType) -> None:
        code = compile("\n" * (cell.start_line - 1) + cell.source, str(path), "exec", self.flags, dont_inherit=True)
        exec(code, module.__dict__)

    # ------------------------------------------------------------ warm reload
    def reload(self) -> None:
        """Swap in the handler cells of the handler.py generation.json names, if it is newer."""
        if self.control is None:
            return
        with self.lock:
            wanted = read_json(self.control / GENERATION_FILE)
            if not wanted or not isinstance(wanted.get("generation"), int) or wanted["generation"] <= self.current.number:
                return
            number, path = wanted["generation"], Path(str(wanted.get("handler")))
            try:
                parsed = percent.parse(path.read_text(encoding="utf-8"))
                module = types.ModuleType("__main__")
                module.__dict__.update(self.current.module.__dict__)  # setup's objects, shared
                module.__file__ = str(path)
                self.sources.add(path, parsed.cells)
                for cell in parsed.cells:
                    if cell.tag == "handler":
                        self._run_cell(path, cell, module)
                if _family(module.__dict__.get("handler")) != _family_of(self.kind):
                    raise TypeError("the handler's kind changed: a warm reload cannot change it")
                if _batch_kind(module.__dict__) != _batch_kind(self.current.module.__dict__):
                    raise TypeError("batch_handler changed between def and async def (or came or went): a warm reload cannot change that")
            except BaseException as error:
                self._write(number, error=self._locate(error))
                return
            self.current = Generation(number, module)
            sys.modules["__main__"] = module
            self._write(number, loaded=time.time())

    def _locate(self, error: BaseException) -> str:
        frames = self.sources.frames_of(error)
        where = ""
        if frames and frames[-1].cell is not None:
            where = f"cell {frames[-1].cell}, line {frames[-1].line}: "
        return f"{where}{type(error).__name__}: {error}"

    def _write(self, number: int, **fields) -> None:
        if self.control is None:
            return
        if self._report.get("generation") != number:
            self._report = {"worker": self.worker_id, "pid": os.getpid(), "generation": number}
        self._report.update(fields)
        write_json(self.control / f"{self.worker_id}.json", self._report)

    def control_loop(self) -> None:
        while True:
            signal.sigwait({RELOAD_SIGNAL})
            try:
                self.reload()
            except Exception:  # a kit bug: say it in the worker's log, keep serving
                traceback.print_exc()

    # ------------------------------------------------------------ what the SDK calls
    def _served(self, generation: Generation, job: dict) -> None:
        if not generation.served:
            generation.served = True
            self._write(generation.number, served=time.time(), job=job.get("id"))

    def handler(self):
        """A function of the handler's kind that calls the current generation's handler."""
        launcher = self

        if self.kind == "async_generator":

            async def handler(job):
                generation = launcher.current
                try:
                    async for chunk in generation.module.handler(job):
                        yield chunk
                finally:
                    launcher._served(generation, job)

        elif self.kind == "generator":

            def handler(job):
                generation = launcher.current
                try:
                    yield from generation.module.handler(job)
                finally:
                    launcher._served(generation, job)

        else:

            def handler(job):
                generation = launcher.current
                try:
                    result = generation.module.handler(job)
                except BaseException:
                    launcher._served(generation, job)
                    raise
                if inspect.isawaitable(result):
                    return _then(result, lambda: launcher._served(generation, job))
                launcher._served(generation, job)
                return result

        return handler

    def batch_handler(self):
        """A batch_handler of the notebook's kind (def or async def) that calls the current generation's."""
        launcher = self

        async def batch_handler_async(jobs):
            generation = launcher.current
            try:
                return await generation.module.batch_handler(jobs)
            finally:
                launcher._served(generation, jobs[0] if jobs else {})

        def batch_handler(jobs):
            generation = launcher.current
            try:
                return generation.module.batch_handler(jobs)
            finally:
                launcher._served(generation, jobs[0] if jobs else {})

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


async def _then(awaitable, after):
    try:
        return await awaitable
    finally:
        after()


def _kind(handler) -> str:
    if inspect.isasyncgenfunction(handler):
        return "async_generator"
    if inspect.isgeneratorfunction(handler):
        return "generator"
    return "async" if inspect.iscoroutinefunction(handler) else "function"


def _batch_kind(namespace: dict) -> HandlerKind | None:
    batch_handler = namespace.get("batch_handler")
    return HandlerKind.of(batch_handler) if callable(batch_handler) else None


def _family_of(kind: str) -> str:
    """Kinds one stand-in serves: a plain stand-in returns a coroutine as readily as a value."""
    return kind if kind in workerdir.GENERATOR_KINDS else "plain"


def _family(handler) -> str:
    return _family_of(_kind(handler))


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
    launcher._write(launcher.current.number, loaded=time.time())
    threading.Thread(target=launcher.control_loop, name="kit-reload", daemon=True).start()
    launcher.reload()  # a save that came while this worker started
    launcher.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
