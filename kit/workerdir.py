"""The worker directory: what `kit export` writes and `kit test|serve|bench` and the image read.

One home for its file names and for its manifest, `kit.json`, which records
what the export found (the handler's kind, the cells, the test jobs) and
which files the kit wrote, so a re-export replaces exactly those.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

HANDLER = "handler.py"
REQUIREMENTS = "requirements.txt"
TESTS = "tests.py"
TEST_INPUT = "test_input.json"
MANIFEST = "kit.json"
WORKER_LOOP = "worker_loop.py"
BATCHING = "batching.py"  # only beside a handler.py whose notebook defines batch_handler(jobs)

# Every name the kit itself generates; a local module of the notebook may not take one.
GENERATED = (HANDLER, REQUIREMENTS, TESTS, TEST_INPUT, MANIFEST, WORKER_LOOP, BATCHING)

HANDLER_KINDS = ("function", "async", "generator", "async_generator")
GENERATOR_KINDS = ("generator", "async_generator")


@dataclass
class Manifest:
    """kit.json. `jobs` holds {"cell": N, "line": L, "job": {...}} for each job literal of the test cells."""

    notebook: str
    handler_kind: str
    setup_cells: list[int] = field(default_factory=list)
    handler_cells: list[int] = field(default_factory=list)
    test_cells: list[int] = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)
    batch_handler_kind: str | None = None  # "function" or "async" when a handler cell defines batch_handler(jobs)
    command: str | None = None  # the command that wrote the directory, as run
    files: list[str] = field(default_factory=list)  # what the export wrote, local module copies included

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


def jobs_to_test(directory: str | Path) -> list[dict]:
    """The jobs `kit test` runs: the manifest's, or test_input.json's in a worker written by hand."""
    manifest = Manifest.read(directory)
    if manifest is not None:
        return manifest.jobs
    path = Path(directory) / TEST_INPUT
    if path.is_file():
        return [{"cell": None, "line": None, "job": json.loads(path.read_text(encoding="utf-8"))}]
    return []


def example_job(directory: str | Path) -> dict | None:
    """The worker's test job (test_input.json), for the banner of `kit serve` and the load of `kit bench`."""
    path = Path(directory) / TEST_INPUT
    if not path.is_file():
        return None
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return job if isinstance(job, dict) else None
