"""`kit deploy`: the steps, from a notebook or worker directory to a RunPod endpoint.

Way A (default in a pod, `RUNPOD_POD_ID` set): the pod's image, the worker and its
requirements on the pod's network volume, a start command that runs them from
/runpod-volume. Way B (`--image REF`): an image the user built and pushed.
Both find their template and endpoint by name, so a second run updates them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit import workerdir
from kit.deploy import plan, volume
from kit.deploy.api import ApiError, ApiKey, Client, Request, base_url, find_key, path
from kit.errors import KitEnvironmentError, KitError

if TYPE_CHECKING:
    from kit.export.export import ExportResult

POD_ENV = "RUNPOD_POD_ID"
ENDPOINT_URL = "https://api.runpod.ai/v2/{}"
NEW_TEMPLATE = "<id of the template created above>"


@dataclass(frozen=True)
class Outcome:
    endpoint_id: str
    template_id: str
    created: bool  # the endpoint is new (False: an existing one was updated)

    @property
    def url(self) -> str:
        return ENDPOINT_URL.format(self.endpoint_id)

    def to_json(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "template_id": self.template_id, "created": self.created, "url": self.url}


@dataclass(frozen=True)
class Source:
    """What the template runs: an image, its start command, its env and what was placed on the volume."""

    image: str
    start_command: list[str]
    env: dict[str, str]
    pod: plan.Pod | None
    notes: list[str]
    example: dict[str, Any] | None = None  # the worker's test job, for the curl line


def deploy(
    target: str | Path,
    settings: plan.Settings,
    *,
    plan_only: bool = False,
    as_json: bool = False,
    environ: Mapping[str, str] | None = None,
    out: Callable[[str], None] = print,
) -> int:
    env = dict(os.environ if environ is None else environ)
    say = (lambda text: print(text, file=sys.stderr)) if as_json else out
    key = find_key(env)
    client = Client(key, base_url(env))
    started = time.monotonic()
    if not Path(target).exists():
        raise KitError(f"{target}: no such notebook or worker directory", "give the .ipynb file or the folder kit export wrote")
    # The look-ups first: a name that is ambiguous fails before anything is written on the volume.
    templates = client.get(path("/templates", includeEndpointBoundTemplates=True))
    template = plan.find_by_name(templates, settings.name, "template", serverless=True)
    endpoints = client.get(path("/endpoints"))
    endpoint = (
        plan.endpoint_of_template(endpoints, template["id"], settings.name)
        if template
        else plan.find_by_name(endpoints, settings.name, "endpoint")
    )

    source = _source(client, target, settings, env, plan_only=plan_only, say=say)
    for note in source.notes:
        say(f"note: {note}")

    body = plan.template_body(settings, source.image, source.env, start_command=source.start_command, create=template is None)
    template_request = (
        Request("POST", "/templates", body) if template is None else Request("PATCH", path("/templates/{}", template["id"]), body)
    )
    if plan_only:
        template_id = NEW_TEMPLATE if template is None else template["id"]
        requests = [template_request, _endpoint_request(settings, template_id, source.pod, endpoint)]
        _print_plan(requests, key, as_json=as_json, out=out)
        return 0

    template_id = _id(client.send(template_request), template_request)
    template_done = f"template {settings.name} ({template_id}) was {'created' if template is None else 'updated'}"
    endpoint_request = _endpoint_request(settings, template_id, source.pod, endpoint)
    try:
        endpoint_id = _id(client.send(endpoint_request), endpoint_request)
    except ApiError as error:
        state = f"{template_done} but the endpoint was not {'created' if endpoint is None else 'updated'}"
        raise ApiError(error.message, f"{error.hint}; {state}: run the same kit deploy again to finish", status=error.status) from None
    outcome = Outcome(endpoint_id, template_id, created=endpoint is None)
    if as_json:
        out(json.dumps(outcome.to_json()))
    else:
        _print_outcome(outcome, settings, source.example, time.monotonic() - started, out)
    return 0


def _endpoint_request(settings: plan.Settings, template_id: str, pod: plan.Pod | None, endpoint: dict[str, Any] | None) -> Request:
    body = plan.endpoint_body(settings, template_id, pod=pod, create=endpoint is None)
    return Request("POST", "/endpoints", body) if endpoint is None else Request("PATCH", path("/endpoints/{}", endpoint["id"]), body)


def _id(answer: Any, request: Request) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("id"), str) and answer["id"]:
        return answer["id"]
    raise ApiError(f"{request.method} {request.path}: RunPod's answer has no id", "check the RunPod console, then run kit deploy again")


def _source(
    client: Client, target: str | Path, settings: plan.Settings, env: dict[str, str], *, plan_only: bool, say: Callable[[str], None]
) -> Source:
    if settings.image:  # way B
        revision = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())  # a re-pushed tag rolls the workers too
        example = workerdir.example_job(target) if Path(target).is_dir() else None
        return Source(settings.image, [], plan.template_env(settings, env, pod=None, volume=None, revision=revision), None, [], example)
    pod_id = env.get(POD_ENV, "").strip()
    if not pod_id:
        raise KitError(
            f"{POD_ENV} is not set, so this is not a RunPod pod to deploy from",
            "run kit deploy in a pod that has a network volume, or build and push an image and give --image REF",
        )
    pod = plan.pod_from_answer(pod_id, client.get(path("/pods/{}", pod_id, includeNetworkVolume=True, includeMachine=True)))
    if not Path(pod.mount_path).is_dir():
        raise KitEnvironmentError(
            f"the pod's network volume should be mounted at {pod.mount_path}, which is not a directory here",
            "run kit deploy inside the pod (its RUNPOD_POD_ID names the pod the files go to)",
        )
    placed, example = _place_on_volume(target, settings.name, pod, plan_only=plan_only, say=say)
    _, notes = plan.cache_env(pod.env, pod.mount_path)
    return Source(
        pod.image,
        plan.START_COMMAND,
        plan.template_env(settings, env, pod=pod, volume=placed, revision=placed.revision),
        pod,
        notes,
        example,
    )


def _place_on_volume(
    target: str | Path, name: str, pod: plan.Pod, *, plan_only: bool, say: Callable[[str], None]
) -> tuple[plan.Volume, dict[str, Any] | None]:
    from kit.export.export import worker_dir

    def warn(result: ExportResult) -> None:
        for warning in result.warnings:
            say(f"warning: {warning}")

    verb = "would put" if plan_only else "put"
    with worker_dir(target, on_export=warn) as folder:
        requirements = (folder / workerdir.REQUIREMENTS).read_text(encoding="utf-8") if (folder / workerdir.REQUIREMENTS).is_file() else ""
        pins = volume.resolve(requirements, image_time=volume.image_started())
        placed, revision = volume.place_worker(folder, name, pod.mount_path, dry_run=plan_only)
        example = workerdir.example_job(folder)
    say(f"{verb} the worker on the network volume: {placed} (revision {revision})")
    install = volume.install_requirements(pins, pod.mount_path, dry_run=plan_only, say=say)
    missing = [p for p in pins if not p.in_image]
    if install.site_dir is None:
        say(f"requirements: the image has all {len(pins)} distributions the worker needs")
    elif install.installed:
        biggest = ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in volume.largest(install.site_dir))
        say(
            f"requirements: installed {len(missing)} distributions ({install.size / 1e6:.1f} MB; largest {biggest}) in {install.seconds:.1f} s"
        )
    else:
        state = "would install" if plan_only and not (install.site_dir / ".complete").is_file() else "already installed"
        say(f"requirements: {state} {len(missing)} distributions in {install.site_dir}")
    site = install.site_dir.name if install.site_dir else "image"
    return plan.Volume(str(placed), str(install.site_dir) if install.site_dir else None, sys.executable, f"{revision}-{site}"), example


def _print_plan(requests: list[Request], key: ApiKey, *, as_json: bool, out: Callable[[str], None]) -> None:
    if as_json:
        masked = [
            {"method": r.method, "path": r.path, "authorization": f"Bearer <key from {key.source}>", "body": r.body} for r in requests
        ]
        out(json.dumps({"requests": masked}, indent=2))
        return
    out("--plan: the requests kit deploy would send (nothing that changes anything was sent):")
    for request in requests:
        out(request.describe(key))


def _print_outcome(
    outcome: Outcome, settings: plan.Settings, example: dict[str, Any] | None, seconds: float, out: Callable[[str], None]
) -> None:
    import shlex

    request = example if example is not None else {"input": {}}
    job = json.dumps(request)
    verb = "created" if outcome.created else "updated"
    idle = settings.idle_timeout or 5
    warm = settings.workers_min or 0
    out(f"endpoint {settings.name} {verb}: {outcome.endpoint_id} (template {outcome.template_id}) in {seconds:.1f} s")
    out(f"  run:     {outcome.url}/run")
    out(f"  runsync: {outcome.url}/runsync")
    out(f"  health:  {outcome.url}/health")
    out("call it (curl, then Python):")
    out(
        f'  curl -X POST {outcome.url}/runsync -H "Authorization: Bearer $RUNPOD_API_KEY" '
        f"-H 'Content-Type: application/json' -d {shlex.quote(job)}"
    )
    out("  # Python, the runpod SDK (its key: RUNPOD_API_KEY or `runpod config`)")
    out("  import runpod")
    out(f'  print(runpod.Endpoint("{outcome.endpoint_id}").run_sync({request!r}, timeout=600))')
    if warm:
        out(f"cold starts: {warm} worker(s) kept warm (workersMin); a request beyond them waits for a cold worker.")
    else:
        out(
            "cold starts: no worker is kept warm (workersMin 0), so the first request, and the first after "
            f"{idle} s idle, waits for a worker to start: from seconds (image cached on the machine) to several "
            "minutes (a multi-GB image pulled on a new machine), plus the worker's setup. RunPod marks a worker "
            "still starting after 7 minutes unhealthy."
        )
    if not outcome.created:
        out("workers roll onto the new template as they finish their jobs.")
