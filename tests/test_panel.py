"""The notebook panel without a browser: its buttons, clicked as ipywidgets would."""

import json
import os
import threading
from pathlib import Path

import pytest
from conftest import build_notebook as write_notebook
from jupyter_client.manager import start_new_kernel

from kit.errors import KitError
from kit.ui.panel import Panel, call_handler, locate_notebook

ECHO = [
    (None, "import kit\nkit.panel()"),
    ("setup", "GREETING = 'Hello'"),
    ("handler", "def handler(job):\n    return {'greeting': GREETING, **job['input']}"),
    ("test", "result = handler({'input': {'prompt': 'hi'}})\nassert result['prompt'] == 'hi'"),
]


@pytest.fixture
def echo(tmp_path):
    return write_notebook(tmp_path / "echo.ipynb", ECHO)


def make_panel(notebook: Path, source: str = "") -> Panel:
    namespace: dict = {}
    exec(source, namespace)
    panel = Panel(notebook, namespace)
    panel.save_timeout = 0  # no front end here to save the notebook
    return panel


def click(panel: Panel, button) -> Panel:
    button.click()
    panel.wait(timeout=120)
    assert not panel.thread.is_alive()
    return panel


# --------------------------------------------------------------------------- finding the notebook


def test_explicit_path_wins(echo, tmp_path):
    other = write_notebook(tmp_path / "other.ipynb", ECHO)
    assert locate_notebook(str(other), {"__session__": str(echo)}) == other.resolve()


def test_vscode_and_jupyterlab_variables(echo):
    assert locate_notebook(None, {"__vsc_ipynb_file__": str(echo)}) == echo.resolve()
    assert locate_notebook(None, {"__session__": str(echo)}) == echo.resolve()


def test_unknown_notebook_asks_for_the_path():
    with pytest.raises(KitError, match=r'kit.panel\("my_notebook.ipynb"\)'):
        locate_notebook(None, {})
    with pytest.raises(KitError, match="no longer exists"):
        locate_notebook(None, {"__session__": "/nowhere/gone.ipynb"})
    with pytest.raises(KitError, match="no such notebook"):
        locate_notebook("/nowhere/gone.ipynb", {})


@pytest.mark.process
def test_a_real_kernel_finds_its_notebook_from_jupyterlabs_session_name(echo):
    # The Jupyter server starts kernels with JPY_SESSION_NAME=<notebook path>;
    # ipykernel turns it into __session__.
    env = {**os.environ, "JPY_SESSION_NAME": str(echo)}
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(echo.parent), env=env)
    try:
        outputs = []
        client.execute_interactive(
            "import kit\np = kit.panel()\nprint(type(p).__name__, p.path)",
            timeout=60,
            output_hook=lambda msg: outputs.append(msg["content"].get("text", "")),
        )
        assert f"Panel {echo.resolve()}" in "".join(outputs)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


# --------------------------------------------------------------------------- the summary


def test_summary_counts_tags_and_prefills_the_test_job(echo):
    panel = make_panel(echo)
    assert "1 setup · 1 handler · 1 test cell(s)" in panel.header.value
    assert "Add Tag" in panel.header.value and "Add Cell Tag" in panel.header.value
    assert json.loads(panel.job.value) == {"input": {"prompt": "hi"}}


def test_summary_warns_without_a_handler_cell(tmp_path):
    notebook = write_notebook(tmp_path / "untagged.ipynb", [(None, "def handler(job):\n    return 1")])
    panel = make_panel(notebook)
    assert "0 setup · 0 handler · 0 test cell(s)" in panel.header.value
    assert "no cell is tagged `handler`" in panel.header.value
    assert json.loads(panel.job.value) == {"input": {}}


# --------------------------------------------------------------------------- Run


@pytest.mark.parametrize(
    "source, kind",
    [
        ("def handler(job):\n    return {'echo': job['input']}", "function"),
        ("async def handler(job):\n    import asyncio\n    await asyncio.sleep(0)\n    return {'echo': job['input']}", "async"),
    ],
)
def test_run_shows_the_result_time_and_size(echo, source, kind):
    panel = make_panel(echo, source)
    click(panel, panel.run_button)
    assert f"({kind} handler)" in panel.status.value
    assert "done in" in panel.status.value
    assert "&quot;echo&quot;" in panel.output.value and "&quot;prompt&quot;: &quot;hi&quot;" in panel.output.value
    size = len(json.dumps({"output": {"echo": {"prompt": "hi"}}}))  # the body the worker posts
    assert f"result: {size} B as JSON: within RunPod&#x27;s limits" in panel.output.value


