"""The image: Dockerfile, .dockerignore, its build steps and environment.yml.

There is no Docker engine here, so the Dockerfile stays thin: its build steps
are docker/bake-worker.sh and `kit export`, which these tests run on the host,
and its text is checked by hadolint and by reading its layers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import tomllib
import yaml
from conftest import NOTEBOOKS, ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

BIN = Path(sys.executable).parent
BAKE = ROOT / "docker" / "bake-worker.sh"
HOST_ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable}


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: it comes with the dev extra (pip install -e '.[dev]')"
    return str(path)


# --- lint -------------------------------------------------------------------


def test_dockerfile_passes_hadolint_without_warnings():
    result = subprocess.run([tool("hadolint"), "Dockerfile", "docker/base.Containerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    result = subprocess.run(
        [tool("shellcheck"), "start.sh", "docker/bake-worker.sh", "docker/image.sh", ".ci/run"], cwd=ROOT, capture_output=True, text=True
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
    assert ("RUN", '/opt/kit/docker/bake-worker.sh worker "$WORKER" "$NOTEBOOK" /app') in export_stage


def test_dockerfile_kit_layer_copies_neither_the_readme_nor_docker():
    # An edit to the docs or the build scripts must not reinstall the kit.
    kit_stage = dockerfile_stages()[1]
    install = next(i for i, (ins, args) in enumerate(kit_stage) if ins == "RUN" and "pip install" in args and "/opt/kit" in args)
    copied = [shlex.split(args)[:-1] for ins, args in kit_stage[:install] if ins == "COPY"]
    assert [src for srcs in copied for src in srcs] == ["pyproject.toml", "kit"]


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
    # build/: the workers `--build-arg WORKER=build/<name>` bakes.
    for path in ["kit/cli.py", "notebooks/embeddings.ipynb", "docker/bake-worker.sh", "pyproject.toml", "build/hello/kit.json"]:
        assert not dockerignored(path, patterns), path


def test_jupyterlab_override_adds_a_cell_tags_button_to_the_cell_toolbar(tmp_path):
    # What the Dockerfile copies into JupyterLab's settings, loaded the way
    # JupyterLab loads it, against the schemas of the installed JupyterLab.
    from jupyterlab.commands import get_app_dir
    from jupyterlab_server.settings_utils import get_settings

    shutil.copytree(ROOT / "docker" / "jupyter" / "overrides.d", tmp_path / "settings" / "overrides.d")
    schemas = Path(get_app_dir()) / "schemas"
    settings, warnings = get_settings(
        str(tmp_path / "settings"),
        str(schemas),
        str(tmp_path / "user"),
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
        [str(BAKE), *map(str, args)],
        cwd=ROOT,
        env={**HOST_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
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
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
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


# --- the kit's install: warning-free (setuptools' deprecations break builds) --


@pytest.mark.process
def test_the_kits_install_builds_without_setuptools_warnings(tmp_path):
    # pip's isolated build, with the newest setuptools the index has, as in the image.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Building wheel for runpod-kit" in output
    for warning in ("SetuptoolsDeprecationWarning", "SetuptoolsWarning", "is absent from the `packages`", "!!"):
        assert warning not in output, output[output.find(warning) - 2000 :][:4000]


# --- the docs' GitHub Actions recipe, step by step in a fresh venv ----------


def readme_ci_steps() -> list[str]:
    readme = (ROOT / "docs" / "commands.md").read_text()
    section = readme.split("### `kit test` in your CI (GitHub Actions)", 1)[1]
    workflow = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    steps = next(iter(workflow["jobs"].values()))["steps"]
    return [step["run"] for step in steps if "run" in step]


@pytest.mark.process
@pytest.mark.timeout(900)
def test_readme_github_actions_steps_pass_in_a_fresh_venv(tmp_path):
    # The user's repository: the notebook, and the worker exported on the pod
    # (here: the host, whose kernel environment the pins describe).
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOKS / "hello.ipynb", repo / "notebooks" / "my_worker.ipynb")
    export = subprocess.run(
        [str(BIN / "kit"), "export", "notebooks/my_worker.ipynb", "-o", "build/my_worker"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert export.returncode == 0, export.stderr
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv_bin = tmp_path / "venv" / "bin"
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(tmp_path / "venv")}
    env.pop("PYTHONPATH", None)

    # The kit's wheel, committed into the user's repository as the recipe says.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(repo / ".kit"), str(ROOT)], check=True, timeout=600
    )
    steps = readme_ci_steps()
    assert steps and steps[0].startswith("pip install .kit/"), steps
    wheel = steps[0].split()[-1]
    assert (repo / wheel).is_file(), f"the recipe installs {wheel}; the kit's wheel is {sorted(p.name for p in (repo / '.kit').iterdir())}"
    for step in steps:
        result = subprocess.run(["bash", "-eo", "pipefail", "-c", step], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{step}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report = json.loads((repo / "kit-test.json").read_text())
    assert report, "kit test wrote an empty report"


# --- the image, built and run with podman ------------------------------------
#
# `make image-test` runs these (and CI): docker/image.sh builds the stand-in
# base once, then each image; podman's layer cache makes a rebuild quick.

IMAGE_SH = ROOT / "docker" / "image.sh"
IMAGES = {"hello": "notebooks/hello.ipynb", "embeddings": "notebooks/embeddings.ipynb"}


def podman_or_skip() -> None:
    problem = None
    if shutil.which("podman") is None:
        problem = "podman is not installed: apt-get install podman runc mmdebstrap (see `make image-test`)"
    elif os.geteuid() != 0:
        problem = "the image tests run podman as root"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the image tests: {problem}")
        pytest.skip(problem)


def image_sh(*args: str, timeout: float = 1500, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(IMAGE_SH), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"image.sh {' '.join(args)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    return image_sh("podman", *args, timeout=timeout, check=check)


_built: dict[str, str | None] = {}  # None: its build failed (reported once, by the first test)


@pytest.fixture(params=list(IMAGES))
def image(request) -> str:
    podman_or_skip()
    name = request.param
    if name not in _built:
        _built[name] = None
        tag = f"localhost/kit-{name}:latest"  # the tags `make image` builds
        image_sh("build", tag, f"NOTEBOOK={IMAGES[name]}")
        _built[name] = tag
    if _built[name] is None:
        pytest.fail(f"the {name} image did not build (see the first test that used it)")
    return _built[name]


class Container:
    def __init__(self, image: str, *args: str, **env: str):
        self.name = f"kit-test-{os.urandom(4).hex()}"
        env_args = [f"--env={key}={value}" for key, value in env.items()]
        podman("run", "--detach", "--name", self.name, "--network=host", *env_args, *args, image)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exit_code(self, timeout: float = 120) -> int:
        podman("wait", self.name, timeout=timeout)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


@pytest.fixture
def container():
    started: list[Container] = []

    def run(image: str, *args: str, **env: str) -> Container:
        started.append(Container(image, *args, **env))
        return started[-1]

    yield run
    for c in started:
        c.remove()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def job_input(image: str, i: int) -> dict:
    return {"sentences": [f"sentence number {i}"]} if "embeddings" in image else {"name": f"user-{i}"}


def job_ok(image: str, i: int, output) -> bool:
    if "embeddings" in image:
        return output["dimensions"] == 384 and len(output["embeddings"]) == 1
    return output == {"greeting": "Hello", "name": f"user-{i}"}


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_serverless_without_a_queue_runs_test_input_and_exits_0(image, container):
    run = container(image, MODE_TO_RUN="serverless")
    assert run.exit_code() == 0, run.logs()
    assert "Job local_test completed successfully" in run.logs()


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_serverless_takes_jobs_from_kit_serves_queue_and_drains_on_stop(image, container):
    from kit.serve.emulator import QueueEmulator

    jobs = 100 if "embeddings" in image else 300  # the embeddings model's CPU time bounds its count
    with QueueEmulator(host="127.0.0.1", port=0) as emu:
        run = container(image, MODE_TO_RUN="serverless", **emu.worker_env("container-1"))
        ids = [emu.submit({"input": job_input(image, i)}) for i in range(jobs)]
        states = [emu.wait(job_id, timeout=300) for job_id in ids]
        failed = [(i, s) for i, s in enumerate(states) if s["status"] != "COMPLETED" or not job_ok(image, i, s["output"])]
        assert not failed, (failed[:3], run.logs()[-3000:])
        # A job in flight when the container stops is finished, not lost.
        last = emu.submit({"input": job_input(image, jobs)})
        podman("stop", "--time", "60", run.name, timeout=120)
        assert run.exit_code() == 0, run.logs()[-3000:]
        assert emu.wait(last, timeout=5)["status"] in ("COMPLETED", "IN_QUEUE"), run.logs()[-3000:]
        counters = emu.counters
        assert counters.completed >= jobs and counters.failed == 0
        assert counters.duplicate_results == 0 and counters.unknown_results == 0


def ssh_to(port: int, home: Path, key: Path | None, *options: str) -> subprocess.CompletedProcess:
    auth = (
        ["-o", "IdentitiesOnly=yes", "-i", str(key)]
        if key
        else ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"]
    )
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(port),
            "-o",
            f"UserKnownHostsFile={home / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            *auth,
            *options,
            "root@127.0.0.1",
            "python -c 'import torch, kit; print(torch.__version__)'",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for(predicate, what: str, run: Container, timeout: float = 120):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n{run.logs()[-3000:]}")


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_pod_jupyterlab_needs_the_token_ssh_takes_only_the_key(image, container, tmp_path):
    import requests

    if shutil.which("ssh") is None:
        pytest.fail("the ssh client is missing: apt-get install openssh-client")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "id"], check=True)
    jupyter, ssh_port = free_port(), free_port()
    run = container(
        image,
        MODE_TO_RUN="pod",
        JUPYTER_PASSWORD="s3cret-token-for-the-test",
        PUBLIC_KEY=(tmp_path / "id.pub").read_text(),
        JUPYTER_IP="127.0.0.1",
        JUPYTER_PORT=str(jupyter),
        SSH_LISTEN="127.0.0.1",
        SSH_PORT=str(ssh_port),
        RUNPOD_POD_ID="podtest",
    )
    url = f"http://127.0.0.1:{jupyter}"
    auth = {"Authorization": "token s3cret-token-for-the-test"}
    wait_for(lambda: requests.get(f"{url}/api/status", timeout=5).status_code, "JupyterLab", run)  # any answer
    assert requests.get(f"{url}/api/contents", timeout=10).status_code == 403
    contents = requests.get(f"{url}/api/contents", headers=auth, timeout=10)
    assert contents.status_code == 200
    # The empty /workspace got the examples on this first start.
    assert {"hello.ipynb", "embeddings.ipynb"} <= {item["name"] for item in contents.json()["content"]}
    # The kit's JupyterLab settings: the cell toolbar's tags button.
    settings = requests.get(f"{url}/lab/api/settings/@jupyterlab/cell-toolbar-extension:plugin", headers=auth, timeout=10)
    assert settings.status_code == 200 and "kit-cell-tags" in settings.text

    wait_for(lambda: ssh_to(ssh_port, tmp_path, tmp_path / "id").returncode == 0, "SSH with the key", run)
    result = ssh_to(ssh_port, tmp_path, tmp_path / "id")
    assert result.stdout.strip().startswith("2.13.0"), result.stderr  # one Python: torch and the kit
    refused = ssh_to(ssh_port, tmp_path, None)
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
    podman("stop", "--time", "30", run.name, timeout=90)
    assert run.exit_code() == 0, run.logs()[-3000:]


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_both_mode_answers_a_job(image, container):
    import requests

    jupyter, api = free_port(), free_port()
    run = container(
        image,
        MODE_TO_RUN="both",
        JUPYTER_PASSWORD="s3cret-token-for-the-test",
        JUPYTER_IP="127.0.0.1",
        JUPYTER_PORT=str(jupyter),
        WORKER_API_PORT=str(api),
    )
    response = wait_for(
        lambda: requests.post(f"http://127.0.0.1:{api}/runsync", json={"input": job_input(image, 7)}, timeout=60),
        "the worker's local API",
        run,
        timeout=180,
    )
    assert response.status_code == 200, response.text
    assert job_ok(image, 7, response.json()["output"]), response.text
    status = wait_for(lambda: requests.get(f"http://127.0.0.1:{jupyter}/api/contents", timeout=10).status_code, "JupyterLab", run)
    assert status == 403


def build_context_dir(name: str) -> Path:
    """A folder under build/ (in the build context) the test owns."""
    path = ROOT / "build" / name
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(exist_ok=True)
    return path


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_from_a_worker_directory_reuses_the_pip_layer_when_only_code_changes(container, tmp_path):
    podman_or_skip()
    worker = build_context_dir("test-image-worker")
    notebook = nbformat.read(NOTEBOOKS / "hello.ipynb", as_version=4)
    outputs = []
    try:
        for greeting in ("Hello", "Bonjour"):
            for cell in notebook.cells:  # the default greeting, in the setup cell's code
                cell.source = re.sub(r'"GREETING", "\w+"', f'"GREETING", "{greeting}"', cell.source)
            nbformat.write(notebook, tmp_path / "my_worker.ipynb")
            result = subprocess.run(
                [str(BIN / "kit"), "export", str(tmp_path / "my_worker.ipynb"), "-o", str(worker)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(image_sh("build", "localhost/kit-test-worker:latest", "WORKER=build/test-image-worker"))
            run = container("localhost/kit-test-worker:latest", MODE_TO_RUN="serverless")
            assert run.exit_code() == 0, run.logs()
            assert f"'greeting': '{greeting}'" in run.logs()
    finally:
        shutil.rmtree(worker, ignore_errors=True)
    # Second build: the code changed, the pins did not: pip's layer comes from the cache.
    second = outputs[1].stdout
    install = second[second.index("bake-worker.sh install") :]
    assert install.split("\n", 2)[1].startswith("--> Using cache"), install[:500]


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_build_with_unmeetable_requirements_fails_on_one_line_and_leaves_no_container(tmp_path):
    podman_or_skip()
    worker = build_context_dir("test-image-unmeetable")
    try:
        result = subprocess.run(
            [str(BIN / "kit"), "export", str(NOTEBOOKS / "hello.ipynb"), "-o", str(worker)], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        with open(worker / "requirements.txt", "a") as f:
            f.write("kit-no-such-distribution==6.6.6  # nobody publishes this\n")
        before = podman("ps", "--all", "--external", "--quiet").stdout.split()
        build = image_sh("build", "localhost/kit-test-unmeetable:latest", "WORKER=build/test-image-unmeetable", check=False)
    finally:
        shutil.rmtree(worker, ignore_errors=True)
    assert build.returncode != 0
    errors = [line for line in build.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "the worker's requirements cannot be installed" in errors[0], build.stderr[-3000:]
    assert "kit-no-such-distribution" in errors[0]
    assert podman("ps", "--all", "--external", "--quiet").stdout.split() == before


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_build_checks_that_python_has_torch_and_jupyterlab():
    podman_or_skip()
    build = image_sh("build", "localhost/kit-test-python:latest", "PYTHON=python3.9", check=False)
    assert build.returncode != 0
    assert "error: 'python3.9' cannot import torch, jupyterlab and ipykernel: build with --build-arg PYTHON=" in build.stderr


# --- VS Code Remote-SSH: the ~/.ssh/config block start.sh prints, and what the VS Code server needs


def ssh_config_block(env: dict[str, str]) -> subprocess.CompletedProcess:
    """start.sh's print_ssh_config alone (the real function: start.sh without its last line, `main "$@"`)."""
    script = (ROOT / "start.sh").read_text()
    assert script.rstrip().endswith('main "$@"')
    body = script.rstrip()[: -len('main "$@"')]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    return subprocess.run(["bash", "-c", body + "\nprint_ssh_config"], env={**clean, **env}, capture_output=True, text=True, timeout=30)


