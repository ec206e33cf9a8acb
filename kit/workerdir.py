"""The worker directory: what `kit export` writes and `kit test|serve|bench` and the image read.

One home for its file names and for its manifest, `kit.json`, which records
what the export found (the handler's kind, the cells, the test jobs) and
which files the kit wrote, so a re-export replaces exactly those.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

HANDLER = "handler.py"
REQUIREMENTS = "requirements.txt"
TESTS = "tests.py"
TEST_INPUT = "test_input.json"
MANIFEST = "kit.json"
WORKER_LOOP = "worker_loop.py"
BATCHING = "batching.py"  # only beside a handler.py whose notebook defines batch_handler(jobs)

# Every name the kit itself generates; a local module of the notebook may not take one.
GENERATED = (HANDLER, REQUIREMENTS, TESTS, TEST_INPUT, MANIFEST, WORKER_LOOP, BATCHING)


class HandlerKind(str, Enum):
    """How the SDK calls a handler: the one classification every step reads.

    The values are what kit.json's `handler_kind` holds. worker_loop.py, which never
    imports the kit, keeps its own copy of `of` (tests/test_workerdir.py checks they agree).
    """

    FUNCTION = "function"
    ASYNC = "async"
    GENERATOR = "generator"
    ASYNC_GENERATOR = "async_generator"

    @classmethod
    def of(cls, function: object) -> HandlerKind:
        """The kind of a live function (a handler, or a batch_handler: FUNCTION or ASYNC)."""
        if inspect.isasyncgenfunction(function):
            return cls.ASYNC_GENERATOR
        if inspect.isgeneratorfunction(function):
            return cls.GENERATOR
        return cls.ASYNC if inspect.iscoroutinefunction(function) else cls.FUNCTION

    @classmethod
    def from_syntax(cls, is_async: bool, is_generator: bool) -> HandlerKind:
        """The kind of a `def` read from source: `async def` and whether its own body yields."""
        if is_generator:
            return cls.ASYNC_GENERATOR if is_async else cls.GENERATOR
        return cls.ASYNC if is_async else cls.FUNCTION

    @property
    def streaming(self) -> bool:
        """Generator kinds: the SDK streams their chunks and aggregates them for /runsync."""
        return self in (HandlerKind.GENERATOR, HandlerKind.ASYNC_GENERATOR)

    @property
    def is_async(self) -> bool:
        return self in (HandlerKind.ASYNC, HandlerKind.ASYNC_GENERATOR)


HANDLER_KINDS = tuple(kind.value for kind in HandlerKind)
GENERATOR_KINDS = tuple(kind.value for kind in HandlerKind if kind.streaming)


@dataclass
class Manifest:
    """kit.json. `jobs` holds {"cell": N, "line": L, "job": {...}} for each job literal of the test cells."""

    notebook: str
    handler_kind: str
    setup_cells: list[int] = field(default_factory=list)
    handler_cells: list[int] = field(default_factory=list)
    test_cells: list[int] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    batch_handler_kind: str | None = None  # "function" or "async" when a handler cell defines batch_handler(jobs)
    command: str | None = None  # the command that wrote the directory, as run
    files: list[str] = field(default_factory=list)  # what the export wrote, local module copies included
    # sha256 of each repository file (kit export --repo) as the kit wrote it: rewritten only while unchanged
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def streaming(self) -> bool:
        return self.handler_kind in GENERATOR_KINDS

    def to_text(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Manifest:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("kit.json is not a JSON object")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    @classmethod
    def read(cls, directory: str | Path) -> Manifest | None:
        """The manifest of `directory`, or None when it has none (a worker written by hand) or it is unreadable."""
        try:
            return cls.from_text((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            return None


def is_worker_dir(path: str | Path) -> bool:
    return (Path(path) / HANDLER).is_file()


def jobs_to_test(directory: str | Path) -> list[dict[str, Any]]:
    """The jobs `kit test` runs: the manifest's, or test_input.json's in a worker written by hand."""
    manifest = Manifest.read(directory)
    if manifest is not None:
        return manifest.jobs
    path = Path(directory) / TEST_INPUT
    if path.is_file():
        return [{"cell": None, "line": None, "job": json.loads(path.read_text(encoding="utf-8"))}]
    return []


def example_job(directory: str | Path) -> dict[str, Any] | None:
    """The worker's test job (test_input.json), for the banner of `kit serve` and the load of `kit bench`."""
    path = Path(directory) / TEST_INPUT
    if not path.is_file():
        return None
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return job if isinstance(job, dict) else None
