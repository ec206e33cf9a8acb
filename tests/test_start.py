"""start.sh, the image's entry point, run on the host.

Every path and port start.sh uses is an env var, so each test points them into
its own temporary directory (HOME too) and at free loopback ports: nothing is
written to /etc or the real home. Each run is its own process group, stopped
by the fixture.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from conftest import NOTEBOOKS, ROOT, run_kit

pytestmark = pytest.mark.process  # every test here starts worker or server processes

START_SH = ROOT / "start.sh"
SSHD = "/usr/sbin/sshd"

# Variables of the machine running the tests that would change what start.sh does.
_START_VARS = re.compile(
    r"^(MODE_TO_RUN|PUBLIC_KEY|JUPYTER_|RUNPOD_|WORKER_|WORKSPACE_DIR|SSH|RP_ENV_FILE|HF_HOME|EXAMPLES_DIR|VOLUME_DIR)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StartSh:
    """One run of start.sh in its own process group, its output in a log file."""

    def __init__(self, base: Path, **env: str):
        self.base = base
        self.home = Path(env.pop("HOME", base / "home"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.jupyter_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not _START_VARS.match(k)}
        self.env.update(
            HOME=str(self.home),
            PYTHON=sys.executable,
            WORKSPACE_DIR=str(base / "workspace"),
            WORKER_DIR=str(base / "app"),
            RP_ENV_FILE=str(base / "rp_environment"),
            SSH_DIR=str(base / "ssh"),
            SSH_LISTEN="127.0.0.1",
            SSH_PORT=str(free_port()),
            JUPYTER_IP="127.0.0.1",
            JUPYTER_PORT=str(self.jupyter_port),
            WORKER_API_PORT=str(free_port()),
            EXAMPLES_DIR=str(base / "no-examples"),
            VOLUME_DIR=str(base / "no-volume"),
        )
        self.env.update(env)
        self.log_path = base / f"start-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> StartSh:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(START_SH)],
                env=self.env,
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, predicate, what: str, timeout: float = 90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"start.sh exited ({self.proc.returncode}) before {what}:\n{self.log}")
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}:\n{self.log}")

    def jupyter(self, path: str, token: str | None = None) -> requests.Response:
        headers = {"Authorization": f"token {token}"} if token is not None else {}
        return requests.get(f"http://127.0.0.1:{self.jupyter_port}{path}", headers=headers, timeout=10)

    def wait_for_jupyter(self) -> None:
        def up() -> bool:
            try:
                self.jupyter("/api/status")  # any answer, 403 included
                return True
            except requests.ConnectionError:
                return False

        self.wait_until(up, "JupyterLab to listen")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to start.sh, as `docker stop` sends it; its return code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.returncode

    def kill_group(self) -> None:
        """Whatever is left of the process group: nothing, when start.sh did its job."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture
def start_sh(tmp_path):
    runs: list[StartSh] = []

    def launch(base: Path = tmp_path, **env: str) -> StartSh:
        run = StartSh(base, **env).start()
        runs.append(run)
        return run

    yield launch
    for run in runs:
        run.stop()
        run.kill_group()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for killpg; only live members matter.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def write_worker(app: Path) -> Path:
    """An echo worker exported from the hello example, as the image's build does."""
    result = run_kit("export", NOTEBOOKS / "hello.ipynb", "-o", app, "--exclude", "torch")
    assert result.returncode == 0, result.stderr
    return app


# --- mode selection ---------------------------------------------------------


def test_bad_mode_exits_1_naming_the_valid_modes(start_sh):
    run = start_sh(MODE_TO_RUN="worker")
    assert run.proc.wait(30) == 1
    assert "invalid MODE_TO_RUN='worker'" in run.log
    for mode in ("pod", "serverless", "both"):
        assert f"'{mode}'" in run.log