def printed_block(log: str) -> str:
    """The lines start.sh prints for ~/.ssh/config: from the comment to the IdentityFile line."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# IdentityFile:"))
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("IdentityFile "))
    return "\n".join(lines[start : end + 1]) + "\n"


def test_start_sh_prints_an_ssh_config_block_ssh_reads_as_written(tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("the ssh client is missing: apt-get install openssh-client")
    result = ssh_config_block({"RUNPOD_PUBLIC_IP": "203.0.113.7", "RUNPOD_TCP_PORT_22": "40122", "RUNPOD_POD_ID": "abc123xyz"})
    assert result.returncode == 0, result.stderr
    assert "paste into ~/.ssh/config" in result.stderr and "the port changes when the pod restarts" in result.stderr
    block = printed_block(result.stderr)
    (tmp_path / "config").write_text(block)
    resolved = subprocess.run(["ssh", "-G", "-F", str(tmp_path / "config"), "runpod-abc123xyz"], capture_output=True, text=True, check=True)
    settings = dict(line.split(" ", 1) for line in resolved.stdout.splitlines() if " " in line)
    assert settings["hostname"] == "203.0.113.7" and settings["port"] == "40122"
    assert settings["user"] == subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert settings["identityfile"].endswith("/.ssh/id_ed25519")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"RUNPOD_PUBLIC_IP": "203.0.113.7"},  # no mapped port: no TCP port exposed for SSH
        {"RUNPOD_PUBLIC_IP": "1.2.3.4\n    ProxyCommand touch /tmp/owned", "RUNPOD_TCP_PORT_22": "22"},
        {"RUNPOD_PUBLIC_IP": "203.0.113.7", "RUNPOD_TCP_PORT_22": "70000"},
        {"RUNPOD_PUBLIC_IP": "203.0.113.7", "RUNPOD_TCP_PORT_22": "22 -oProxyCommand=x"},
    ],
)
def test_start_sh_prints_no_ssh_config_without_a_sound_address_and_port(env):
    result = ssh_config_block(env)
    assert result.returncode == 0, result.stderr
    assert "Host " not in result.stderr and "ProxyCommand" not in result.stderr


# VS Code's documented minimum for its server on Linux x64 (code.visualstudio.com/docs/remote/linux:
# "glibc >= 2.28, libstdc++ >= 3.4.25"), bash, tar, and curl or wget to fetch the server.
VSCODE_CHECKS = r"""
set -e
bash --version | head -n 1
tar --version | head -n 1
command -v curl || command -v wget
glibc=$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)
printf 'glibc %s\n' "$glibc"
libstdcxx=$(ldconfig -p | grep -m1 'libstdc++.so.6 (libc6,x86-64)' | sed 's/.*=> //')
grep -aq 'GLIBCXX_3\.4\.25' "$libstdcxx" && echo "libstdc++ has GLIBCXX_3.4.25"
python -c 'import ipykernel, sys; print("ipykernel", ipykernel.__version__, sys.executable)'
python -m jupyter kernelspec list
"""


@pytest.fixture(scope="module")
def hello_image() -> str:
    """The hello image under a tag of these tests' own."""
    podman_or_skip()
    tag = "localhost/kit-pod-hello:latest"
    image_sh("build", tag, "NOTEBOOK=notebooks/hello.ipynb")
    return tag


