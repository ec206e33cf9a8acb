"""The events `kit test`'s harness sends its parent: small typed records, one JSON line each.

The harness (`kit.worker.harness`, in the worker's fresh interpreter) builds
these and writes them with `encode`; the parent (`kit.test.run`) reads
them back with `decode` and keeps them in its `TestReport`. Both sides import
this module, so a field has one name and one type, as in Cog's
``eventtypes.py``. A line that is not a known event is a `BadEvent`, never a
crash of the reader.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Frame:
    """A place in the user's code: the exported file and, when known, the notebook cell."""

    file: str
    file_line: int
    code: str
    cell: int | None = None
    tag: str | None = None
    line: int | None = None


@dataclass
class Failure:
    """An exception (or a returned error) and where it happened, outermost frame first."""

    type: str
    message: str
    where: list[Frame] = field(default_factory=list)
    traceback: str = ""
    hint: str | None = None  # what to do about it, when the kit knows


@dataclass
class Problem:
    """A check on a job's result: "fail" fails the job, "warn" does not."""

    level: str
    message: str
    hint: str | None = None


def what_it_gave(kind: str, message: str) -> str:
    """A direct call's error in words: "returned the error: ..." or "raised ValueError: ..."."""
    if kind == "returned error":
        return f"returned the error: {message}"
    return f"raised {kind}: {message}" if message else f"raised {kind}"


@dataclass
class Event:
    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}


@dataclass
class Start(Event):
    kind: ClassVar[str] = "start"
    worker: str
    python: str
    pid: int


@dataclass
class SetupCell(Event):
    """One chunk of handler.py (a notebook cell) imported: part of the cold start."""

    kind: ClassVar[str] = "setup_cell"
    cell: int | None
    tag: str
    seconds: float
    ok: bool
    output: str = ""
    error: Failure | None = None


@dataclass
class ColdStart(Event):
    """handler.py imported (or not) the way `python handler.py` imports it, with the SDK."""

    kind: ClassVar[str] = "cold_start"
    ok: bool
    seconds: float
    setup_seconds: float | None = None
    runpod_import_seconds: float | None = None  # the SDK as the start block imports it
    runpod_import: str | None = None  # what was imported: "worker_loop" or "runpod.serverless"
    error: Failure | None = None


@dataclass
class Phase(Event):
    kind: ClassVar[str] = "phase"
    name: str  # "runpod_import", "tests", "jobs" or "batch"
    streaming: bool = False
    size: int | None = None  # "batch": how many jobs go into batch_handler at once


@dataclass
class Shown:
    """What a value looks like in the report: a preview, or a stream's chunks."""

    value: str | None = None
    chunks: list[str] | None = None
    chunk_count: int | None = None


@dataclass
class TestCell(Event):
    __test__ = False  # not a pytest test class
    kind: ClassVar[str] = "test"
    cell: int | None
    tag: str
    seconds: float
    ok: bool
    output: str = ""
    error: Failure | None = None
    shown: Shown = field(default_factory=Shown)
    progress: list[str] = field(default_factory=list)  # runpod.serverless.progress_update values, previewed
    progress_count: int = 0


@dataclass
class Job(Event):
    """One job literal run through the SDK's own job runner."""

    kind: ClassVar[str] = "job"
    cell: int | None
    line: int | None
    streaming: bool
    input: Any  # the job's input, as JSON
    ok: bool
    seconds: float
    size: int | None = None  # bytes of the result as the worker posts it
    error: Failure | None = None
    problems: list[Problem] = field(default_factory=list)
    output: str = ""  # what the handler printed
    shown: Shown = field(default_factory=Shown)
    progress: list[str] = field(default_factory=list)  # runpod.serverless.progress_update values, previewed
    progress_count: int = 0
    expected_error: int | None = None  # the test cell whose direct call gave this job's error: a pass


@dataclass
class BatchJob(Job):
    """One test job run again inside a single batch of all of them (batch_handler called once)."""

    kind: ClassVar[str] = "batch_job"


@dataclass
class End(Event):
    kind: ClassVar[str] = "end"
    ended: list[str] = field(default_factory=list)  # "PID (name)" of each process the worker left running, ended


EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in (Start, SetupCell, ColdStart, Phase, TestCell, Job, BatchJob, End)}


class BadEvent(ValueError):
    """A line from the harness that is not an event of this module."""


def encode(event: Event) -> str:
    """One line of JSON; values that are not JSON (a repr is what the report shows) become their repr."""
    return json.dumps(event.to_json(), default=repr) + "\n"


def decode(line: str) -> Event:
    try:
        data = json.loads(line)
        kind = data.pop("event")
        cls = EVENT_TYPES[kind]
        if data.get("error") is not None:
            error = dict(data["error"])
            error["where"] = [Frame(**frame) for frame in error.get("where", [])]
            data["error"] = Failure(**error)
        if data.get("shown") is not None:
            data["shown"] = Shown(**data["shown"])
        if "problems" in data:
            data["problems"] = [Problem(**problem) for problem in data["problems"]]
        return cls(**data)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BadEvent(f"not an event of the kit test harness ({type(error).__name__}: {error}): {line[:200]!r}") from None
