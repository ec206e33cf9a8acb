"""Real-browser tests: JupyterLab started by start.sh in pod mode, driven by Debian's Chromium.

What a user does on a pod: open JupyterLab (the token is required), open
notebooks/hello.ipynb, run all cells, use the kit's panel (Run, Export) and
find the RunPod exporter in File → Save and Export Notebook As. Each step's
screenshot goes to test-artifacts/browser/; the panel's to docs/panel.png.

CI (CI=true) installs chromium with apt-get: there a missing browser fails
these tests; elsewhere it skips them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.browser, pytest.mark.process]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
PANEL_SCREENSHOT = ROOT / "docs" / "panel.png"
TOKEN = "kit-browser-test-token"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing: CI must `apt-get install chromium` before the tests", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab as the pod image runs it: start.sh, MODE_TO_RUN=pod, a token, on loopback."""
    base = tmp_path_factory.mktemp("pod")
    workspace = base / "workspace"
    workspace.mkdir()
    shutil.copy(ROOT / "notebooks" / "hello.ipynb", workspace / "hello.ipynb")
    home = base / "home"
    home.mkdir()
    # The image's JupyterLab settings (docker/jupyter/overrides.d), where the
    # Dockerfile puts them: the app's settings directory.
    config = base / "config"
    config.mkdir()
    app_settings = base / "app-settings"
    shutil.copytree(ROOT / "docker" / "jupyter" / "overrides.d", app_settings / "overrides.d")
    (config / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": {"app_settings_dir": str(app_settings)}}))
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JUPYTER", "JPY_", "RUNPOD_")) and key not in ("PUBLIC_KEY", "MODE_TO_RUN")
    }
    env.update(
        MODE_TO_RUN="pod",
        JUPYTER_PASSWORD=TOKEN,
        JUPYTER_IP="127.0.0.1",
        JUPYTER_PORT=str(port),
        WORKSPACE_DIR=str(workspace),
        PYTHON=sys.executable,
        RP_ENV_FILE=str(base / "rp_environment"),
        HOME=str(home),
        # Keep this server's config, settings and runtime files out of the user's.
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    log = (base / "start.log").open("w")
    process = subprocess.Popen(
        ["bash", str(ROOT / "start.sh")],
        cwd=workspace,
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
            assert process.poll() is None, f"start.sh exited {process.returncode}:\n{(base / 'start.log').read_text()}"
            try:
                if requests.get(f"{url}/api/status", params={"token": TOKEN}, timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"JupyterLab did not answer:\n{(base / 'start.log').read_text()}"
            time.sleep(0.5)
        yield {"url": url, "workspace": workspace, "log": base / "start.log"}
    finally:
        _stop_group(process)
        log.close()


def _stop_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            # start.sh is gone; its children (kernels) may not be.
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def menu_item(page, label):
    return page.locator("li.lm-Menu-item").filter(has_text=label)


def wait_for_kernel(page) -> None:
    """The notebook is open and its kernel idle: running cells now will not ask for a kernel."""
    expect(page.locator(".jp-NotebookPanel .jp-Cell").first).to_be_visible(timeout=120_000)
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=120_000)


def test_without_the_token_only_the_login_page_shows(jupyterlab, page):
    url = jupyterlab["url"]
    page.goto(f"{url}/lab/tree/hello.ipynb")
    expect(page.locator("input[type=password]").first).to_be_visible()
    assert "/login" in page.url
    shot(page, "01-login-without-token")
    expect(page.locator(".jp-Notebook")).to_have_count(0)
    assert requests.get(f"{url}/api/contents/hello.ipynb", timeout=10).status_code == 403
    assert requests.get(f"{url}/files/hello.ipynb", timeout=10, allow_redirects=False).status_code in (302, 403)


def test_the_notebook_loop_in_jupyterlab(jupyterlab, page):
    url, workspace = jupyterlab["url"], jupyterlab["workspace"]
    page.goto(f"{url}/lab/tree/hello.ipynb?token={TOKEN}")
    wait_for_kernel(page)
    shot(page, "02-notebook-open")

    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    panel = page.locator(".kit-panel")
    expect(panel).to_be_visible(timeout=120_000)
    expect(panel).to_contain_text("1 setup · 1 handler · 1 test cell(s)")
    expect(panel.locator(".kit-job textarea")).to_have_value(json.dumps({"input": {"prompt": "Hello World"}}, indent=2))
    # The test cell ran too: the notebook's own check passed.
    expect(page.locator(".jp-OutputArea-output").filter(has_text="'greeting': 'Hello'")).to_be_visible(timeout=120_000)
    shot(page, "03-panel-rendered")

    panel.locator(".kit-job textarea").fill('{"input": {"prompt": "from the browser"}}')
    panel.locator("button.kit-run").click()
    expect(panel.locator(".kit-status")).to_contain_text("done in", timeout=60_000)
    expect(panel.locator(".kit-output")).to_contain_text('"prompt": "from the browser"')
    expect(panel.locator(".kit-output")).to_contain_text('"greeting": "Hello"')
    expect(panel.locator(".kit-output")).to_contain_text("within RunPod's limits")
    panel.scroll_into_view_if_needed()
    shot(page, "04-run")
    panel.screenshot(path=str(PANEL_SCREENSHOT))

    panel.locator("button.kit-export").click()
    expect(panel.locator(".kit-status")).to_contain_text("exported", timeout=120_000)
    out_dir = workspace / "build" / "hello"
    expect(panel.locator(".kit-output")).to_contain_text(f"exported to {out_dir}/")
    expect(panel.locator(".kit-output")).to_contain_text("saved the notebook")
    expect(panel.locator(".kit-requirements")).to_contain_text("runpod==")
    shot(page, "05-export")
    assert (out_dir / "handler.py").is_file()
    assert "runpod==" in (out_dir / "requirements.txt").read_text()
    assert "async def handler(job):" in (out_dir / "handler.py").read_text()


def test_the_export_menu_lists_the_runpod_worker(jupyterlab, page):
    url = jupyterlab["url"]
    page.goto(f"{url}/lab/tree/hello.ipynb?token={TOKEN}")
    wait_for_kernel(page)
    page.get_by_role("menuitem", name="File", exact=True).click()
    menu_item(page, "Save and Export Notebook As").hover()
    # JupyterLab 4 labels an exporter by its capitalised name (nbconvert's
    # export_from_notebook label is the classic Notebook's).
    entry = menu_item(page, re.compile(r"^\s*Runpod\s*$"))
    expect(entry).to_be_visible()
    shot(page, "06-export-menu")
    # JupyterLab saves, then opens the download URL in a new tab, which
    # becomes a download: watch the browser's response to it.
    with page.context.expect_event("response", lambda r: "/nbconvert/runpod/hello.ipynb" in r.url, timeout=60_000) as answer:
        entry.click()
    response = answer.value
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/zip")
    assert response.headers["content-disposition"].startswith("attachment")
    assert "hello.zip" in response.headers["content-disposition"]
    # The same request with the token, to look inside the zip the user got.
    data = requests.get(response.url, params={"token": TOKEN}, timeout=60).content
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {"handler.py", "requirements.txt", "test_input.json"} <= set(names)


def test_a_cell_toolbar_button_opens_the_cell_tags(jupyterlab, page):
    url = jupyterlab["url"]
    page.goto(f"{url}/lab/tree/hello.ipynb?token={TOKEN}")
    wait_for_kernel(page)
    setup_cell = page.locator(".jp-NotebookPanel .jp-CodeCell").nth(1)  # cell 3, tagged setup
    setup_cell.locator(".jp-InputPrompt").click()
    button = setup_cell.locator(".jp-cell-toolbar [title^='Cell tags']")
    expect(button).to_be_visible()
    button.click()
    inspector = page.locator(".jp-PropertyInspector")
    expect(inspector).to_be_visible()
    # JupyterLab opens its sections collapsed: the tags are under Common Tools.
    inspector.get_by_text("Common Tools", exact=False).first.click()
    expect(inspector).to_contain_text("setup")
    shot(page, "07-cell-tags")


def test_serve_reloads_the_endpoint_when_the_notebook_is_saved(jupyterlab, page):
    """Serve, edit the handler cell, save with Ctrl+S: the endpoint answers with the new code."""
    url = jupyterlab["url"]
    page.goto(f"{url}/lab/tree/hello.ipynb?token={TOKEN}")
    wait_for_kernel(page)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    panel = page.locator(".kit-panel")
    expect(panel).to_be_visible(timeout=120_000)

    panel.locator("button.kit-serve").click()
    info = panel.locator(".kit-endpoint")
    expect(info).to_contain_text("serving this notebook at http://127.0.0.1:", timeout=120_000)
    expect(info.locator(".kit-curl")).to_contain_text("curl -X POST")
    expect(info.locator(".kit-curl")).to_contain_text('{"input": {"prompt": "Hello World"}}')
    endpoint = re.search(r"at (http://127\.0\.0\.1:\d+)/v2/local", info.inner_text()).group(1)
    assert requests.post(f"{endpoint}/v2/local/runsync", json={"input": {"n": 1}}, timeout=60).json()["output"]["greeting"] == "Hello"
    shot(page, "08-serving")

    handler_cell = page.locator(".jp-NotebookPanel .jp-CodeCell").nth(2)  # cell 4, tagged handler
    handler_cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")  # inside a cell's editor: the cell's text
    page.keyboard.insert_text(
        "async def handler(job):\n"
        '    job_input = job.get("input", {})\n'
        '    return {"greeting": GREETING + " from the watched endpoint", **job_input}\n'
    )
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 60
    while True:
        answer = requests.post(f"{endpoint}/v2/local/runsync", json={"input": {"n": 2}}, timeout=60).json()
        if answer["output"]["greeting"] == "Hello from the watched endpoint":
            break
        assert time.monotonic() < deadline, f"the endpoint still answers {answer}"
        time.sleep(0.2)
    expect(panel.locator(".kit-endpoint-log")).to_contain_text("cell 4 [handler] changed — warm", timeout=30_000)

    # Run sends the job to the endpoint: the new code answers, not the kernel's (old) handler.
    panel.locator(".kit-job textarea").fill('{"input": {"prompt": "via the panel"}}')
    panel.locator("button.kit-run").click()
    expect(panel.locator(".kit-status")).to_contain_text("COMPLETED on the local endpoint", timeout=60_000)
    expect(panel.locator(".kit-output")).to_contain_text("Hello from the watched endpoint")
    panel.scroll_into_view_if_needed()
    shot(page, "09-reloaded")

    panel.locator("button.kit-serve").click()  # now "Stop serving"
    expect(info).to_contain_text("local endpoint stopped", timeout=60_000)
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{endpoint}/v2/local/runsync", json={"input": {}}, timeout=10)