@pytest.mark.parametrize("prefix", ["", "async "])
def test_run_shows_each_chunk_of_a_generator(echo, prefix):
    source = f"{prefix}def handler(job):\n    for word in job['input']['prompt'].split():\n        yield {{'word': word}}"
    panel = make_panel(echo, source)
    panel.job.value = json.dumps({"input": {"prompt": "one two three"}})
    seen = []
    panel.output.observe(lambda change: seen.append(change["new"]), "value")
    click(panel, panel.run_button)
    assert "3 chunk(s) streamed" in panel.output.value
    assert panel.output.value.index("one") < panel.output.value.index("two") < panel.output.value.index("three")
    # Chunks were shown as they arrived, before the run finished.
    partial = [value for value in seen if "one" in value and "three" not in value]
    assert partial, "the first chunk was never shown on its own"
    assert "aggregated stream:" in panel.output.value


def test_async_handlers_share_one_loop_across_runs_and_not_the_callers(echo):
    source = "import asyncio\nloops = []\nasync def handler(job):\n    loops.append(asyncio.get_running_loop())\n    return len(loops)"
    panel = make_panel(echo, source)
    click(panel, panel.run_button)
    click(panel, panel.run_button)
    loops = panel.namespace["loops"]
    assert len(loops) == 2 and loops[0] is loops[1]
    assert loops[0].is_running()


def test_run_shows_what_the_handler_prints(echo):
    panel = make_panel(echo, "def handler(job):\n    print('loading', job['input']['prompt'])\n    return 1")
    click(panel, panel.run_button)
    assert "loading hi" in panel.output.value


def test_a_raising_handler_shows_its_traceback(echo):
    panel = make_panel(echo, "def handler(job):\n    raise ValueError('bad prompt')")
    click(panel, panel.run_button)
    assert "the job FAILS on RunPod" in panel.status.value
    assert "ValueError: bad prompt" in panel.output.value


def test_a_returned_error_is_flagged(echo):
    panel = make_panel(echo, "def handler(job):\n    return {'error': 'no model'}")
    click(panel, panel.run_button)
    assert "RunPod marks this job FAILED" in panel.output.value


def test_run_explains_bad_json_and_a_missing_handler(echo):
    panel = make_panel(echo, "")
    click(panel, panel.run_button)
    assert "run the `handler` cell" in panel.status.value
    panel.namespace["handler"] = lambda job: job
    panel.job.value = '{"input": }'
    click(panel, panel.run_button)
    assert "the job is not JSON" in panel.status.value and "line 1" in panel.status.value


BATCH_HANDLER = "def batch_handler(jobs):\n    return [{'error': 'empty'} if not job['input'] else {'n': job['input']['n'], 'batch': len(jobs)} for job in jobs]"


def test_run_takes_a_list_of_jobs_as_one_batch(echo):
    panel = make_panel(echo, BATCH_HANDLER)
    panel.job.value = json.dumps([{"input": {"n": 1}}, {"input": {}}, {"input": {"n": 3}}])
    click(panel, panel.run_button)
    assert "one batch_handler call, 3 job(s)" in panel.status.value
    out = panel.output.value
    assert out.index("job 1:") < out.index("&quot;batch&quot;: 3") < out.index("job 2:") < out.index("job 3:")
    assert out.count("RunPod marks this job FAILED") == 1  # the empty job, alone


def test_a_batch_of_the_wrong_length_fails_every_job(echo):
    panel = make_panel(echo, "def batch_handler(jobs):\n    return jobs[:1]")
    panel.job.value = json.dumps([{"input": {}}, {"input": {}}])
    click(panel, panel.run_button)
    assert "batch_handler returned 1 result(s) for a batch of 2 job(s)" in panel.status.value
    assert "every job of the batch FAILS on RunPod" in panel.status.value


