"""The typed events between kit test and its harness survive the pipe, and bad lines are named."""

from __future__ import annotations

import pytest

from kit.test import events


def test_every_event_round_trips_through_a_line():
    failure = events.Failure(
        "ValueError", "bad", [events.Frame("handler.py", 12, "raise ValueError('bad')", 3, "handler", 2)], "Traceback..."
    )
    samples = [
        events.Start(worker="/w", python="3.11.7", pid=1),
        events.SetupCell(cell=2, tag="setup", seconds=0.5, ok=False, output="hi\n", error=failure),
        events.ColdStart(ok=True, seconds=1.0, setup_seconds=0.5, runpod_import_seconds=0.5, runpod_import="worker_loop"),
        events.Phase(name="jobs", streaming=True),
        events.TestCell(cell=5, tag="test", seconds=0.1, ok=True, shown=events.Shown(chunks=["'a'"], chunk_count=3)),
        events.Job(
            cell=5,
            line=1,
            streaming=False,
            input={"b": 1, "a": 2},
            ok=True,
            seconds=0.01,
            size=30,
            problems=[events.Problem("warn", "big", "upload it")],
        ),
        events.End(),
    ]
    for event in samples:
        line = events.encode(event)
        assert line.endswith("\n") and "\n" not in line[:-1]
        assert events.decode(line) == event


def test_values_that_are_not_json_travel_as_their_repr():
    line = events.encode(events.Job(cell=None, line=None, streaming=False, input={"x": {1, 2}}, ok=True, seconds=0.0))
    assert events.decode(line).input == {"x": "{1, 2}"}


@pytest.mark.parametrize(
    "line", ["not json\n", '{"event": "nope"}\n', '{"event": "start"}\n', "[]\n", '{"event": "job", "cell": 1, "error": 5}\n']
)
def test_a_line_that_is_not_an_event_is_a_bad_event(line):
    with pytest.raises(events.BadEvent, match="not an event of the kit test harness"):
        events.decode(line)
