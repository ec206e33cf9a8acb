"""What a worker copies from the notebook's folder (kit/export/files.py): the closure of its local
modules, the data files its code opens by a literal path, and --include."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import run_kit

from kit.errors import KitError
from kit.export import files
from kit.export.export import build_worker, export_notebook
from kit.export.notebook import read_notebook


def _tree(root, layout: dict[str, str]) -> None:
    for name, text in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _copied(out) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the closure of local imports

DEEP = {
    # service -> config (a module) -> the `settings` package, whose __init__ pulls a submodule by
    # `from . import`, which pulls another by `from .units import` inside a function.
    "service.py": "import config\n\ndef run(text):\n    return config.PREFIX + text + config.suffix()\n",
    "config.py": "from settings import defaults\nPREFIX = defaults.PREFIX\n\ndef suffix():\n    from settings.deep.tail import tail\n    return tail()\n",
    "settings/__init__.py": "from . import defaults\n",
    "settings/defaults.py": "PREFIX = '>> '\n",
    "settings/deep/__init__.py": "",
    "settings/deep/tail.py": "def tail():\n    from .units import MARK\n    return MARK\n",
    "settings/deep/units.py": "MARK = ' <<'\n",
    "unused.py": "raise SystemExit('never imported')\n",
}


@pytest.mark.process
def test_local_imports_are_followed_however_deep(make_notebook, tmp_path):
    _tree(tmp_path, DEEP)
    nb = make_notebook(
        [
            ("setup", "import service"),
            ("handler", "def handler(job):\n    return service.run(job['input']['text'])"),
            ("test", "handler({'input': {'text': 'hi'}})"),
        ]
    )
    result = export_notebook(nb, tmp_path / "out")
    assert _copied(tmp_path / "out") == sorted(
        [
            "config.py",
            "handler.py",
            "kit.json",
            "requirements.txt",
            "service.py",
            "settings/__init__.py",
            "settings/deep/__init__.py",
            "settings/deep/tail.py",
            "settings/deep/units.py",
            "settings/defaults.py",
            "test_input.json",
            "tests.py",
            "worker_loop.py",
        ]
    )
    assert result.copied["config.py"] == "imported by service.py"
    assert result.copied["settings/"] == "imported by config.py"
    run = subprocess.run([sys.executable, "handler.py"], cwd=result.out_dir, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and ">> hi <<" in run.stdout + run.stderr, run.stderr[-2000:]


def test_local_modules_third_party_imports_are_required_and_explained(make_notebook, tmp_path):
    _tree(
        tmp_path,
        {
            "service.py": "import helpers.maths\n",
            "helpers/__init__.py": "",
            "helpers/maths.py": "def f():\n    import numpy as np\n    from nbformat import v4\n    return np\n",
            "helpers/unreached.py": "import surely_not_installed_xyz\n",
        },
    )
    nb = make_notebook([("setup", "import service"), ("handler", "def handler(job):\n    return 1")])
    deps = run_kit("deps", nb)
    assert deps.returncode == 0, deps.stderr
    assert f"numpy=={version('numpy')}  # import numpy (helpers/maths.py)" in deps.stdout
    assert f"nbformat=={version('nbformat')}  # import nbformat (helpers/maths.py)" in deps.stdout
    assert "# copied beside handler.py: service.py (imported by cell 1)" in deps.stdout
    assert "# copied beside handler.py: helpers (imported by service.py)" in deps.stdout
    exported = export_notebook(nb, tmp_path / "out")
    assert [line.name for line in exported.requirements.lines] == ["nbformat", "numpy", "runpod"]


def test_a_local_modules_missing_import_names_the_module(make_notebook, tmp_path):
    _tree(tmp_path, {"service.py": "import config\n", "config.py": "\n\nimport surely_not_installed_xyz\n"})
    nb = make_notebook([("setup", "import service"), ("handler", "def handler(job):\n    return 1")])
    result = run_kit("export", nb, "-o", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "config.py, line 3: `import surely_not_installed_xyz`: no installed package provides" in result.stderr
    _tree(tmp_path, {"config.py": "try:\n    import surely_not_installed_xyz\nexcept ImportError:\n    pass\n"})
    result = run_kit("export", nb, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "config.py, line 2: optional import `surely_not_installed_xyz` is not installed here; left out" in result.stderr


def test_the_closure_keeps_the_copy_rules(make_notebook, tmp_path):
    """A module reached only through another is held to the same rules: no symlink, no generated name."""
    (tmp_path / "service.py").write_text("import config\n")
    (tmp_path / "config.py").symlink_to("/etc/hostname")
    nb = make_notebook([("setup", "import service"), ("handler", "def handler(job):\n    return 1")])
    with pytest.raises(KitError, match="the local module config.py is a symlink"):
        build_worker(read_notebook(nb))
    (tmp_path / "config.py").unlink()
    (tmp_path / "service.py").write_text("import worker_loop\n")
    (tmp_path / "worker_loop.py").write_text("x = 1\n")
    with pytest.raises(KitError, match="the local module worker_loop.py has the name of a file kit export writes"):
        build_worker(read_notebook(nb))


# --------------------------------------------------------------------------- data files

DATA_CELLS = [
    (
        "setup",
        "import json\nfrom pathlib import Path\n"
        "CONFIG = json.load(open('config.json'))\n"
        "PROMPT = Path('prompts/greeting.txt').read_text()\n"
        "import vocab\n",
    ),
    (
        "handler",
        "def handler(job):\n"
        "    style = job['input'].get('style', 'plain')\n"
        "    extra = (Path('styles') / f'{style}.txt').read_text().strip()\n"
        "    with open('out.log', 'a') as log:\n"
        "        log.write('x')\n"
        "    return {'text': PROMPT.format(**CONFIG) + extra, 'words': vocab.WORDS}",
    ),
    ("test", "assert handler({'input': {'style': 'plain'}})['words'] == ['alpha', 'beta']"),
]
DATA = {
    "config.json": '{"name": "ada"}',
    "prompts/greeting.txt": "hello {name}",
    "prompts/unused.txt": "not read by name, copied as part of nothing",
    "styles/plain.txt": " (plain)",
    "styles/.env": "API_KEY=hunter2",
    "vocab.py": "from pathlib import Path\nWORDS = (Path(__file__).parent / 'data' / 'vocab.txt').read_text().split()\n"
    "SOURCE = Path(__file__).read_text()\nSTOP = Path(__file__).with_name('stop.txt').read_text().split()\n",
    "stop.txt": "the a\n",
    "data/vocab.txt": "alpha beta\n",
    "out.log": "written by the handler, never read",
}


@pytest.mark.process
def test_data_files_the_code_opens_are_copied_and_the_worker_runs(make_notebook, tmp_path):
    _tree(tmp_path, DATA)
    nb = make_notebook(DATA_CELLS)
    result = run_kit("export", nb, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    copied = _copied(out)
    assert "__file__" not in result.stderr  # reading the module's own file is no missing path
    for name in ["config.json", "prompts/greeting.txt", "styles/plain.txt", "data/vocab.txt", "vocab.py", "stop.txt"]:
        assert name in copied
    assert "prompts/unused.txt" not in copied  # only what the code names: the file, not its folder
    assert "out.log" not in copied  # written, not read
    assert "styles/.env" not in copied and "as they look like secrets: styles/.env" in result.stderr
    assert "  config.json  (copied: read in cell 1, line 3)" in result.stdout
    assert "  styles/  (copied: named in cell 2, line 3)" in result.stdout
    assert "  data/vocab.txt  (copied: read in vocab.py, line 2)" in result.stdout
    run = subprocess.run([sys.executable, "handler.py"], cwd=out, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "hello ada(plain)" in run.stdout + run.stderr, run.stderr[-2000:]


def test_a_read_path_that_names_nothing_is_a_warning(make_notebook, tmp_path):
    _tree(tmp_path, {"lookup.py": "\ndef table():\n    return open('table.tsv').read()\n", "outputs/old.png": "x"})
    nb = make_notebook(
        [
            (
                "setup",
                "import json\nimport lookup\nfrom pathlib import Path\nLABELS = json.load(open('labels.json'))\n"
                "OUT = open('results.txt', 'w')\nOUTPUTS = Path('outputs')\nOUTPUTS.mkdir(exist_ok=True)",
            ),
            ("handler", "def handler(job):\n    return LABELS"),
        ]
    )
    worker = build_worker(read_notebook(nb))
    messages = [str(w) for w in worker.warnings]
    assert any(
        "cell 1, line 4: labels.json is read here but names nothing beside the notebook, so the worker will not find it" in m
        for m in messages
    ), messages
    assert any("lookup.py, line 3: table.tsv is read here but names nothing beside the notebook" in m for m in messages), messages
    assert not any("results.txt" in m for m in messages)
    assert "outputs/old.png" not in worker.copied_files  # the code writes into outputs/, it reads nothing there


def test_paths_outside_the_folder_or_through_symlinks_are_not_copied(make_notebook, tmp_path):
    folder = tmp_path / "nb"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    (folder / "linked.txt").symlink_to("/etc/hostname")
    nb = folder / "worker.ipynb"
    make_notebook(
        [("setup", "A = open('../secret.txt').read()\nB = open('linked.txt').read()"), ("handler", "def handler(job):\n    return A")],
        name="nb/worker.ipynb",
    )
    worker = build_worker(read_notebook(nb))
    assert worker.data.files == {}
    messages = " ".join(str(w) for w in worker.warnings)
    assert "../secret.txt lies outside the notebook's folder, so it is not copied" in messages
    assert "left out of the worker: linked.txt (a symlink)" in messages


def test_data_files_are_bounded(make_notebook, tmp_path, monkeypatch):
    (tmp_path / "big.bin").write_bytes(b"\0" * 4096)
    nb = make_notebook([("setup", "DATA = open('big.bin', 'rb').read()"), ("handler", "def handler(job):\n    return len(DATA)")])
    monkeypatch.setattr(files, "MAX_DATA_BYTES", 1000)
    worker = build_worker(read_notebook(nb))
    assert "big.bin" not in worker.data.files
    assert any("big.bin (0.0 MB, 1 files) is read here but left out of the worker" in str(w) for w in worker.warnings)
    with pytest.raises(KitError, match=r"--include big.bin: .* more than a worker folder takes"):
        build_worker(read_notebook(nb), include=["big.bin"])


@pytest.mark.process
def test_include_copies_more_and_is_checked(make_notebook, tmp_path):
    _tree(tmp_path, {"assets/a.txt": "a", "assets/deep/b.txt": "b", "assets/c.bin": "c", "assets/key.pem": "k", "notes.md": "n"})
    nb = make_notebook([("setup", "import os"), ("handler", "def handler(job):\n    return 1")])
    result = run_kit("export", nb, "-o", tmp_path / "out", "--include", "assets/**/*.txt", "--include", "notes.md")
    assert result.returncode == 0, result.stderr
    copied = _copied(tmp_path / "out")
    assert {"assets/a.txt", "assets/deep/b.txt", "notes.md"} <= set(copied)
    assert "assets/c.bin" not in copied and "assets/key.pem" not in copied
    handler = (tmp_path / "out" / "handler.py").read_text()
    assert "--include 'assets/**/*.txt' --include notes.md" in handler  # the regenerate command keeps them
    for pattern, message in [
        ("../x", "give a glob relative to the notebook's folder, inside it"),
        ("/etc/*", "give a glob relative to the notebook's folder, inside it"),
        ("nothing/*.txt", "matches nothing in the notebook's folder"),
    ]:
        bad = run_kit("export", nb, "-o", tmp_path / "bad", "--include", pattern)
        assert bad.returncode == 2 and message in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_name_with_a_backslash_is_left_out_with_one_warning(make_notebook, tmp_path):
    """Windows unzip tools read `\\` as a separator: `..\\..\\evil.py` would climb out of the folder."""
    _tree(tmp_path, {"helpers/__init__.py": "X = 1\n", "helpers/..\\..\\evil.py": "print('escaped')\n"})
    nb = make_notebook([("setup", "import helpers"), ("handler", "def handler(job):\n    return helpers.X")])
    worker = build_worker(read_notebook(nb))
    assert sorted(worker.copied_files) == ["helpers/__init__.py"]
    left_out = [str(w) for w in worker.warnings if "left out" in str(w)]
    assert len(left_out) == 1 and "'helpers/..\\\\..\\\\evil.py' (a backslash in its name" in left_out[0], left_out


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("*.txt", ["a.txt"], ["d/a.txt", "a.txt.bak"]),
        ("d/**/*.txt", ["d/a.txt", "d/e/f/a.txt"], ["a.txt", "d/a.bin"]),
        ("d/**", ["d/a", "d/e/f"], ["x/d"]),
        ("[ab].md", ["a.md", "b.md"], ["c.md"]),
    ],
)
def test_include_globs_match_like_pathlib(pattern, yes, no):
    regex = files._glob_regex(pattern)
    assert all(regex.fullmatch(name) for name in yes) and not any(regex.fullmatch(name) for name in no)


# --------------------------------------------------------------------------- public workers, ported as users port them
# tests/workers/<name>/: the original handler kept verbatim in a notebook (its first cell names the
# source repository and commit), local helper modules written for the port (one imports another),
# and a data file a helper reads by a path built from __file__.

WORKERS = Path(__file__).parent / "workers"
PORTED = {
    "infinity_embedding": ({"embedding_service.py", "config.py", "utils.py", "models.json"}, {"numpy", "pydantic", "python-dotenv"}),
    "faster_whisper": ({"predict.py", "audio.py", "rp_schema.py", "models.json"}, {"numpy"}),
}


def _ported(tmp_path, name) -> Path:
    source = tmp_path / name
    shutil.copytree(WORKERS / name, source, ignore=shutil.ignore_patterns("__pycache__", "build"))
    (source / ".env").write_text("RUNPOD_MAX_CONCURRENCY=2\n")  # looks like a secret: never copied
    return source / "worker.ipynb"


@pytest.mark.process
@pytest.mark.parametrize("name", sorted(PORTED))
def test_a_ported_worker_exports_its_helpers_data_and_requirements(tmp_path, name):
    copied, required = PORTED[name]
    notebook = _ported(tmp_path, name)
    result = run_kit("export", notebook)
    assert result.returncode == 0, result.stderr
    out = notebook.parent / "build" / "worker"
    assert copied <= set(_copied(out)) and ".env" not in _copied(out)
    names = {line.split("==")[0] for line in (out / "requirements.txt").read_text().splitlines() if not line.startswith("#")}
    assert names == required | {"runpod"}


@pytest.mark.process
@pytest.mark.parametrize(
    "name",
    [
        "infinity_embedding",
        "faster_whisper",  # its handler is decorated with rp_debugger.FunctionTimer (issue 26.4)
    ],
)
def test_a_ported_worker_passes_kit_test(tmp_path, name):
    notebook = _ported(tmp_path, name)
    result = run_kit("test", notebook, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "jobs passed" in result.stdout