def test_one_job_with_only_a_batch_handler_runs_as_a_batch_of_one(echo):
    panel = make_panel(echo, BATCH_HANDLER)
    panel.job.value = json.dumps({"input": {"n": 7}})
    click(panel, panel.run_button)
    assert "done in" in panel.status.value
    assert "&quot;batch&quot;: 1" in panel.output.value and "&quot;n&quot;: 7" in panel.output.value


def test_a_list_of_jobs_without_a_batch_handler_says_what_to_define(echo):
    panel = make_panel(echo, "def handler(job):\n    return 1")
    panel.job.value = json.dumps([{"input": {}}])
    click(panel, panel.run_button)
    assert "runs as one batch through batch_handler(jobs): define it in a `handler` cell" in panel.status.value


def test_the_kernel_stays_free_while_a_slow_handler_runs(echo):
    release = threading.Event()
    panel = make_panel(echo, "")
    panel.namespace["handler"] = lambda job: release.wait(60) and "released"
    panel.run_button.click()  # returns at once: the handler runs in a thread
    try:
        assert "running handler(job)" in panel.status.value
        assert panel.run_button.disabled and panel.export_button.disabled
        panel.run_button.click()  # ignored while busy
    finally:
        release.set()
    panel.wait(timeout=60)
    assert "&quot;released&quot;" in panel.output.value
    assert not panel.run_button.disabled


def test_run_judges_the_result_size_as_kit_test_does():
    """One limit, one unit: a 10.3 MB result is over /run's 10 MB in the panel as in kit test."""
    from kit.ui.runner import HandlerRun

    text = Panel._render_run(HandlerRun("function", 0.1, output="x" * 10_300_000), [], "")
    assert "over RunPod&#x27;s 10 MB limit for /run" in text and "kit-warning" in text
    text = Panel._render_run(HandlerRun("function", 0.1, output={"a": 1}), [], "")
    assert "within RunPod&#x27;s limits" in text


def test_call_handler_without_widgets():
    run = call_handler(lambda job: (c for c in job["input"]), {"input": [1, 2]})
    assert run.kind == "generator" and run.result == [1, 2] and run.error is None


# --------------------------------------------------------------------------- Export


def test_export_writes_the_worker_beside_the_notebook(echo):
    panel = make_panel(echo)
    click(panel, panel.export_button)
    out_dir = echo.parent / "build" / "echo"
    assert (out_dir / "handler.py").is_file() and (out_dir / "requirements.txt").is_file()
    assert f"exported to {out_dir}/" in panel.output.value
    assert "runpod==" in panel.output.value  # the requirements are shown
    assert "exported" in panel.status.value


def test_export_shows_the_cell_and_line_of_a_mistake(tmp_path):
    notebook = write_notebook(
        tmp_path / "bad.ipynb",
        [(None, "import kit"), ("handler", "import no_such_module_xyz\ndef handler(job):\n    return 1")],
    )
    panel = make_panel(notebook)
    click(panel, panel.export_button)
    assert "export failed" in panel.status.value
    assert "cell 2, line 1: `import no_such_module_xyz`" in panel.output.value
    assert not (tmp_path / "build" / "bad").exists()


def test_export_in_vscode_says_the_saved_file_is_used(echo):
    panel = make_panel(echo)
    panel.namespace["__vsc_ipynb_file__"] = str(echo)
    click(panel, panel.export_button)
    assert "VS Code: exporting the notebook as last saved" in panel.output.value


# --------------------------------------------------------------------------- Test


@pytest.mark.process
def test_test_button_runs_kit_test_and_shows_its_summary(echo):
    panel = make_panel(echo)
    click(panel, panel.test_button)
    assert "kit test passed" in panel.status.value, panel.output.value
    assert "echo.ipynb" in panel.output.value


@pytest.mark.process
def test_test_button_reports_a_failing_test(tmp_path):
    notebook = write_notebook(
        tmp_path / "wrong.ipynb",
        [("handler", "def handler(job):\n    return 1"), ("test", "assert handler({'input': {}}) == 2")],
    )
    panel = make_panel(notebook)
    click(panel, panel.test_button)
    assert "kit test failed" in panel.status.value, panel.output.value