def tunnel(config: Path, host: str, *forward: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ssh", "-F", str(config), "-N", "-o", "ExitOnForwardFailure=yes", *forward, host],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.image
@pytest.mark.timeout(1800)
def test_image_pod_has_what_vscode_remote_ssh_needs(hello_image, container, tmp_path):
    """What the Remote-SSH extension does, step by step, with the block start.sh printed:
    key login, its requirements check, a local forward (`ssh -L`) and a dynamic one (`ssh -D`)."""
    import requests

    if shutil.which("ssh") is None or shutil.which("curl") is None:
        pytest.fail("the ssh and curl clients are needed: apt-get install openssh-client curl")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "id"], check=True)
    token = "vscode-token-for-the-test"
    jupyter, ssh_port = free_port(), free_port()
    run = container(
        hello_image,
        MODE_TO_RUN="pod",
        JUPYTER_PASSWORD=token,
        PUBLIC_KEY=(tmp_path / "id.pub").read_text(),
        JUPYTER_IP="127.0.0.1",
        JUPYTER_PORT=str(jupyter),
        SSH_LISTEN="127.0.0.1",
        SSH_PORT=str(ssh_port),
        RUNPOD_POD_ID="vscodepod",
        RUNPOD_PUBLIC_IP="127.0.0.1",
        RUNPOD_TCP_PORT_22=str(ssh_port),
    )
    wait_for(lambda: "IdentityFile ~/.ssh/id_ed25519" in run.logs(), "the SSH config block", run)
    block = printed_block(run.logs())
    assert "Host runpod-vscodepod\n" in block and f"    Port {ssh_port}\n" in block and "    User root\n" in block
    # The user's ~/.ssh/config: the block as printed, the placeholder pointed at their key.
    config = tmp_path / "config"
    config.write_text(
        block.replace("~/.ssh/id_ed25519", str(tmp_path / "id"))
        + f"    IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile {tmp_path / 'known_hosts'}\n"
    )
    login = ["ssh", "-F", str(config), "runpod-vscodepod"]
    wait_for(lambda: subprocess.run([*login, "true"], capture_output=True, timeout=30).returncode == 0, "SSH with the key", run)

    checks = subprocess.run([*login, "bash -s"], input=VSCODE_CHECKS, capture_output=True, text=True, timeout=60)
    assert checks.returncode == 0, checks.stdout + checks.stderr
    glibc = re.search(r"^glibc (\d+)\.(\d+)", checks.stdout, re.M)
    assert glibc and (int(glibc[1]), int(glibc[2])) >= (2, 28), checks.stdout
    assert "libstdc++ has GLIBCXX_3.4.25" in checks.stdout
    assert re.search(r"^ipykernel \S+ ", checks.stdout, re.M) and "python3" in checks.stdout, checks.stdout

    local, socks = free_port(), free_port()
    forwards = [
        tunnel(config, "runpod-vscodepod", "-L", f"{local}:127.0.0.1:{jupyter}"),
        tunnel(config, "runpod-vscodepod", "-D", f"127.0.0.1:{socks}"),
    ]
    try:
        answer = wait_for(lambda: requests.get(f"http://127.0.0.1:{local}/api/status", params={"token": token}, timeout=5), "ssh -L", run)
        assert answer.status_code == 200
        assert requests.get(f"http://127.0.0.1:{local}/api/contents", timeout=5).status_code == 403  # the token is still needed

        def through_socks() -> subprocess.CompletedProcess | None:
            result = subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--socks5-hostname", f"127.0.0.1:{socks}"]
                + ["-H", f"Authorization: token {token}", f"http://localhost:{jupyter}/api/status"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return result if result.stdout == "200" else None

        assert wait_for(through_socks, "ssh -D", run).stdout == "200"
    finally:
        for process in forwards:
            process.terminate()
            process.wait(10)
    podman("stop", "--time", "30", run.name, timeout=90)
    assert run.exit_code() == 0, run.logs()[-3000:]