def test_runpod_endpoint_id_alone_selects_serverless(start_sh, tmp_path):
    # Without a queue in its env the SDK runs the worker's test_input.json once
    # and exits: a pod would have stayed up with JupyterLab instead.
    write_worker(tmp_path / "app")
    run = start_sh(RUNPOD_ENDPOINT_ID="ep-123")
    assert run.proc.wait(120) == 0, run.log
    assert "running as serverless" in run.log
    assert "Hello World" in run.log  # the handler's output for test_input.json
    assert "JupyterLab" not in run.log
    assert not (run.home / ".bashrc").exists()


def test_serverless_without_a_worker_exits_1_instead_of_hanging(start_sh):
    run = start_sh(MODE_TO_RUN="serverless")
    assert run.proc.wait(30) == 1
    assert "handler.py does not exist" in run.log


# --- serverless -------------------------------------------------------------


def listening_sockets(pid: int) -> list[str]:
    """The TCP sockets a process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.append(fields[1])
    return listening


def test_serverless_serves_a_queued_job_and_drains_on_sigterm(start_sh, tmp_path):
    from kit.serve.emulator import QueueEmulator

    write_worker(tmp_path / "app")
    with QueueEmulator(host="127.0.0.1", port=0) as emu:
        run = start_sh(MODE_TO_RUN="serverless", GREETING="hi", **emu.worker_env("worker-1"))
        job_id = emu.submit({"input": {"name": "ada"}})
        state = emu.wait(job_id, timeout=120)
        assert state["status"] == "COMPLETED", (state, run.log)
        assert state["output"] == {"greeting": "hi", "name": "ada"}

        # exec: start.sh's own process is now the worker, with no port open.
        cmdline = Path(f"/proc/{run.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:3] == [sys.executable.encode(), b"-u", str(tmp_path / "app" / "handler.py").encode()]
        assert listening_sockets(run.proc.pid) == []

        assert run.stop(timeout=100) == 0, run.log
        assert not group_alive(run.proc.pid)


# --- pod --------------------------------------------------------------------


def sshd_or_fail():
    if not os.access(SSHD, os.X_OK):
        message = f"{SSHD} is missing: apt-get install -y openssh-server"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _strict_modes_accept(path: Path) -> bool:
    return all(p.stat().st_mode & 0o022 == 0 for p in [path, *path.parents])


def safe_home() -> Path:
    """A HOME sshd's StrictModes accepts: no group/world-writable directory
    above authorized_keys, which rules out anything under /tmp. The checkout's
    build/ is tried first; a checkout that itself lies under /tmp (a CI clone)
    falls back to a private folder in the runner's home."""
    for base in (ROOT / "build", Path.home() / ".cache" / "kit-test-start"):
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _strict_modes_accept(base):
            return Path(tempfile.mkdtemp(prefix="test-start-home-", dir=base))
    pytest.fail(
        f"no directory for a test HOME that sshd accepts: {ROOT / 'build'} and {Path.home()} lie under a group/world-writable directory"
    )


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """One pod: PUBLIC_KEY and JUPYTER_PASSWORD set, as a RunPod template sets them."""
    sshd_or_fail()
    base = tmp_path_factory.mktemp("pod")
    home = safe_home()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", base / "id_ed25519"], check=True)
    run = StartSh(
        base,
        HOME=str(home),
        MODE_TO_RUN="pod",
        PUBLIC_KEY=(base / "id_ed25519.pub").read_text(),
        JUPYTER_PASSWORD="s3cret-token",
        RUNPOD_POD_ID="pod-abc",
        RUNPOD_API_KEY="key with 'quotes' and $dollars",
    ).start()
    try:
        run.wait_for_jupyter()
        ssh_port = int(run.env["SSH_PORT"])
        run.wait_until(lambda: _connects(ssh_port), "sshd to listen")
        yield run
    finally:
        run.stop()
        run.kill_group()
        shutil.rmtree(home, ignore_errors=True)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def ssh(pod: StartSh, *options: str, command: str = "true") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            pod.env["SSH_PORT"],
            "-o",
            f"UserKnownHostsFile={pod.base / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            *options,
            "root@127.0.0.1",
            command,
        ],
        env={**os.environ, "HOME": str(pod.home)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_pod_jupyter_refuses_requests_without_the_jupyter_password_token(pod):
    assert pod.jupyter("/api/contents").status_code == 403
    assert pod.jupyter("/api/contents", token="wrong").status_code == 403
    response = pod.jupyter("/api/contents", token="s3cret-token")
    assert response.status_code == 200
    assert response.json()["path"] == ""  # rooted at WORKSPACE_DIR
    assert "s3cret-token" not in pod.log


def test_pod_kernel_runs_the_same_python_as_the_worker(pod):
    response = requests.post(
        f"http://127.0.0.1:{pod.jupyter_port}/api/kernels",
        headers={"Authorization": "token s3cret-token"},
        json={"name": "python3"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    kernel_id = response.json()["id"]

    def kernel_argv():
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"ipykernel_launcher" in argv and any(kernel_id.encode() in a for a in argv):
                return argv

    try:
        argv = pod.wait_until(kernel_argv, "the kernel process")
        assert argv[0].decode() == pod.env["PYTHON"]
    finally:
        # Kernels run in sessions of their own, outside start.sh's process group.
        requests.delete(
            f"http://127.0.0.1:{pod.jupyter_port}/api/kernels/{kernel_id}",
            headers={"Authorization": "token s3cret-token"},
            timeout=30,
        )


def test_pod_ssh_accepts_the_public_key(pod):
    result = ssh(pod, "-o", "IdentitiesOnly=yes", "-i", str(pod.base / "id_ed25519"), command="echo $((6 * 7))")
    assert result.returncode == 0, result.stderr + pod.log
    assert result.stdout.strip() == "42"


def test_pod_ssh_refuses_passwords(pod):
    result = ssh(
        pod,
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
    )
    assert result.returncode == 255
    # The server lists what it accepts: the public key, nothing else.
    assert "Permission denied (publickey)" in result.stderr


def test_pod_exports_runpod_env_for_ssh_sessions_without_public_key(pod):
    env_file = pod.env["RP_ENV_FILE"]
    result = ssh(
        pod,
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(pod.base / "id_ed25519"),
        command=f'. {env_file} && printf \'%s|%s|%s\' "$RUNPOD_POD_ID" "$RUNPOD_API_KEY" "${{PUBLIC_KEY-unset}}"',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "pod-abc|key with 'quotes' and $dollars|unset"
    assert "PUBLIC_KEY" not in Path(env_file).read_text()
    assert f". {env_file}" in (pod.home / ".bashrc").read_text()


def test_pod_without_jupyter_password_logs_a_random_token_and_restarts_cleanly(start_sh, tmp_path):
    tokens = []
    for pod_id in ("first", "second"):  # the second run is the pod restarting
        run = start_sh(MODE_TO_RUN="pod", RUNPOD_POD_ID=pod_id, JUPYTER_PASSWORD="")
        run.wait_for_jupyter()
        match = re.search(r"JupyterLab token \(random\): (\S+)", run.log)
        assert match, run.log
        token = match.group(1)
        assert len(token) >= 24
        assert run.jupyter("/api/contents").status_code == 403
        assert run.jupyter("/api/contents", token="").status_code == 403
        assert run.jupyter("/api/contents", token=token).status_code == 200
        assert "no SSH server" in run.log  # PUBLIC_KEY unset
        assert run.stop() == 0, run.log
        assert not group_alive(run.proc.pid)
        tokens.append(token)

    assert tokens[0] != tokens[1]
    env_file = (tmp_path / "rp_environment").read_text()
    assert "RUNPOD_POD_ID=second" in env_file and "first" not in env_file
    bashrc = (tmp_path / "home" / ".bashrc").read_text().splitlines()
    assert len([line for line in bashrc if "rp_environment" in line]) == 1


def test_both_mode_runs_the_pod_services_and_the_worker(start_sh, tmp_path):
    write_worker(tmp_path / "app")
    run = start_sh(MODE_TO_RUN="both", JUPYTER_PASSWORD="pw", GREETING="hi")
    run.wait_for_jupyter()
    assert run.jupyter("/api/contents", token="pw").status_code == 200

    api_port = int(run.env["WORKER_API_PORT"])
    run.wait_until(lambda: _connects(api_port), "the worker's local API", timeout=120)
    response = requests.post(f"http://127.0.0.1:{api_port}/runsync", json={"input": {"name": "grace"}}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["output"] == {"greeting": "hi", "name": "grace"}
    assert run.stop() == 0, run.log
    assert not group_alive(run.proc.pid)


# --- the pod's JupyterLab: websockets only from its own origin ----------------


def websocket_status(pod: StartSh, origin: str, cookies: str) -> int:
    """Open JupyterLab's event websocket as a browser would, with the login
    cookie and the page's Origin: 101 when accepted, else the HTTP status."""
    import asyncio

    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    async def attempt() -> int:
        request = HTTPRequest(
            f"ws://127.0.0.1:{pod.jupyter_port}/api/events/subscribe",
            headers={"Origin": origin, "Cookie": cookies},
            request_timeout=20,
        )
        try:
            connection = await websocket_connect(request)
        except HTTPClientError as error:
            return error.code
        connection.close()
        return 101

    return asyncio.run(attempt())


def test_pod_jupyter_websockets_refuse_other_origins_and_accept_the_pods_own(pod):
    # Logged in once (the token in the URL sets the cookie), as a user's browser is.
    session = requests.Session()
    assert session.get(f"http://127.0.0.1:{pod.jupyter_port}/lab?token=s3cret-token", timeout=30).status_code == 200
    cookies = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    assert cookies

    # Another website open in the same browser: the cookie alone must not do.
    assert websocket_status(pod, "https://evil.example", cookies) == 403
    assert websocket_status(pod, f"https://pod-abc-{pod.jupyter_port}.proxy.runpod.net.evil.example", cookies) == 403
    assert websocket_status(pod, f"https://other-pod-{pod.jupyter_port}.proxy.runpod.net", cookies) == 403
    # The pod's own proxy URL (RUNPOD_POD_ID, JUPYTER_PORT) and an SSH tunnel to localhost.
    assert websocket_status(pod, f"https://pod-abc-{pod.jupyter_port}.proxy.runpod.net", cookies) == 101
    assert websocket_status(pod, "http://localhost:8888", cookies) == 101


def test_short_jupyter_password_is_warned_about(start_sh):
    run = start_sh(MODE_TO_RUN="pod", JUPYTER_PASSWORD="abc")
    run.wait_for_jupyter()
    assert "warning: JUPYTER_PASSWORD has 3 characters" in run.log
    assert "abc" not in run.log.replace("JUPYTER_PASSWORD has 3 characters", "")
    assert run.jupyter("/api/contents", token="abc").status_code == 200


def test_long_jupyter_password_gets_no_warning(pod):
    assert "warning" not in pod.log


# --- SSH host keys a volume or an old image left with bad permissions ---------


def host_keys(ssh_dir: Path, mode: int) -> None:
    ssh_dir.mkdir(parents=True)
    for kind in ("ed25519", "rsa"):
        key = ssh_dir / f"ssh_host_{kind}_key"
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", key], check=True)
        key.chmod(mode)


def test_pod_makes_host_keys_with_bad_permissions_private_and_starts_ssh(start_sh, tmp_path):
    sshd_or_fail()
    home = safe_home()
    try:
        host_keys(tmp_path / "ssh", 0o644)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "id"], check=True)
        run = start_sh(MODE_TO_RUN="pod", HOME=str(home), JUPYTER_PASSWORD="s3cret-token", PUBLIC_KEY=(tmp_path / "id.pub").read_text())
        run.wait_for_jupyter()
        run.wait_until(lambda: _connects(int(run.env["SSH_PORT"])), "sshd to listen")
        assert "had mode 644" in run.log and "made it private" in run.log
        assert (tmp_path / "ssh" / "ssh_host_rsa_key").stat().st_mode & 0o777 == 0o600
        result = ssh(run, "-o", "IdentitiesOnly=yes", "-i", str(tmp_path / "id"), command="echo ok")
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr + run.log
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_pod_with_broken_host_keys_keeps_jupyter_and_says_why_there_is_no_ssh(start_sh, tmp_path):
    sshd_or_fail()
    (tmp_path / "ssh").mkdir()
    for kind in ("ed25519", "rsa"):
        key = tmp_path / "ssh" / f"ssh_host_{kind}_key"
        key.write_text("not a key\n")
        key.chmod(0o600)
    run = start_sh(MODE_TO_RUN="pod", JUPYTER_PASSWORD="s3cret-token", PUBLIC_KEY="ssh-ed25519 AAAA test")
    run.wait_for_jupyter()
    assert run.jupyter("/api/contents", token="s3cret-token").status_code == 200
    run.wait_until(lambda: "no SSH server: sshd refuses" in run.log, "the reason there is no SSH")
    assert run.proc.poll() is None  # the pod stays up
    assert (tmp_path / "ssh" / "ssh_host_rsa_key").read_text() == "not a key\n"  # not the kit's to delete


# --- the workspace and the model cache ---------------------------------------


def test_first_start_copies_the_examples_into_an_empty_workspace_only(start_sh, tmp_path):
    run = start_sh(MODE_TO_RUN="pod", JUPYTER_PASSWORD="s3cret-token", EXAMPLES_DIR=str(NOTEBOOKS))
    run.wait_for_jupyter()
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    listing = run.jupyter("/api/contents", token="s3cret-token").json()["content"]
    assert sorted(item["name"] for item in listing if item["name"].endswith(".ipynb")) == names
    assert run.stop() == 0

    # A restart, after the user edited one and deleted another: nothing comes back or changes.
    workspace = tmp_path / "workspace"
    (workspace / "hello.ipynb").write_text("{}")
    (workspace / "sentiment.ipynb").unlink()
    run = start_sh(MODE_TO_RUN="pod", JUPYTER_PASSWORD="s3cret-token", EXAMPLES_DIR=str(NOTEBOOKS))
    run.wait_for_jupyter()
    assert (workspace / "hello.ipynb").read_text() == "{}"
    assert not (workspace / "sentiment.ipynb").exists()
    assert "copied the example notebooks" not in run.log


def test_pod_keeps_model_downloads_in_the_workspace(start_sh, tmp_path):
    run = start_sh(MODE_TO_RUN="pod", JUPYTER_PASSWORD="s3cret-token")
    run.wait_for_jupyter()
    workspace = run.env["WORKSPACE_DIR"]
    assert f"export HF_HOME={workspace}/.cache/huggingface" in (tmp_path / "rp_environment").read_text()


def env_worker(app: Path) -> None:
    app.mkdir()
    (app / "handler.py").write_text("import os\nprint('HF_HOME=' + os.environ.get('HF_HOME', 'unset'))\n")


@pytest.mark.parametrize("volume", [True, False])
def test_endpoint_keeps_model_downloads_on_its_network_volume_when_mounted(start_sh, tmp_path, volume):
    env_worker(tmp_path / "app")
    if volume:
        (tmp_path / "no-volume").mkdir()  # VOLUME_DIR, now mounted
    run = start_sh(MODE_TO_RUN="serverless")
    assert run.proc.wait(60) == 0, run.log
    expected = f"{tmp_path / 'no-volume'}/.cache/huggingface" if volume else "unset"
    assert f"HF_HOME={expected}" in run.log


def test_hf_home_set_by_the_user_wins(start_sh, tmp_path):
    env_worker(tmp_path / "app")
    (tmp_path / "no-volume").mkdir()
    run = start_sh(MODE_TO_RUN="serverless", HF_HOME="/models")
    assert run.proc.wait(60) == 0, run.log
    assert "HF_HOME=/models" in run.log
