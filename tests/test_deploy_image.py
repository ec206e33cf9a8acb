"""Way A end to end with podman: `kit deploy` runs in a pod container (the image, a folder
mounted at the pod's volume mount path, the stand-in REST API), then a worker container is
started as RunPod would start the endpoint's worker from what the template says (its image,
its start command, its env, the same folder at /runpod-volume) and serves 100 jobs from
`kit serve`'s queue emulator.

Twice: on the kit's own image (hello.ipynb baked in, the SDK in the image), and on the stand-in
base image (`localhost/kit-base:bookworm`, a stock PyTorch-like image without the kit or the SDK),
where the pod side `pip install`s the kit after the container started, as a user of a stock
RunPod pod would, so the SDK and its needs go onto the volume and only the start command runs
the worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, ROOT
from runpod_rest_standin import RestStandIn
from test_image import image_sh, podman, podman_or_skip

from kit.serve.emulator import QueueEmulator

KEY = "image-test-account-key"
POD = "pod-image-test"
BASE = "localhost/kit-base:bookworm"
KIT_IMAGE = "localhost/kit-deploy-hello:latest"
JOBS = 100


def host_pip_settings() -> tuple[list[str], list[str]]:
    """The host's pip settings as PIP_* env and read-only mounts, so pip in the pod container reaches
    the same package index the host's does (docker/image.sh does the same for builds)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    env, mounts = [], []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.split(".", 1)[-1]
        value = value.strip("'")
        env.append(f"--env=PIP_{name.upper().replace('-', '_')}={value}")
        for word in value.split():
            path = Path(word.removeprefix("file://"))
            if path.is_absolute() and path.exists():
                mounts.append(f"--volume={path}:{path}:ro")
                if name.endswith("index-url"):
                    mounts.append(f"--volume={path.parent}:{path.parent}:ro")
    return env, sorted(set(mounts))


def kit_wheel(tmp_path: Path) -> Path:
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)], check=True, timeout=600)
    return next(out.glob("*.whl"))


@pytest.fixture(scope="module")
def kit_image():
    podman_or_skip()
    image_sh("build", KIT_IMAGE, "NOTEBOOK=notebooks/hello.ipynb")
    return KIT_IMAGE


@pytest.mark.image
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("which", ["kit image", "stock base without the kit"])
def test_way_a_worker_runs_from_the_volume_with_the_templates_start_command(which, tmp_path, request):
    podman_or_skip()
    image = request.getfixturevalue("kit_image") if which == "kit image" else BASE
    volume = tmp_path / "volume"
    volume.mkdir()
    with RestStandIn(KEY) as api:
        api.add_pod(
            {
                "id": POD,
                "image": image,
                "volumeMountPath": "/workspace",
                "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
                "networkVolume": {"id": "vol-1", "name": "v", "size": 10, "dataCenterId": "EU-RO-1"},
                "env": {"HF_HOME": "/workspace/.cache/huggingface"},
            }
        )
        # The pod side: kit deploy inside a container of the image, the folder as its network volume.
        setup = "kit deploy /nb/hello.ipynb --json"
        args = ["--rm", "--network=host", f"--volume={volume}:/workspace", f"--volume={NOTEBOOKS}:/nb:ro"]
        if which != "kit image":
            wheel = kit_wheel(tmp_path)
            pip_env, pip_mounts = host_pip_settings()
            args += [f"--volume={wheel.parent}:/wheel:ro", *pip_env, *pip_mounts]
            setup = f"python -m pip install --quiet /wheel/{wheel.name} && {setup}"
        env = [f"--env=RUNPOD_API_KEY={KEY}", f"--env=RUNPOD_REST_URL={api.url}", f"--env=RUNPOD_POD_ID={POD}"]
        pod = podman("run", *args, *env, image, "bash", "-c", setup, timeout=900, check=False)
        assert pod.returncode == 0, pod.stdout[-3000:] + pod.stderr[-3000:]
        assert json.loads(pod.stdout.strip().splitlines()[-1])["created"] is True
        assert api.invalid == [] and api.bad_answers == []
        [template] = api.templates.values()
        [endpoint] = api.endpoints.values()
    assert template["imageName"] == image and endpoint["networkVolumeId"] == "vol-1"
    site = template["env"]["KIT_SITE_DIR"]
    if which == "kit image":
        assert site == ""  # the image has the SDK: nothing to install
    else:
        assert site.startswith("/runpod-volume/.kit/site/")
        assert (volume / site.removeprefix("/runpod-volume/") / "runpod").is_dir()

    # The endpoint side: the template's image, start command and env, the volume at /runpod-volume.
    name = f"kit-deploy-test-{tmp_path.name[-8:]}".replace("_", "-")
    with QueueEmulator(host="127.0.0.1", port=0) as emu:
        worker_env = {**template["env"], **emu.worker_env("deploy-worker-1")}
        env_args = [f"--env={k}={v}" for k, v in worker_env.items()]
        podman(
            "run",
            "--detach",
            "--name",
            name,
            "--network=host",
            f"--volume={volume}:/runpod-volume",
            *env_args,
            image,
            *template["dockerStartCmd"],
        )
        try:
            ids = [emu.submit({"input": {"name": f"user-{i}"}}) for i in range(JOBS)]
            states = [emu.wait(job_id, timeout=300) for job_id in ids]
            logs = podman("logs", name, check=False)
            failed = [
                (i, s)
                for i, s in enumerate(states)
                if s["status"] != "COMPLETED" or s.get("output") != {"greeting": "Hello", "name": f"user-{i}"}
            ]
            assert not failed, (failed[:3], (logs.stdout + logs.stderr)[-3000:])
            assert emu.counters.completed == JOBS and emu.counters.failed == 0
        finally:
            podman("rm", "--force", "--time", "0", name, check=False)
