"""RunPod's platform facts: one set of limits and one check, the SDK's error contract, the worker env."""

from __future__ import annotations

import json

from kit import platform


def test_limits_are_decimal_megabytes_and_one_check_judges_them():
    assert platform.check_payload({"a": 1}).level == "ok"
    over_run = platform.check_payload("x" * 10_300_000)  # 10.3 MB: over /run's 10 MB, within 20 MB
    assert over_run.level == "warn" and "10.3 MB" in over_run.message and "/run" in over_run.message
    over_sync = platform.check_payload("x" * 20_000_001)
    assert over_sync.level == "fail" and "/runsync" in over_sync.message
    # measured as the body the worker posts, {"output": ...}
    assert platform.check_payload("abc").size == len(json.dumps({"output": "abc"}))


def test_a_result_that_is_not_json_is_named_with_its_path_and_a_hint():
    check = platform.check_payload({"rows": [1, {"tags": {"a", "b"}}]})
    assert check.level == "fail" and check.size is None
    assert "output['rows'][1]['tags'] is a set" in check.message
    assert "list" in check.hint


def test_a_deeply_nested_result_is_checked_without_recursion_errors():
    value: list = []
    for _ in range(50_000):
        value = [value]
    check = platform.check_payload(value)
    assert check.level in ("ok", "fail")  # json.dumps may refuse the depth; the check never crashes
    assert platform.is_finite(value)


def test_nan_is_found_at_any_depth():
    assert not platform.is_finite({"a": [1.0, {"b": float("nan")}]})
    assert platform.is_finite({"a": [1.0, "nan"]})


def test_sdk_errors_are_parsed_in_both_of_the_sdk_shapes():
    raised = json.dumps(
        {"error_type": "<class 'ValueError'>", "error_message": "bad prompt", "error_traceback": "Traceback...\nValueError: bad prompt"}
    )
    parsed = platform.parse_sdk_error(raised)
    assert (parsed.type, parsed.message) == ("ValueError", "bad prompt") and parsed.traceback.startswith("Traceback")
    assert platform.error_summary(raised) == "ValueError: bad prompt"
    generator = "handler: boom\ntraceback: Traceback (most recent call last):\n  ...\nRuntimeError: boom"
    assert platform.parse_sdk_error(generator).type == "RuntimeError"
    assert platform.error_summary("prompt is required") == "prompt is required"
    assert platform.error_summary(["a", "b"]) == '["a", "b"]'
    assert platform.error_summary("{not json") == "{not json"


def test_worker_env_never_inherits_a_real_queue(monkeypatch):
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://api.runpod.ai/v2/x/job-take/$ID?")
    monkeypatch.setenv("RUNPOD_AI_API_KEY", "secret")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    env = platform.worker_env({"EXTRA": "1"}, log_level="ERROR")
    assert "RUNPOD_WEBHOOK_GET_JOB" not in env and "RUNPOD_AI_API_KEY" not in env
    assert env["SOMETHING_ELSE"] == "kept" and env["EXTRA"] == "1" and env["RUNPOD_LOG_LEVEL"] == "ERROR"
    assert env["RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"] == "true"


def test_the_loop_switch_is_the_one_worker_loop_py_reads():
    namespace: dict = {}
    source = platform.WORKER_LOOP_TEMPLATE.read_text()
    # the assignment itself, executed: no import of runpod needed
    line = next(line for line in source.splitlines() if line.startswith("LOOP_ENV ="))
    exec(line, namespace)
    assert platform.LOOP_ENV == namespace["LOOP_ENV"] == "KIT_WORKER_LOOP"
