"""Pinned requirements inferred from the exported cells (kit deps, kit export)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import venv

import pytest
from conftest import NOTEBOOKS, run_kit

from kit.export.deps import infer_requirements
from kit.export.export import export_notebook
from kit.export.notebook import read_notebook

HANDLER = ("handler", "def handler(job):\n    return job['input']")


def version(dist):
    return importlib.metadata.version(dist).split("+")[0]


def lines(requirements):
    return [line.render() for line in requirements.lines]


def test_imports_map_to_installed_distributions_pinned(make_notebook):
    nb = make_notebook(
        [
            ("setup", "import numpy as np\nimport yaml\nfrom requests.adapters import HTTPAdapter\nimport torch.nn\nimport os, json"),
            HANDLER,
        ]
    )
    reqs = infer_requirements(read_notebook(nb))
    assert lines(reqs) == [
        f"numpy=={version('numpy')}  # import numpy (cell 1)",
        f"PyYAML=={version('PyYAML')}  # import yaml (cell 1)",
        f"requests=={version('requests')}  # import requests (cell 1)",
        f"runpod=={version('runpod')}  # the worker loop (always)",
        "torch==2.13.0  # import torch (cell 1)",  # the local label (+cpu) is dropped
    ]
    assert importlib.metadata.version("torch") != "2.13.0"  # it really had a label to drop


def test_pip_lines_are_kept_as_written(make_notebook):
    nb = make_notebook(
        [
            (
                "setup",
                '%pip install -q -U "scipy>=1.10" --index-url https://example.invalid/simple\n!pip install requests==2.*\nimport scipy',
            ),
            HANDLER,
        ]
    )
    reqs = infer_requirements(read_notebook(nb))
    rendered = lines(reqs)
    assert "scipy>=1.10  # %pip (cell 1); import scipy (cell 1)" in rendered
    assert "requests==2.*  # !pip (cell 1)" in rendered  # said as the cell says it
    assert not any("example.invalid" in line or line.startswith("-") for line in rendered)


def test_an_unversioned_pip_line_is_pinned_to_the_installed_version(make_notebook):
    nb = make_notebook([("setup", "%pip install numpy surely-not-installed-xyz\nimport numpy"), HANDLER])
    rendered = lines(infer_requirements(read_notebook(nb)))
    assert f"numpy=={version('numpy')}  # %pip (cell 1), pinned to the installed version; import numpy (cell 1)" in rendered
    assert "surely-not-installed-xyz  # %pip (cell 1)" in rendered  # not installed here: kept as written


def test_only_exported_cells_count(make_notebook):
    nb = make_notebook(
        [
            (None, "import numpy\nimport matplotlib.pyplot as plt"),
            ("test", "import yaml\nimport ipywidgets"),
            HANDLER,
        ]
    )
    assert [line.name for line in infer_requirements(read_notebook(nb)).lines] == ["runpod"]


@pytest.mark.process
def test_local_modules_are_copied_beside_the_worker(make_notebook, tmp_path):
    nb = make_notebook(
        [
            ("setup", "import utils\nfrom helpers import shout"),
            ("handler", "def handler(job):\n    return shout(utils.greet(job['input']['name']))"),
            ("test", "handler({'input': {'name': 'ada'}})"),
        ]
    )
    (tmp_path / "utils.py").write_text("def greet(name):\n    return 'hello ' + name\n")
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("def shout(text):\n    return text.upper()\n")
    result = export_notebook(nb, tmp_path / "out")
    assert [line.name for line in result.requirements.lines] == ["runpod"]
    assert (result.out_dir / "utils.py").is_file() and (result.out_dir / "helpers" / "__init__.py").is_file()
    run = subprocess.run([sys.executable, "handler.py"], cwd=result.out_dir, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "HELLO ADA" in run.stdout + run.stderr


def test_alias_table_for_modules_not_installed(make_notebook):
    nb = make_notebook([("setup", "import cv2\nfrom PIL import Image"), HANDLER])
    reqs = infer_requirements(read_notebook(nb))
    assert "opencv-python-headless  # import cv2 (cell 1), not installed here: unpinned" in lines(reqs)
    assert "pillow  # import PIL (cell 1), not installed here: unpinned" in lines(reqs)
    assert any("`cv2` is not installed here; requiring `opencv-python-headless` unpinned" in str(w) for w in reqs.warnings)


@pytest.mark.process
def test_unknown_missing_module_is_an_error(make_notebook, tmp_path):
    nb = make_notebook([("setup", "import os\nimport surely_not_a_module_xyz"), HANDLER])
    for command in ("deps", "export"):
        result = run_kit(command, nb)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "cell 1, line 2: `import surely_not_a_module_xyz`: no installed package provides `surely_not_a_module_xyz`" in result.stderr
        assert "%pip install" in result.stderr


def test_missing_module_covered_by_a_pip_line_or_optional(make_notebook):
    nb = make_notebook(
        [
            (
                "setup",
                "%pip install surely-not-a-module-xyz\nimport surely_not_a_module_xyz\ntry:\n    import orjson_xyz\nexcept ImportError:\n    orjson_xyz = None",
            ),
            HANDLER,
        ]
    )
    reqs = infer_requirements(read_notebook(nb))
    assert "surely-not-a-module-xyz  # %pip (cell 1)" in lines(reqs)
    assert any("optional import `orjson_xyz` is not installed here; left out" in str(w) for w in reqs.warnings)


def test_extra_and_exclude(make_notebook):
    nb = make_notebook([("setup", "import torch\nimport numpy"), HANDLER])
    reqs = infer_requirements(read_notebook(nb), extra=["hf_transfer>=0.1"], exclude=["torch"])
    assert [line.spec for line in reqs.lines] == ["hf_transfer>=0.1", f"numpy=={version('numpy')}", f"runpod=={version('runpod')}"]
    assert reqs.excluded == ["torch"]


@pytest.mark.process
def test_kit_deps_prints_and_writes_nothing(make_notebook, tmp_path):
    nb = make_notebook([("setup", "import yaml"), HANDLER])
    before = sorted(tmp_path.rglob("*"))
    text = run_kit("deps", nb, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert f"PyYAML=={version('PyYAML')}  # import yaml (cell 1)" in text.stdout
    as_json = run_kit("deps", nb, "--json", cwd=tmp_path)
    data = json.loads(as_json.stdout)
    assert {r["name"] for r in data["requirements"]} == {"PyYAML", "runpod"}
    assert sorted(tmp_path.rglob("*")) == before


def test_requirements_file_is_sorted_and_stable(make_notebook, tmp_path):
    nb = make_notebook([("setup", "import yaml\nimport numpy\nimport requests"), HANDLER])
    first = (export_notebook(nb, tmp_path / "a").out_dir / "requirements.txt").read_bytes()
    second = (export_notebook(nb, tmp_path / "a").out_dir / "requirements.txt").read_bytes()
    assert first == second
    names = [l.split("==")[0].lower() for l in first.decode().splitlines() if not l.startswith("#")]
    assert names == sorted(names)


@pytest.mark.process
@pytest.mark.timeout(900)
def test_embeddings_requirements_install_into_a_fresh_venv_and_run(tmp_path):
    """The exported list is complete: a venv with only it runs the worker's test job."""
    worker = export_notebook(NOTEBOOKS / "embeddings.ipynb", tmp_path / "worker").out_dir
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"],
        cwd=worker,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([python, "handler.py"], cwd=worker, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "completed successfully" in run.stdout + run.stderr


def test_local_modules_copy_only_regular_files_inside_the_notebook_folder(make_notebook, tmp_path):
    """Symlinks out of the folder (a file, /etc, /proc/self) and secret-looking files stay out, by name."""
    package = tmp_path / "helpers"
    package.mkdir()
    (package / "__init__.py").write_text("def shout(text):\n    return text.upper()\n")
    (package / "passwd.py").symlink_to("/etc/passwd")
    (package / "ssl").symlink_to("/etc/ssl")
    (package / "proc").symlink_to("/proc/self")
    (package / ".env").write_text("API_KEY=hunter2\n")
    (package / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (package / "data").mkdir()
    (package / "data" / "words.txt").write_text("kept\n")
    nb = make_notebook([("setup", "from helpers import shout"), ("handler", "def handler(job):\n    return shout(job['input'])")])
    result = run_kit("export", nb, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    copied = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out" / "helpers").rglob("*"))
    assert copied == ["helpers/__init__.py", "helpers/data", "helpers/data/words.txt"]
    assert "left out of the worker: helpers/proc (a symlink), helpers/ssl (a symlink), helpers/passwd.py (a symlink)" in result.stderr
    assert "as they look like secrets: helpers/.env, helpers/id_rsa; pass --include-secrets" in result.stderr

    # The nbconvert zip copies exactly the same files (one rule for both).
    import io
    import zipfile

    from kit.export.export import build_worker
    from kit.ui.exporter import zip_worker

    names = zipfile.ZipFile(io.BytesIO(zip_worker(build_worker(read_notebook(nb))))).namelist()
    assert sorted(n for n in names if n.startswith("helpers/")) == ["helpers/__init__.py", "helpers/data/words.txt"]

    asked = run_kit("export", nb, "-o", tmp_path / "out", "--include-secrets")
    assert asked.returncode == 0, asked.stderr
    assert (tmp_path / "out" / "helpers" / ".env").read_text() == "API_KEY=hunter2\n"


def test_a_local_module_that_is_a_symlink_is_refused(make_notebook, tmp_path):
    (tmp_path / "utils.py").symlink_to("/etc/passwd")
    nb = make_notebook([("setup", "import utils"), HANDLER])
    result = run_kit("export", nb, "-o", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "the local module utils.py is a symlink (to /etc/passwd)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_local_module_with_a_standard_library_name_is_copied_with_a_warning(make_notebook, tmp_path):
    (tmp_path / "statistics.py").write_text("def median(values):\n    return 'local median'\n")
    nb = make_notebook(
        [
            ("setup", "import statistics"),
            ("handler", "def handler(job):\n    return statistics.median(job['input'])"),
            ("test", "handler({'input': [1, 2]})"),
        ]
    )
    result = export_notebook(nb, tmp_path / "out")
    assert any("statistics.py beside the notebook shadows the standard library's `statistics`; copied" in str(w) for w in result.warnings)
    assert (tmp_path / "out" / "statistics.py").is_file()
    run = subprocess.run([sys.executable, "handler.py"], cwd=result.out_dir, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "local median" in run.stdout + run.stderr
