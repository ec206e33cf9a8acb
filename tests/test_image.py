"""The image: Dockerfile, .dockerignore, its build steps and environment.yml.

There is no Docker engine here, so the Dockerfile stays thin: its build steps
are docker/bake-worker.sh and `kit export`, which these tests run on the host,
and its text is checked by hadolint and by reading its layers.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import NOTEBOOKS, ROOT

BIN = Path(sys.executable).parent
BAKE = ROOT / "docker" / "bake-worker.sh"
HOST_ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable}


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: it comes with the dev extra (pip install -e '.[dev]')"
    return str(path)


# --- lint -------------------------------------------------------------------


def test_dockerfile_passes_hadolint_without_warnings():
    result = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    result = subprocess.run(
        [tool("shellcheck"), "start.sh", "docker/bake-worker.sh"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the Dockerfile's layers ------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]  # stage 0: ARGs before the first FROM
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def test_dockerfile_builds_on_a_runpod_pytorch_image_and_runs_start_sh():
    stages = dockerfile_stages()
    base_arg = dict(args.split("=", 1) for ins, args in stages[0] if ins == "ARG")["BASE_IMAGE"]
    assert re.fullmatch(r"runpod/pytorch:[\w.-]+", base_arg)
    assert stages[1][0] == ("FROM", "${BASE_IMAGE} AS kit")
    final = stages[-1]
    assert ("COPY", "start.sh /start.sh") in final
    assert final[-1] == ("CMD", '["/start.sh"]')


def test_dockerfile_installs_the_worker_requirements_before_its_code():
    # Docker reuses a layer while the files copied before it are unchanged: the
    # pip layer depends on the pins alone, the worker's code comes after it.
    final = dockerfile_stages()[-1]
    pins = final.index(("COPY", "--from=export /app/requirements.pins /app/requirements.pins"))
    install = final.index(("RUN", "/opt/kit/docker/bake-worker.sh install /app/requirements.pins"))
    code = final.index(("COPY", "--from=export /app /app"))
    assert pins < install < code
    export_stage = next(stage for stage in dockerfile_stages() if stage[0][1].endswith("AS export"))
    assert ("RUN", '/opt/kit/docker/bake-worker.sh export "$NOTEBOOK" /app') in export_stage


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern that matches a
    directory excludes everything under it."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_the_venv_build_output_and_caches_out():
    patterns = dockerignore_patterns()
    for path in [
        ".venv/bin/python",
        "build/embeddings/handler.py",
        "kit/__pycache__/cli.cpython-311.pyc",
        "notebooks/.ipynb_checkpoints/hello-checkpoint.ipynb",
        ".pytest_cache/v/cache/lastfailed",
        "runpod_kit.egg-info/PKG-INFO",
        ".git/HEAD",
    ]:
        assert dockerignored(path, patterns), path


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    patterns = dockerignore_patterns()
    sources = []
    for stage in dockerfile_stages():
        for instruction, args in stage:
            if instruction == "COPY" and not args.startswith("--from"):
                sources += shlex.split(args)[:-1]
    assert "start.sh" in sources
    for source in sources:
        if source == ".":
            continue
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), source
    for path in ["kit/cli.py", "notebooks/embeddings.ipynb", "docker/bake-worker.sh", "pyproject.toml"]:
        assert not dockerignored(path, patterns), path


def test_jupyterlab_override_adds_a_cell_tags_button_to_the_cell_toolbar(tmp_path):
    # What the Dockerfile copies into JupyterLab's settings, loaded the way
    # JupyterLab loads it, against the schemas of the installed JupyterLab.
    from jupyterlab.commands import get_app_dir
    from jupyterlab_server.settings_utils import get_settings

    shutil.copytree(ROOT / "docker" / "jupyter" / "overrides.d", tmp_path / "settings" / "overrides.d")
    schemas = Path(get_app_dir()) / "schemas"
    settings, warnings = get_settings(
        str(tmp_path / "settings"), str(schemas), str(tmp_path / "user"),
        schema_name="@jupyterlab/cell-toolbar-extension:plugin",
    )
    assert not any(warnings), warnings
    toolbar = settings["schema"]["properties"]["toolbar"]["default"]
    button = next(item for item in toolbar if item["name"] == "kit-cell-tags")
    # The command opens the panel whose "Common tools" section edits cell tags.
    inspector = json.loads((schemas / "@jupyterlab/application-extension/property-inspector.json").read_text())
    assert button["command"] in json.dumps(inspector)
    celltags = (schemas / "@jupyterlab/celltags-extension/plugin.json").read_text()
    assert '"/tags"' in celltags


# --- the build steps, run on the host ---------------------------------------


def bake(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BAKE), *map(str, args)], cwd=ROOT, env={**HOST_ENV, **(env or {})},
        capture_output=True, text=True, timeout=300,
    )


def requirement_lines(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_baked_embeddings_worker_runs_its_test_job_under_start_sh(tmp_path):
    # `docker build --build-arg NOTEBOOK=notebooks/embeddings.ipynb .` on the
    # host: the export step, then the container's start on an endpoint.
    result = bake("export", "notebooks/embeddings.ipynb", tmp_path / "app")
    assert result.returncode == 0, result.stderr
    pins = requirement_lines(tmp_path / "app" / "requirements.pins")
    assert pins == requirement_lines(tmp_path / "app" / "requirements.txt")
    assert not any(canonicalize_name(Requirement(p).name) == "torch" for p in pins)  # the base image's stays

    (tmp_path / "home").mkdir()
    env = {k: v for k, v in HOST_ENV.items() if not k.startswith(("RUNPOD_", "MODE_TO_RUN"))}
    run = subprocess.run(
        [str(ROOT / "start.sh")],
        env={**env, "HOME": str(tmp_path / "home"), "WORKER_DIR": str(tmp_path / "app"), "RUNPOD_ENDPOINT_ID": "ep"},
        capture_output=True, text=True, timeout=300, start_new_session=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "running as serverless" in run.stderr
    # The SDK's local test mode logs the job's output: the sentences' embeddings.
    assert "Job local_test completed successfully" in run.stdout + run.stderr
    assert "'dimensions': 384, 'embeddings': [[" in run.stdout + run.stderr


def test_editing_a_notebooks_code_leaves_the_pins_and_so_the_pip_layer_unchanged(tmp_path):
    notebook = nbformat.read(NOTEBOOKS / "embeddings.ipynb", as_version=4)
    shutil.copytree(NOTEBOOKS, tmp_path / "notebooks")
    assert bake("export", tmp_path / "notebooks" / "embeddings.ipynb", tmp_path / "before").returncode == 0

    handler = next(cell for cell in notebook.cells if "handler" in cell.metadata.get("tags", []))
    handler.source = "# an edit to the handler's code\n" + handler.source
    notebook.cells.append(nbformat.v4.new_code_cell("# a new scratch cell"))
    nbformat.write(notebook, tmp_path / "notebooks" / "embeddings.ipynb")
    result = bake("export", tmp_path / "notebooks" / "embeddings.ipynb", tmp_path / "after")
    assert result.returncode == 0, result.stderr

    assert (tmp_path / "before" / "handler.py").read_text() != (tmp_path / "after" / "handler.py").read_text()
    assert (tmp_path / "before" / "requirements.pins").read_bytes() == (tmp_path / "after" / "requirements.pins").read_bytes()


def test_install_step_refuses_to_replace_the_base_images_torch(tmp_path):
    # Dry runs, offline: pip resolves against what is installed and installs nothing.
    offline = {"PIP_DRY_RUN": "1", "PIP_NO_INDEX": "1"}
    (tmp_path / "ok.pins").write_text("runpod==1.12.0\n")
    result = bake("install", tmp_path / "ok.pins", env=offline)
    assert result.returncode == 0, result.stdout + result.stderr

    (tmp_path / "other-torch.pins").write_text("torch==2.0.0\n")
    result = bake("install", tmp_path / "other-torch.pins", env=offline)
    assert result.returncode != 0
    assert "conflicting dependencies" in result.stderr and "(constraint) torch" in result.stdout + result.stderr


def test_bake_script_usage_error():
    result = bake("nonsense")
    assert result.returncode == 2
    assert "usage:" in result.stderr


# --- environment.yml --------------------------------------------------------


def test_the_kit_accepts_the_runpod_users_already_have():
    # A range, not a pin: installing the kit must not up- or downgrade the SDK in a pod image.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runpod = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "runpod")
    for version in ("1.10.0", "1.12.0", "2.0.0rc2", "2.4.1"):
        assert runpod.specifier.contains(version, prereleases=True), version
    assert not runpod.specifier.contains("0.10.0") and not runpod.specifier.contains("3.0.0")


def test_environment_yml_has_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))

    def by_name(lines):
        reqs = [Requirement(line) for line in lines]
        return {canonicalize_name(r.name): (r.specifier, r.extras, r.marker and str(r.marker)) for r in reqs}

    assert by_name(line for line in pip if not line.startswith("-")) == by_name(project["dependencies"])
    assert "--editable ." in pip  # the kit itself, from this checkout

    python = next(d for d in conda if d.startswith("python="))
    assert SpecifierSet(project["requires-python"]).contains(python.split("=", 1)[1] + ".0")
    # Nothing from conda that pip also installs, at another version.
    conda_names = {canonicalize_name(re.split(r"[=<>!~ ]", d)[0]) for d in conda}
    assert conda_names <= {"python", "pip"}
