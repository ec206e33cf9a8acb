"""kit export: notebook -> worker directory, as a user sees it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import HELLO_CELLS, NOTEBOOKS, run_kit

from kit.errors import KitError
from kit.build.export import export_notebook, worker_dir
from kit.build.notebook import read_percent_cells


def run_worker(directory, *args, timeout=120):
    """`python handler.py` in the worker directory: the SDK's local test mode."""
    return subprocess.run(
        [sys.executable, "-u", "handler.py", "--rp_log_level", "INFO", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_export_writes_a_worker_directory(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS + [("test", "handler({'input': {'name': 'second'}})"), (None, "scratch = 1")])
    out = tmp_path / "out"
    result = run_kit("export", nb, "-o", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["handler.py", "kit.json", "requirements.txt", "test_input.json", "tests.py", "worker_loop.py"]

    handler = (out / "handler.py").read_text()
    assert f"from {nb}" in handler and f"kit export {nb} -o {out}" in handler
    assert "# %% cell 2 [setup]" in handler and "# %% cell 3 [handler]" in handler
    assert handler.index("cell 2 [setup]") < handler.index("cell 3 [handler]")
    assert "scratch" not in handler and "assert result" not in handler
    assert "import kit" not in handler and "from kit" not in handler
    assert "import runpod" not in handler.split("# %% worker start")[0]  # no import-time tax unless the notebook asks
    assert 'if __name__ == "__main__":' in handler and "worker_loop.start(" in handler
    assert '"CONCURRENCY_MODIFIER", "1"' in handler

    # The first job literal a test cell passes to handler(...).
    assert json.loads((out / "test_input.json").read_text()) == {"input": {"name": "ada"}}
    manifest = json.loads((out / "kit.json").read_text())
    assert [j["job"] for j in manifest["jobs"]] == [{"input": {"name": "ada"}}, {"input": {"name": "second"}}]
    assert [c.cell for c in read_percent_cells(out / "tests.py")] == [4, 5]


def test_markers_map_handler_lines_back_to_notebook_cells(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    out = export_notebook(nb, tmp_path / "out").out_dir
    text = (out / "handler.py").read_text().splitlines()
    for cell in read_percent_cells(out / "handler.py"):
        # line 1 of the cell's code is at start_line in the file
        assert text[cell.start_line - 1] == cell.source.splitlines()[0]
    assert read_percent_cells(out / "handler.py")[1].source.startswith("def handler(job):")


def test_exported_worker_runs_its_test_job_through_the_sdk(make_notebook, tmp_path):
    out = export_notebook(make_notebook(HELLO_CELLS), tmp_path / "out").out_dir
    result = run_worker(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'output': {'greeting': 'hi', 'name': 'ada'}" in result.stdout


def test_importing_handler_runs_setup_only(make_notebook, tmp_path):
    nb = make_notebook(
        [
            ("setup", "print('setup ran')"),
            ("handler", "def handler(job):\n    return 1"),
            ("test", "raise SystemExit('tests must not run on import')"),
        ]
    )
    out = export_notebook(nb, tmp_path / "out").out_dir
    probe = subprocess.run(
        [sys.executable, "-c", "import handler; print('imported', handler.handler({'input': {}}))"],
        cwd=out, capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["setup", "ran", "imported", "1"]


def test_notebook_concurrency_modifier_and_generator_handlers(make_notebook, tmp_path):
    nb = make_notebook(
        [
            ("handler", "def concurrency_modifier(current):\n    return 4\n\ndef handler(job):\n    for i in range(3):\n        yield i"),
            ("test", "print(list(handler({'input': {}})))"),
        ]
    )
    result = export_notebook(nb, tmp_path / "out")
    handler = (result.out_dir / "handler.py").read_text()
    assert result.handler_kind == "generator"
    assert '"concurrency_modifier": concurrency_modifier' in handler
    assert '"return_aggregate_stream": True' in handler
    assert "CONCURRENCY_MODIFIER" not in handler


@pytest.mark.parametrize(
    "source, kind",
    [
        ("def handler(job):\n    return job", "function"),
        ("async def handler(job):\n    return job", "async"),
        ("async def handler(job):\n    yield job", "async_generator"),
        ("def handler(job):\n    def inner():\n        yield 1\n    return list(inner())", "function"),
    ],
)
def test_handler_kinds(make_notebook, tmp_path, source, kind):
    assert export_notebook(make_notebook([("handler", source)]), tmp_path / "o").handler_kind == kind


def test_setup_that_imports_runpod_gets_it_without_the_cpu_probe(make_notebook, tmp_path):
    nb = make_notebook([("setup", "import runpod"), ("handler", "def handler(job):\n    runpod.serverless.progress_update(job, 'x')\n    return 1")])
    handler = (export_notebook(nb, tmp_path / "out").out_dir / "handler.py").read_text()
    first_code = [l for l in handler.splitlines() if l and not l.startswith("#")][:2]
    assert first_code == ['if __name__ == "__main__":', "    import worker_loop  # noqa: E402 (runpod, imported without its 1.3 s CPU probe)"]


def test_future_imports_are_hoisted(make_notebook, tmp_path):
    nb = make_notebook(
        [
            ("setup", "import os"),
            ("handler", "from __future__ import annotations\n\ndef handler(job: Job) -> Result:\n    return 1"),
        ]
    )
    out = export_notebook(nb, tmp_path / "out").out_dir
    handler = (out / "handler.py").read_text()
    code_lines = [l for l in handler.splitlines() if l and not l.startswith("#")]
    assert code_lines[0] == "from __future__ import annotations"
    assert handler.count("from __future__") == 1
    compile(handler, "handler.py", "exec")


def test_ipython_syntax_in_exported_cells(make_notebook, tmp_path):
    nb = make_notebook(
        [
            ("setup", "%pip install -q -U 'scipy>=1.10' requests\n%matplotlib inline\n%load_ext autoreload\n%autoreload 2\nimport os"),
            ("handler", "%%time\ndef handler(job):\n    %time x = 1\n    return x"),
            ("test", "%%capture\nhandler({'input': {}})"),
            (None, "!nvidia-smi\n%who"),
        ]
    )
    result = export_notebook(nb, tmp_path / "out")
    handler = (result.out_dir / "handler.py").read_text()
    assert "%" not in handler.replace("# %%", "").split("# %% worker start")[0].replace("# kit:", "").splitlines()[0]
    assert "    x = 1" in handler
    compile(handler, "handler.py", "exec")
    requirements = (result.out_dir / "requirements.txt").read_text()
    assert "scipy>=1.10  # %pip (cell 1)" in requirements
    assert "requests  # %pip (cell 1)" in requirements
    assert "-q" not in requirements and "-U" not in requirements
    messages = [str(w) for w in result.warnings]
    assert any("cell 1, line 2: `%matplotlib inline` dropped" in m for m in messages)
    assert any("cell 2, line 1: `%%time` unwrapped" in m for m in messages)
    # the worker still runs
    assert run_worker(result.out_dir, "--test_input", '{"input": {}}').returncode == 0


def test_python_warnings_about_the_code_are_located(make_notebook, tmp_path):
    nb = make_notebook([("setup", "import re\nPATTERN = re.compile('\\d+\\:')"), ("handler", "def handler(job):\n    return 1")])
    messages = [str(w) for w in export_notebook(nb, tmp_path / "out").warnings]
    assert any("worker.ipynb: cell 1, line 2: Python: invalid escape sequence" in m for m in messages), messages


def test_untagged_cells_may_contain_anything(make_notebook, tmp_path):
    nb = make_notebook([(None, "!ls\n%%%% not even python ((("), ("handler", "def handler(job):\n    return 1")])
    assert export_notebook(nb, tmp_path / "out").out_dir.is_dir()


BAD_NOTEBOOKS = [
    ([("setup", "import os")], "worker.ipynb: no cell is tagged `handler` — tag the cell"),
    ([(None, "def handler(job):\n    pass"), ("setup", "x = 1")], "handler is defined in cell 1: add the tag `handler`"),
    ([("handler", "def helper(job):\n    pass")], "worker.ipynb: cell 1: no handler function is defined"),
    ([("handler", "x = 1"), ("test", "def handler(job):\n    pass")], "cell 2, which is not exported"),
    ([("handler", "def handler():\n    pass")], "worker.ipynb: cell 1, line 1: handler must accept exactly one positional argument"),
    ([("handler", "def handler(job, extra):\n    pass")], "cell 1, line 1: handler must accept exactly one positional argument"),
    ([("setup", "x = (1,"), ("handler", "def handler(job):\n    pass")], "worker.ipynb: cell 1, line 1: syntax error"),
    ([("setup", "import os\n!pip freeze > x.txt\n!ls -la"), ("handler", "def handler(job):\n    pass")], "cell 1, line 3: `!ls -la` is a shell command, which a worker cannot run — run it from Python with subprocess.run"),
    ([("handler", "def handler(job):\n    return 1\nfiles = !ls")], "cell 1, line 3: `files = !ls` is a shell command"),
    ([("handler", "%%bash\necho hi")], "cell 1, line 1: `%%bash` is a cell magic, which a worker cannot run — run it from Python with subprocess.run"),
    ([("setup", "%%timeit\nx = 1"), ("handler", "def handler(job):\n    pass")], "`%%timeit` is a cell magic, which a worker cannot run — write it as plain Python"),
    ([("handler", "%cd /tmp\ndef handler(job):\n    pass")], "cell 1, line 1: `%cd /tmp` is an IPython magic, which a worker cannot run — write it as plain Python"),
    ([(None, "model = 'm'"), ("handler", "def handler(job):\n    return model")], "cell 2, line 2: `model` is defined only in cell 1 (untagged), which is not exported — tag cell 1 `setup`"),
    ([("test", "scale = 2"), ("handler", "def handler(job):\n    return job['input'] * scale")], "`scale` is defined only in cell 1 (test)"),
    ([("handler", "def handler(job):\n    return nowhere")], "cell 1, line 2: `nowhere` is not defined anywhere in the notebook"),
    ([("handler", "def handler(job):\n    display(job)")], "`display` is not defined in a worker — display() exists only in IPython"),
    ([("setup", "import asyncio\nx = await asyncio.sleep(0)"), ("handler", "def handler(job):\n    pass")], "cell 1, line 2: syntax error: 'await' outside function — a worker module cannot await at import time"),
    ([("setup", "import kit"), ("handler", "def handler(job):\n    pass")], "cell 1, line 1: the worker must not import the kit"),
]


@pytest.mark.parametrize("cells, message", BAD_NOTEBOOKS)
def test_user_mistakes_exit_2_with_one_line(make_notebook, tmp_path, cells, message):
    nb = make_notebook(cells)
    result = run_kit("export", "worker.ipynb", "-o", tmp_path / "out", cwd=nb.parent)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "missing.ipynb: no such file — check the path"),
        ("not json", "missing.ipynb: not a notebook (invalid JSON at line 1, column 1)"),
        ('{"a": 1}', "missing.ipynb: not a notebook (no cells)"),
        ('{"nbformat": 3, "worksheets": []}', "missing.ipynb: nbformat 3 notebooks are not supported"),
        (b"\xff\xfe\x00", "missing.ipynb: not a notebook (the file is not UTF-8 text)"),
    ],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "missing.ipynb"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    result = run_kit("export", "missing.ipynb", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_failed_export_leaves_existing_directory_untouched(make_notebook, tmp_path):
    out = tmp_path / "out"
    export_notebook(make_notebook(HELLO_CELLS), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = make_notebook([("handler", "def handler(job):\n    return missing_name")], name="broken.ipynb")
    with pytest.raises(KitError):
        export_notebook(broken, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", "worker.ipynb", "broken.ipynb"])


def test_refuses_to_replace_a_directory_it_did_not_write(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = run_kit("export", nb, "-o", precious)
    assert result.returncode == 2 and "refusing to replace" in result.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


def test_reexport_replaces_and_is_byte_identical(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    out = tmp_path / "out"
    export_notebook(nb, out)
    (out / "stale.txt").write_text("from an older export")
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "stale.txt"}
    export_notebook(nb, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_default_output_is_build_stem(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    result = run_kit("export", nb.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "build" / "worker" / "handler.py").is_file()
    assert "kit export worker.ipynb\n" in (tmp_path / "build" / "worker" / "handler.py").read_text()


def test_worker_dir_accepts_notebooks_and_worker_directories(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    with worker_dir(nb) as exported:
        assert (exported / "handler.py").is_file()
        with worker_dir(exported) as same:
            assert same == exported
    assert not exported.exists()
    with pytest.raises(KitError, match="no handler.py"):
        with worker_dir(tmp_path):
            pass


BATCH_ONLY = [
    ("setup", "MAX_BATCH_SIZE = 4\nMAX_BATCH_WAIT_MS = 5"),
    ("handler", "def batch_handler(jobs):\n    return [{'n': job['input']['n'], 'batch': len(jobs)} for job in jobs]"),
    ("test", "assert batch_handler([{'input': {'n': 1}}, {'input': {'n': 2}}])[1] == {'n': 2, 'batch': 2}"),
]


def test_a_batch_handler_exports_batching_and_a_handler_for_one_job(make_notebook, tmp_path):
    result = export_notebook(make_notebook(BATCH_ONLY), tmp_path / "out")
    out = result.out_dir
    assert "batching.py" in result.files and "import kit" not in (out / "batching.py").read_text()
    manifest = json.loads((out / "kit.json").read_text())
    assert manifest["batch_handler_kind"] == "function" and manifest["handler_kind"] == "function"
    # The jobs of the list passed to batch_handler are the worker's test jobs.
    assert [job["job"] for job in manifest["jobs"]] == [{"input": {"n": 1}}, {"input": {"n": 2}}]
    assert json.loads((out / "test_input.json").read_text()) == {"input": {"n": 1}}
    # handler(job) is a batch of one, for test cells, `kit test` and the SDK's local test mode.
    check = subprocess.run(
        [sys.executable, "-c", "import handler; print(handler.handler({'id': 'a', 'input': {'n': 7}}))"],
        cwd=out, capture_output=True, text=True, timeout=60,
    )
    assert check.stdout.strip() == "{'n': 7, 'batch': 1}", check.stderr
    run = run_worker(out)
    assert run.returncode == 0 and "completed successfully" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]


def test_a_notebook_with_handler_and_batch_handler_keeps_its_own_handler(make_notebook, tmp_path):
    cells = BATCH_ONLY[:2] + [("handler", "async def handler(job):\n    return {'own': True}"), ("test", "handler({'input': {'n': 1}})")]
    out = export_notebook(make_notebook(cells), tmp_path / "out").out_dir
    text = (out / "handler.py").read_text()
    assert "single_job_handler" not in text and '"handler": batcher.handle' in text
    assert json.loads((out / "kit.json").read_text())["handler_kind"] == "async"


def test_a_notebook_without_batch_handler_gets_no_batching(make_notebook, tmp_path):
    out = export_notebook(make_notebook(HELLO_CELLS), tmp_path / "out").out_dir
    assert not (out / "batching.py").exists() and "batching" not in (out / "handler.py").read_text()
    assert "batch_handler_kind" not in json.loads((out / "kit.json").read_text())


BAD_BATCH_NOTEBOOKS = [
    ([("handler", "def batch_handler():\n    return []")], "cell 1, line 1: batch_handler must accept exactly one positional argument, the list of jobs — define it as `def batch_handler(jobs):`"),
    ([("handler", "def batch_handler(jobs):\n    yield from jobs")], "cell 1, line 1: batch_handler cannot be a generator: it returns a list with one result per job"),
    ([("setup", "def batch_handler(jobs):\n    return jobs"), ("handler", "x = 1")], "cell 1, line 1: batch_handler is defined in a cell tagged `setup` — tag that cell `handler` instead"),
    ([("handler", "MAX_BATCH_SIZE = 0\ndef batch_handler(jobs):\n    return jobs")], "cell 1, line 1: MAX_BATCH_SIZE must be a whole number of at least 1, not 0"),
    ([("handler", "MAX_BATCH_WAIT_MS = 'soon'\ndef batch_handler(jobs):\n    return jobs")], "cell 1, line 1: MAX_BATCH_WAIT_MS must be a number of milliseconds, 0 or more, not 'soon'"),
    ([("handler", "def batch_handler(jobs):\n    return jobs\ndef handler():\n    pass")], "cell 1, line 3: handler must accept exactly one positional argument, the job"),
]


@pytest.mark.parametrize("cells, message", BAD_BATCH_NOTEBOOKS)
def test_batch_handler_mistakes_exit_2_with_one_line(make_notebook, tmp_path, cells, message):
    test_user_mistakes_exit_2_with_one_line(make_notebook, tmp_path, cells, message)


def test_a_local_module_named_like_a_kit_file_is_refused(make_notebook, tmp_path):
    nb = make_notebook([("setup", "import batching"), BATCH_ONLY[1]])
    (nb.parent / "batching.py").write_text("X = 1\n")
    with pytest.raises(KitError, match="the local module batching.py has the name of a file the kit writes beside handler.py"):
        export_notebook(nb, tmp_path / "out")


@pytest.mark.parametrize("name", ["hello", "embeddings", "embeddings_batched"])
def test_examples_export_and_pass_their_own_test_job(tmp_path, name):
    result = export_notebook(NOTEBOOKS / f"{name}.ipynb", tmp_path / name)
    assert not [w for w in result.warnings], result.warnings
    run = run_worker(result.out_dir, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "completed successfully" in run.stdout


def test_sentiment_example_exports_with_its_hub_default(tmp_path):
    result = export_notebook(NOTEBOOKS / "sentiment.ipynb", tmp_path / "sentiment")
    handler = (result.out_dir / "handler.py").read_text()
    assert "distilbert-base-uncased-finetuned-sst-2-english" in handler
    assert json.loads((result.out_dir / "test_input.json").read_text()) == {"input": {"prompt": "The quick brown fox jumps"}}
