"""The `kit serve --watch` reload protocol: small typed events the watcher and the workers exchange.

Both sides import this module, as `kit test`'s parent and harness share `kit.test.events`: the
watcher (`kit.serve.watch`, in the kit's process) and the reloader (`kit.worker.reloader`, in each
worker's process). They talk through files in a control directory (``$KIT_RELOAD_DIR``) and one
signal:

- watcher -> workers: a `Generation` (which handler.py to serve, numbered) in ``generation.json``,
  then `RELOAD_SIGNAL` to every worker;
- worker -> watcher: its latest `Loaded` or `LoadFailed` for a generation, in
  ``<worker id>.json``.

Each file is written whole and renamed into place, so a reader never sees half of one. A file that
is missing or holds no event of this module reads as None, never as a crash of the reader.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

CONTROL_ENV = "KIT_RELOAD_DIR"  # the control directory, in the worker's environment
GENERATION_FILE = "generation.json"
RELOAD_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Generation(Event):
    """The code the workers are to serve: generation 0 is the first export, each reload adds one."""

    kind: ClassVar[str] = "generation"
    number: int
    handler: str  # the path of that export's handler.py


@dataclass(frozen=True)
class Report(Event):
    """What a worker says about a generation: `Loaded` or `LoadFailed`."""

    worker: str  # its id (RUNPOD_POD_ID)
    pid: int
    generation: int


@dataclass(frozen=True)
class Loaded(Report):
    """A worker has a generation's code in place: jobs it takes from now on run it."""

    kind: ClassVar[str] = "loaded"
    at: float  # time.time() when the code was in place


@dataclass(frozen=True)
class LoadFailed(Report):
    """A generation's handler cells failed in the worker, which keeps serving the code it had."""

    kind: ClassVar[str] = "load_failed"
    error: str  # "cell N, line M: Type: message"


EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in (Generation, Loaded, LoadFailed)}
_TYPES = {"int": (int,), "str": (str,), "float": (int, float)}


def encode(event: Event) -> str:
    return json.dumps(event.to_json())


def decode(text: str) -> Event | None:
    """The event `text` holds, or None when it is not one (wrong kind, missing or mistyped field)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or (cls := EVENT_TYPES.get(data.pop("event", None))) is None:
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if set(data) != set(fields):
        return None
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, _TYPES[str(fields[name].type)]):
            return None
    return cls(**data)


def _write(path: Path, event: Event) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(encode(event), encoding="utf-8")
    os.replace(partial, path)


def _read(path: Path) -> Event | None:
    try:
        return decode(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None


def publish(control: Path, generation: Generation) -> None:
    """The watcher: the workers are to serve `generation` (then signal them)."""
    _write(control / GENERATION_FILE, generation)


def published(control: Path) -> Generation | None:
    """The worker: the generation the watcher last published."""
    event = _read(control / GENERATION_FILE)
    return event if isinstance(event, Generation) else None


def report(control: Path, event: Report) -> None:
    """The worker: what became of a generation in it (replaces its previous report)."""
    _write(control / f"{event.worker}.json", event)


def reported(control: Path, worker_id: str) -> Report | None:
    """The watcher: the worker's latest report."""
    event = _read(control / f"{worker_id}.json")
    return event if isinstance(event, Report) else None
