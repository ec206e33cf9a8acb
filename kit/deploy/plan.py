"""What `kit deploy` creates or updates: pure functions from the flags, the pod and the API's lists.

Nothing here sends a request or touches a file, so every rule (names, the
start command, which settings an update sends, the pod's defaults) is
testable with plain dictionaries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kit.errors import KitError

# Where serverless workers mount an endpoint's network volume (RunPod's rule).
ENDPOINT_VOLUME = "/runpod-volume"
# The kit's folder on the network volume: exported workers and their requirements.
KIT_FOLDER = ".kit"
REVISION_ENV = "KIT_DEPLOY_REVISION"  # a new value in the template rolls the endpoint's workers
# What the start command reads: kept in the template's env so the command itself never changes.
WORKER_DIR_ENV = "KIT_WORKER_DIR"
SITE_DIR_ENV = "KIT_SITE_DIR"
PYTHON_ENV = "KIT_PYTHON"
# The worker's own settings, carried over from the environment `kit deploy` runs in when set there.
WORKER_SETTINGS = ("CONCURRENCY_MODIFIER", "MAX_BATCH_SIZE", "MAX_BATCH_WAIT_MS", "KIT_WORKER_LOOP")
# Model caches a notebook's libraries read: each one the pod sets under its volume is shared with the workers.
CACHE_ENV = ("HF_HOME", "HF_HUB_CACHE", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME", "TORCH_HOME", "XDG_CACHE_HOME")

# The template's start command (way A): the image's own command is replaced, so any image with
# a Python that has the SDK's needs (the kit's, a stock RunPod PyTorch image) runs the worker
# kept on the volume, with the requirements installed there put first on its path.
START_SCRIPT = (
    'cd "$KIT_WORKER_DIR" || { echo "kit deploy: $KIT_WORKER_DIR is not on the network volume: run kit deploy again" >&2; exit 1; }; '
    'if [ -n "${KIT_SITE_DIR:-}" ]; then export PYTHONPATH="$KIT_SITE_DIR${PYTHONPATH:+:$PYTHONPATH}"; fi; '
    'exec "${KIT_PYTHON:-python}" -u handler.py'
)
START_COMMAND = ["bash", "-c", START_SCRIPT]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def default_name(stem: str) -> str:
    """A notebook's or worker directory's stem as an endpoint name: other characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:63]
    return name or "worker"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KitError(
            f"--name {name!r} is not a usable name", "use letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Settings:
    """The endpoint's settings as flags gave them; None means RunPod's default (or, on an update, unchanged)."""

    name: str
    image: str | None = None
    registry_auth: str | None = None
    gpus: tuple[str, ...] = ()
    gpu_count: int | None = None
    cpus: tuple[str, ...] = ()
    workers_min: int | None = None
    workers_max: int | None = None
    idle_timeout: int | None = None
    execution_timeout: float | None = None  # seconds
    flashboot: bool | None = None
    env: dict[str, str] = field(default_factory=dict)
    container_disk: int | None = None
    min_cuda: str | None = None


def parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise KitError(f"--env {item!r} is not KEY=VALUE", "give e.g. --env MODEL_ID=org/name (repeatable)")
        env[key] = value
    return env


@dataclass(frozen=True)
class Pod:
    """What way A needs of the pod `kit deploy` runs in (GET /pods/{podId} with its volume and machine)."""

    id: str
    image: str
    volume_id: str
    data_center: str
    mount_path: str
    gpu_type: str | None
    gpu_count: int | None
    cpu_flavor: str | None
    env: dict[str, str]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _object(answer: dict[str, Any], name: str) -> dict[str, Any]:
    value = answer.get(name)
    return value if isinstance(value, dict) else {}


def pod_from_answer(pod_id: str, answer: Any) -> Pod:
    """The pod's facts from the API's answer; a pod without a network volume is a one-line error offering way B."""
    if not isinstance(answer, dict):
        raise KitError(f"GET /pods/{pod_id}: RunPod's answer is not a pod", "run the command again; if it persists, use --image REF")
    volume, machine, gpu = (_object(answer, name) for name in ("networkVolume", "machine", "gpu"))
    volume_id = _text(volume.get("id")) or _text(answer.get("networkVolumeId"))
    if not volume_id:
        raise KitError(
            f"pod {pod_id} has no network volume, so an endpoint cannot share its files",
            "attach a network volume to the pod (RunPod console > Storage) and deploy from it, or build and push an image "
            "and run kit deploy --image REF",
        )
    data_center = _text(volume.get("dataCenterId")) or _text(machine.get("dataCenterId"))
    image = _text(answer.get("image")) or _text(answer.get("imageName"))
    if not data_center or not image:
        missing = "its data center" if not data_center else "its image"
        raise KitError(f"GET /pods/{pod_id}: RunPod's answer does not name {missing}", "use --image REF instead")
    count = gpu.get("count") if isinstance(gpu.get("count"), int) else machine.get("minPodGpuCount")
    env = _object(answer, "env")
    return Pod(
        id=pod_id,
        image=image,
        volume_id=volume_id,
        data_center=data_center,
        mount_path=_text(answer.get("volumeMountPath")) or "/workspace",
        gpu_type=_text(gpu.get("id")) or _text(machine.get("gpuTypeId")),
        gpu_count=count if isinstance(count, int) and count > 0 else None,
        cpu_flavor=_text(answer.get("cpuFlavorId")),
        env={str(k): str(v) for k, v in env.items() if isinstance(v, (str, int, float))},
    )


def on_endpoint(pod_path: str, mount_path: str) -> str | None:
    """A path under the pod's volume mount as endpoint workers see it (under /runpod-volume); None when not on the volume."""
    mount = mount_path.rstrip("/") or "/"
    path = pod_path.rstrip("/")
    if path == mount:
        return ENDPOINT_VOLUME
    if mount != "/" and path.startswith(mount + "/"):
        return ENDPOINT_VOLUME + path[len(mount) :]
    return None


def cache_env(pod_env: dict[str, str], mount_path: str) -> tuple[dict[str, str], list[str]]:
    """The model caches the workers share with the pod, and a note for each that cannot be shared.

    A cache the pod keeps on the volume is the same folder for the workers; HF_HOME is set
    on the volume in any case, so what a worker downloads is kept for the next cold start.
    """
    env: dict[str, str] = {}
    notes: list[str] = []
    for name in CACHE_ENV:
        value = pod_env.get(name)
        if not value:
            continue
        shared = on_endpoint(value, mount_path)
        if shared:
            env[name] = shared
        else:
            notes.append(f"{name}={value} is not on the network volume ({mount_path}): workers cannot reuse what the pod downloaded there")
    env.setdefault("HF_HOME", f"{ENDPOINT_VOLUME}/.cache/huggingface")
    return env, notes


@dataclass(frozen=True)
class Volume:
    """Where way A put the worker and its requirements, as the pod and the endpoint see them."""

    worker_dir: str  # on the pod
    site_dir: str | None  # on the pod; None when the image has every requirement
    python: str  # the interpreter that runs the worker (the pod's, the same image's)
    revision: str


def template_env(
    settings: Settings, worker_env: dict[str, str], *, pod: Pod | None, volume: Volume | None, revision: str
) -> dict[str, str]:
    """The template's env: the worker's settings, the way's own, then --env (which wins)."""
    env = {"MODE_TO_RUN": "serverless", REVISION_ENV: revision}
    env.update({k: v for k, v in worker_env.items() if k in WORKER_SETTINGS and v})
    if pod is not None and volume is not None:
        caches, _ = cache_env(pod.env, pod.mount_path)
        env.update(caches)
        env[WORKER_DIR_ENV] = _must_be_on_volume(volume.worker_dir, pod.mount_path)
        env[SITE_DIR_ENV] = _must_be_on_volume(volume.site_dir, pod.mount_path) if volume.site_dir else ""
        env[PYTHON_ENV] = on_endpoint(volume.python, pod.mount_path) or volume.python
    env.update(settings.env)
    return env


def _must_be_on_volume(path: str, mount_path: str) -> str:
    shared = on_endpoint(path, mount_path)
    if shared is None:  # the kit chose these paths under the mount: a bug if not
        raise AssertionError(f"{path} is not under {mount_path}")
    return shared


def template_body(settings: Settings, image: str, env: dict[str, str], *, start_command: list[str], create: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "imageName": image,
        "env": env,
        "dockerStartCmd": start_command,  # [] (way B): the image's own command
        "containerDiskInGb": (settings.container_disk or 50) if create else settings.container_disk,
        "volumeInGb": 0,  # a serverless template has no pod volume
        "ports": [],
    }
    if body["containerDiskInGb"] is None:
        del body["containerDiskInGb"]
    if settings.registry_auth:
        body["containerRegistryAuthId"] = settings.registry_auth
    if create:
        body = {"name": settings.name, "isServerless": True, "category": "CPU" if settings.cpus else "NVIDIA", **body}
    return body


def endpoint_body(settings: Settings, template_id: str, *, pod: Pod | None, create: bool) -> dict[str, Any]:
    """POST /endpoints (create) or PATCH /endpoints/{id}: on an update, only what a flag (or the pod's volume) sets."""
    body: dict[str, Any] = {"templateId": template_id}
    if create:
        body["name"] = settings.name
    if settings.cpus:
        if create:
            body["computeType"] = "CPU"
        body["cpuFlavorIds"] = list(settings.cpus)
    else:
        gpus = list(settings.gpus) or ([pod.gpu_type] if create and pod and pod.gpu_type else [])
        count = settings.gpu_count or (pod.gpu_count if create and pod else None)
        if create and pod and pod.cpu_flavor and not pod.gpu_type and not settings.gpus:
            body["computeType"] = "CPU"
            body["cpuFlavorIds"] = [pod.cpu_flavor]
        else:
            if create:
                body["computeType"] = "GPU"
            if gpus:
                body["gpuTypeIds"] = gpus
            if count:
                body["gpuCount"] = count
    if pod is not None:  # a network volume is usable only in its data center
        body["networkVolumeId"] = pod.volume_id
        body["dataCenterIds"] = [pod.data_center]
    optional = {
        "workersMin": settings.workers_min,
        "workersMax": settings.workers_max,
        "idleTimeout": settings.idle_timeout,
        "executionTimeoutMs": None if settings.execution_timeout is None else int(settings.execution_timeout * 1000),
        "flashboot": settings.flashboot,
        "minCudaVersion": settings.min_cuda,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def find_by_name(items: Any, name: str, what: str, *, serverless: bool = False) -> dict[str, Any] | None:
    """The one item named `name` in a list answer; several is an error naming their ids."""
    if not isinstance(items, list):
        raise KitError(f"RunPod's list of {what}s is not a list", "run the command again")
    found = [i for i in items if isinstance(i, dict) and i.get("name") == name and isinstance(i.get("id"), str)]
    if serverless:
        found = [i for i in found if i.get("isServerless") is not False]
    if len(found) > 1:
        ids = ", ".join(sorted(i["id"] for i in found))
        raise KitError(
            f"{len(found)} {what}s are named {name!r} ({ids}): kit deploy cannot tell which one it made",
            f"give another --name, or delete or rename the extra {what}s in the RunPod console",
        )
    return found[0] if found else None


def endpoint_of_template(endpoints: Any, template_id: str, name: str) -> dict[str, Any] | None:
    """The endpoint on our template (one serverless template serves one endpoint), else the one with our name."""
    if not isinstance(endpoints, list):
        raise KitError("RunPod's list of endpoints is not a list", "run the command again")
    bound = [e for e in endpoints if isinstance(e, dict) and e.get("templateId") == template_id and isinstance(e.get("id"), str)]
    if bound:
        return bound[0]
    return find_by_name(endpoints, name, "endpoint")
