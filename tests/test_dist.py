"""The kit as a stock pod gets it: the built wheel installed into a fresh venv, nothing from the checkout.

One module-scoped venv (no system site packages) holds only the wheel `python -m build` makes
(what `make dist` runs) and its dependencies. From a folder outside the checkout the CLI runs
`kit --version`, `kit new`, `kit export` and `kit test`; a JupyterLab started from that venv
lists the Runpod exporter in File → Save and Export Notebook As, and `kit.panel()` renders.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import requests

# Building the wheel and installing it with its dependencies into a fresh venv takes minutes on a busy machine.
pytestmark = [pytest.mark.process, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "kit-dist-test-token"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user on a pod: no PYTHONPATH or venv of ours leaking the checkout in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("JUPYTER")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` as `make dist` runs it: the sdist, then the wheel built from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True, text=True, timeout=600, env=clean_env()
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel (and what it depends on) installed."""
    path = tmp_path_factory.mktemp("pod") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    wheel = next(dist.glob("*.whl"))
    result = subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return path


def test_the_wheel_ships_the_worker_templates_and_no_tests(dist):
    wheel = next(dist.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("kit/worker/worker_loop.py", "kit/worker/batching.py", "kit/worker/harness.py", "kit/new.py", "kit/cli.py"):
        assert needed in names
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "docker/"))]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "kit = kit.cli:main" in entry_points and "runpod = kit.ui.exporter:RunpodExporter" in entry_points
    sdist = next(dist.glob("*.tar.gz"))
    members = tarfile.open(sdist).getnames()
    assert any(m.endswith("kit/worker/worker_loop.py") for m in members)
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1024:.0f} KiB; sdist {sdist.stat().st_size / 1024:.0f} KiB")


def kit_cli(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "kit"), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def test_the_installed_kit_runs_from_the_venv_not_the_checkout(venv, tmp_path):
    result = kit_cli(venv, "--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "kit 0.1.0", result.stdout + result.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import kit, kit.worker.worker_loop as w; print(kit.__file__); print(w.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], env=clean_env(), capture_output=True)
    assert torch.returncode != 0, "the kit must not pull torch in"


def test_the_installed_kit_writes_exports_and_tests_a_notebook(venv, tmp_path):
    assert kit_cli(venv, "new", "my_worker", cwd=tmp_path).returncode == 0
    exported = kit_cli(venv, "export", "my_worker.ipynb", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    out = tmp_path / "build" / "my_worker"
    assert {"handler.py", "worker_loop.py", "requirements.txt", "test_input.json", "tests.py", "kit.json"} <= {
        p.name for p in out.iterdir()
    }
    assert "runpod==" in (out / "requirements.txt").read_text()
    tested = kit_cli(venv, "test", "my_worker.ipynb", "--json", "report.json", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True


# --- JupyterLab from the wheel's venv, in a real browser ------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(venv, tmp_path_factory):
    """JupyterLab as a stock pod starts it after `pip install`: from the venv, its own config dirs."""
    base = tmp_path_factory.mktemp("lab")
    workspace = base / "workspace"
    workspace.mkdir()
    subprocess.run([str(venv / "bin" / "kit"), "new", "starter"], cwd=workspace, env=clean_env(), check=True, timeout=120)
    port = free_port()
    env = clean_env(
        JUPYTER_TOKEN=TOKEN,
        HOME=str(base),
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        PATH=f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin",
    )
    log_path = base / "lab.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "python"),
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
            ]
            + ["--ServerApp.port_retries=0", f"--ServerApp.root_dir={workspace}"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"JupyterLab exited {process.returncode}:\n{log_path.read_text()}"
            try:
                if requests.get(f"{url}/api/status", params={"token": TOKEN}, timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"JupyterLab did not answer:\n{log_path.read_text()}"
            time.sleep(0.5)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
                process.wait(20)
                os.killpg(process.pid, signal.SIGKILL)  # its kernels
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            if process.poll() is not None:
                break


def test_jupyterlab_in_the_venv_knows_the_runpod_exporter(lab):
    exporters = requests.get(f"{lab}/api/nbconvert", params={"token": TOKEN}, timeout=30).json()
    assert "runpod" in exporters


@pytest.mark.browser
def test_browser_jupyterlab_from_the_wheel_has_the_export_entry_and_the_panel(lab):
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: CI must `apt-get install chromium` before the tests")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{lab}/lab/tree/starter.ipynb?token={TOKEN}")
            expect(page.locator(".jp-NotebookPanel .jp-Cell").first).to_be_visible(timeout=120_000)
            expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=120_000)

            page.get_by_role("menuitem", name="File", exact=True).click()
            page.locator("li.lm-Menu-item").filter(has_text="Save and Export Notebook As").hover()
            expect(page.locator("li.lm-Menu-item").filter(has_text=re.compile(r"^\s*Runpod\s*$"))).to_be_visible()
            page.keyboard.press("Escape")
            page.keyboard.press("Escape")

            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            panel = page.locator(".kit-panel")
            expect(panel).to_be_visible(timeout=120_000)
            expect(panel).to_contain_text("1 setup · 1 handler · 1 test cell(s)")
        finally:
            browser.close()
