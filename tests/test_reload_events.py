"""The `--watch` reload protocol's events: what the watcher and a worker's reloader write and read."""

from __future__ import annotations

import json

import pytest

from kit.worker import reload_events
from kit.worker.reload_events import Generation, Loaded, LoadFailed


def test_each_event_reads_back_as_written(tmp_path):
    reload_events.publish(tmp_path, Generation(3, "/tmp/x/handler.py"))
    assert reload_events.published(tmp_path) == Generation(3, "/tmp/x/handler.py")
    reload_events.report(tmp_path, Loaded("worker-1", 42, 3, 1700000000.5))
    assert reload_events.reported(tmp_path, "worker-1") == Loaded("worker-1", 42, 3, 1700000000.5)
    reload_events.report(tmp_path, LoadFailed("worker-1", 42, 4, "cell 3, line 1: ZeroDivisionError: division by zero"))
    assert reload_events.reported(tmp_path, "worker-1") == LoadFailed(
        "worker-1", 42, 4, "cell 3, line 1: ZeroDivisionError: division by zero"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generation.json", "worker-1.json"]  # no partial file left


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[1, 2]",
        '{"event": "loaded", "worker": "w", "pid": 1, "generation": 2}',  # a field missing
        '{"event": "loaded", "worker": "w", "pid": 1, "generation": "2", "at": 1.0}',  # mistyped
        '{"event": "loaded", "worker": "w", "pid": true, "generation": 2, "at": 1.0}',  # a bool is no pid
        '{"event": "loaded", "worker": "w", "pid": 1, "generation": 2, "at": 1.0, "extra": 1}',
        '{"event": "generation", "number": 1, "handler": "h"}',  # an event, but not a report
        '{"event": "rm -rf", "number": 1}',
    ],
)
def test_a_file_that_holds_no_report_reads_as_none(tmp_path, text):
    (tmp_path / "worker-1.json").write_text(text)
    assert reload_events.reported(tmp_path, "worker-1") is None


def test_nothing_published_reads_as_none(tmp_path):
    assert reload_events.published(tmp_path) is None
    (tmp_path / "generation.json").write_text(json.dumps({"event": "loaded", "worker": "w", "pid": 1, "generation": 2, "at": 1.0}))
    assert reload_events.published(tmp_path) is None
