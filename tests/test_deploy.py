"""`kit deploy` against a local stand-in of RunPod's REST API that checks every request
against RunPod's published OpenAPI spec (tests/runpod_rest_standin.py).

These tests run on a host, not in a pod's container: the kit reads "the image" as every
distribution installed before the container's first process started, and here that is
imitated by saying the container started now (so the image holds all that is installed),
except in the test that installs requirements onto the volume.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from conftest import HELLO_CELLS, build_notebook
from runpod_rest_standin import RestStandIn

from kit import cli
from kit.deploy import plan, volume

KEY = "test-account-key-7Hq2"
POD = "pod-abc123"
GPU = "NVIDIA GeForce RTX 4090"

pytestmark = pytest.mark.process  # a local HTTP server


def pod_answer(mount: Path, **extra) -> dict:
    return {
        "id": POD,
        "name": "my pod",
        "image": "runpod/pytorch:1.0.3-cu1281-torch291-ubuntu2404",
        "desiredStatus": "RUNNING",
        "volumeMountPath": str(mount),
        "gpu": {"id": GPU, "count": 2, "displayName": "RTX 4090"},
        "machine": {"gpuTypeId": GPU, "dataCenterId": "EU-RO-1", "location": "RO"},
        "networkVolume": {"id": "vol-42", "name": "work", "size": 50, "dataCenterId": "EU-RO-1"},
        "env": {"HF_HOME": f"{mount}/.cache/huggingface", "JUPYTER_PASSWORD": "x"},
        **extra,
    }


@pytest.fixture
def api(tmp_path, monkeypatch):
    mount = tmp_path / "volume"
    mount.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.runpod/config.toml of the machine's user
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("RUNPOD_POD_ID", POD)
    for name in plan.WORKER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(volume, "image_started", lambda: time.time() + 60)  # see the module's docstring
    with RestStandIn(KEY) as standin:
        monkeypatch.setenv("RUNPOD_REST_URL", standin.url)
        standin.add_pod(pod_answer(mount))
        standin.mount = mount
        yield standin
        assert standin.invalid == [], "kit deploy sent requests the spec does not allow"
        assert standin.bad_answers == [], "the stand-in answered outside the spec"


@pytest.fixture
def notebook(tmp_path):
    return build_notebook(tmp_path / "hello world.ipynb", HELLO_CELLS)


def kit(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["deploy", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_way_a_creates_template_and_endpoint_on_the_pods_volume_then_updates_them(api, notebook, capsys):
    code, out, err = kit(capsys, notebook)
    assert code == 0, err
    assert api.changes() == [("POST", "/templates"), ("POST", "/endpoints")]
    # The pod was asked for the fields RunPod returns only on request.
    assert any(
        p.startswith(f"/pods/{POD}?") and "includeNetworkVolume=true" in p and "includeMachine=true" in p for _, p, _ in api.requests
    )
    [template] = api.templates.values()
    [endpoint] = api.endpoints.values()
    assert template["name"] == "hello-world" and template["isServerless"] is True
    assert template["imageName"] == "runpod/pytorch:1.0.3-cu1281-torch291-ubuntu2404"
    assert template["dockerStartCmd"] == plan.START_COMMAND
    env = template["env"]
    assert env["KIT_WORKER_DIR"].startswith("/runpod-volume/.kit/workers/hello-world/")
    assert env["HF_HOME"] == "/runpod-volume/.cache/huggingface"  # the pod's own cache folder, as workers see it
    on_pod = api.mount / env["KIT_WORKER_DIR"].removeprefix("/runpod-volume/")
    assert (on_pod / "handler.py").is_file() and (on_pod / "worker_loop.py").is_file()
    assert env["KIT_SITE_DIR"] == ""  # the image has every requirement (see the docstring)
    assert endpoint["templateId"] == template["id"] and endpoint["name"] == "hello-world"
    assert endpoint["gpuTypeIds"] == [GPU] and endpoint["gpuCount"] == 2  # the pod's
    assert endpoint["networkVolumeId"] == "vol-42" and endpoint["dataCenterIds"] == ["EU-RO-1"]
    url = f"https://api.runpod.ai/v2/{endpoint['id']}"
    for line in (f"{url}/run", f"{url}/runsync", f"{url}/health", "curl -X POST", "runpod.Endpoint(", "cold start"):
        assert line in out
    assert '-d \'{"input": {"name": "ada"}}\'' in out  # the notebook's test job in the curl line
    assert KEY not in out + err

    # An edit, then the same command: the same template and endpoint, updated; the workers roll.
    revision = env["KIT_DEPLOY_REVISION"]
    build_notebook(notebook, [*HELLO_CELLS[:2], ("handler", "def handler(job):\n    return {'v': 2}")])
    code, out, err = kit(capsys, notebook, "--json")
    assert code == 0, err
    assert api.changes()[2:] == [("PATCH", f"/templates/{template['id']}"), ("PATCH", f"/endpoints/{endpoint['id']}")]
    assert json.loads(out) == {"endpoint_id": endpoint["id"], "template_id": template["id"], "created": False, "url": url}
    assert len(api.templates) == 1 and len(api.endpoints) == 1
    assert api.templates[template["id"]]["env"]["KIT_DEPLOY_REVISION"] != revision
    assert api.endpoints[endpoint["id"]]["gpuCount"] == 2  # an update sends only what flags set


def test_way_b_image_sets_serverless_mode_registry_auth_and_no_start_command(api, notebook, capsys, monkeypatch):
    monkeypatch.delenv("RUNPOD_POD_ID")
    code, out, err = kit(capsys, notebook, "--image", "ghcr.io/me/worker:1", "--registry-auth", "cra-1", "--name", "w", "--json")
    assert code == 0, err
    [template] = api.templates.values()
    assert template["imageName"] == "ghcr.io/me/worker:1" and template["containerRegistryAuthId"] == "cra-1"
    assert template["env"]["MODE_TO_RUN"] == "serverless" and template["dockerStartCmd"] == []
    [endpoint] = api.endpoints.values()
    assert "networkVolumeId" not in endpoint
    assert json.loads(out)["created"] is True
    code, out, err = kit(capsys, notebook, "--image", "ghcr.io/me/worker:2", "--name", "w", "--json")
    assert code == 0 and json.loads(out)["created"] is False
    assert api.templates[template["id"]]["imageName"] == "ghcr.io/me/worker:2"


def test_every_flag_reaches_the_request_body(api, notebook, capsys):
    code, _, err = kit(
        capsys, notebook, "--name", "flags", "--gpu", "NVIDIA A40", "--gpu", "NVIDIA RTX A5000", "--gpu-count", "1",
        "--workers-min", "1", "--workers-max", "4", "--idle-timeout", "30", "--execution-timeout", "90",
        "--no-flashboot", "--env", "MODEL=org/name", "--env", "EMPTY=", "--container-disk", "20", "--min-cuda", "12.4",
    )  # fmt: skip
    assert code == 0, err
    body = next(b for m, p, b in api.requests if (m, p) == ("POST", "/endpoints"))
    assert body["gpuTypeIds"] == ["NVIDIA A40", "NVIDIA RTX A5000"] and body["gpuCount"] == 1
    assert (body["workersMin"], body["workersMax"], body["idleTimeout"], body["executionTimeoutMs"]) == (1, 4, 30, 90000)
    assert body["flashboot"] is False and body["minCudaVersion"] == "12.4"
    template = next(b for m, p, b in api.requests if (m, p) == ("POST", "/templates"))
    assert template["containerDiskInGb"] == 20 and template["env"]["MODEL"] == "org/name" and template["env"]["EMPTY"] == ""


def test_cpu_flavor_makes_a_cpu_endpoint(api, notebook, capsys):
    code, _, err = kit(capsys, notebook, "--cpu", "cpu3c", "--flashboot")
    assert code == 0, err
    body = next(b for m, p, b in api.requests if (m, p) == ("POST", "/endpoints"))
    assert body["computeType"] == "CPU" and body["cpuFlavorIds"] == ["cpu3c"] and "gpuTypeIds" not in body
    assert body["flashboot"] is True


def test_worker_settings_of_the_environment_are_carried_over(api, notebook, capsys, monkeypatch):
    monkeypatch.setenv("CONCURRENCY_MODIFIER", "4")
    monkeypatch.setenv("MAX_BATCH_SIZE", "16")
    assert kit(capsys, notebook)[0] == 0
    [template] = api.templates.values()
    assert template["env"]["CONCURRENCY_MODIFIER"] == "4" and template["env"]["MAX_BATCH_SIZE"] == "16"


def test_plan_prints_every_request_with_the_key_masked_and_changes_nothing(api, notebook, capsys):
    code, out, err = kit(capsys, notebook, "--plan")
    assert code == 0, err
    assert api.changes() == [] and api.templates == {} and api.endpoints == {}
    assert "POST /templates" in out and "POST /endpoints" in out and '"dockerStartCmd"' in out
    assert "Bearer <key from $RUNPOD_API_KEY>" in out and KEY not in out + err
    assert not (api.mount / ".kit").exists()  # nothing written on the volume either
    assert kit(capsys, notebook)[0] == 0
    code, out, _ = kit(capsys, notebook, "--plan", "--workers-max", "2")
    assert code == 0 and "PATCH /templates/" in out and "PATCH /endpoints/" in out and '"workersMax": 2' in out
    assert len(api.changes()) == 2


def test_a_refused_key_says_the_pods_own_key_may_not_manage_endpoints(api, notebook, capsys, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "pod-scoped-key-xyz")
    code, out, err = kit(capsys, notebook)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "401" in err and "pod-scoped" in err and "RUNPOD_API_KEY" in err
    assert "pod-scoped-key-xyz" not in err


def test_no_key_anywhere_is_one_line_and_the_sdk_config_file_is_read(api, notebook, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("RUNPOD_API_KEY")
    code, _, err = kit(capsys, notebook)
    assert code == 2 and err.count("\n") == 1 and "runpod config" in err
    config = tmp_path / "home" / ".runpod" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[default]\napi_key = "{KEY}"\n')  # the format runpod's set_credentials writes
    code, out, err = kit(capsys, notebook, "--plan")
    assert code == 0, err
    assert f"<key from {config}>" in out and KEY not in out


def test_a_400_ends_in_runpods_message(api, notebook, capsys):
    api.fail("POST", "/templates", 400, "imageName: invalid reference format")
    code, out, err = kit(capsys, notebook)
    assert code == 2 and err.count("\n") == 1
    assert "invalid reference format" in err and "400" in err
    assert api.templates == {}


def test_a_500_after_the_template_says_what_exists_and_a_rerun_finishes(api, notebook, capsys):
    api.fail("POST", "/endpoints", 500, "internal error")
    code, _, err = kit(capsys, notebook)
    assert code == 2 and err.count("\n") == 1
    [template_id] = api.templates
    assert f"({template_id}) was created but the endpoint was not created" in err and "again" in err
    code, _, err = kit(capsys, notebook)
    assert code == 0, err
    assert list(api.templates) == [template_id] and len(api.endpoints) == 1


def test_a_name_that_matches_two_templates_is_refused(api, notebook, capsys):
    first = api.add_template(name="twin", imageName="a", isServerless=True, env={})
    second = api.add_template(name="twin", imageName="b", isServerless=True, env={})
    code, _, err = kit(capsys, notebook, "--name", "twin")
    assert code == 2 and err.count("\n") == 1 and first in err and second in err and "--name" in err
    assert api.changes() == []
    assert not (api.mount / ".kit").exists()  # refused before anything was written on the volume


def test_a_pod_template_of_the_same_name_is_not_taken(api, notebook, capsys):
    api.add_template(name="hello-world", imageName="runpod/pytorch", isServerless=False, env={})
    assert kit(capsys, notebook)[0] == 0
    assert api.changes() == [("POST", "/templates"), ("POST", "/endpoints")]


def test_a_pod_without_a_network_volume_offers_way_b(api, notebook, capsys):
    pod = pod_answer(api.mount)
    del pod["networkVolume"]
    api.add_pod(pod)
    code, _, err = kit(capsys, notebook)
    assert code == 2 and err.count("\n") == 1 and "no network volume" in err and "--image" in err


def test_outside_a_pod_without_image_says_how(api, notebook, capsys, monkeypatch):
    monkeypatch.delenv("RUNPOD_POD_ID")
    code, _, err = kit(capsys, notebook)
    assert code == 2 and "RUNPOD_POD_ID" in err and "--image" in err


def test_connection_refused_is_one_line(api, notebook, capsys, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("RUNPOD_REST_URL", f"http://127.0.0.1:{port}/v1")
    code, _, err = kit(capsys, notebook)
    assert code == 2 and err.count("\n") == 1 and "cannot reach" in err and "RUNPOD_REST_URL" in err


def test_usage_mistakes_are_one_line(api, notebook, capsys):
    for args in (["--env", "NOEQUALS"], ["--name", "../x"], ["--gpu", "A", "--cpu", "cpu3c"], ["--workers-min", "3", "--workers-max", "1"]):
        code, _, err = kit(capsys, notebook, *args)
        assert code == 2 and err.count("\n") == 1, (args, err)
    assert api.requests == []


def test_an_unchanged_redeploy_keeps_the_revision_so_workers_do_not_roll(api, notebook, capsys):
    assert kit(capsys, notebook)[0] == 0
    [template] = api.templates.values()
    revision = template["env"]["KIT_DEPLOY_REVISION"]
    assert kit(capsys, notebook)[0] == 0
    assert api.templates[template["id"]]["env"]["KIT_DEPLOY_REVISION"] == revision


def test_a_redirect_is_not_followed_with_the_key(api, notebook, capsys, monkeypatch):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    class Redirect(Elsewhere):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_address[1]}/steal")
            self.end_headers()

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    redirect = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for server in (elsewhere, redirect):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        monkeypatch.setenv("RUNPOD_REST_URL", f"http://127.0.0.1:{redirect.server_address[1]}/v1")
        code, _, err = kit(capsys, notebook)
    finally:
        for server in (elsewhere, redirect):
            server.shutdown()
            server.server_close()
    assert code == 2 and err.count("\n") == 1 and "redirect" in err
    assert seen == []


def test_a_gpu_id_outside_the_spec_is_refused_with_the_apis_message(api, notebook, capsys):
    code, _, err = kit(capsys, notebook, "--gpu", "NVIDIA Imaginary 9000")
    assert code == 2 and err.count("\n") == 1
    assert "NVIDIA Imaginary 9000" in err and "is not one of" in err  # the spec's enum, as the stand-in reports it
    assert "template hello-world" in err and "endpoint was not created" in err
    assert len(api.invalid) == 1 and "gpuTypeIds" in api.invalid[0]
    api.invalid.clear()  # expected here: the request the user asked for breaks the spec


def test_plan_as_json_lists_the_requests_without_the_key(api, notebook, capsys):
    code, out, err = kit(capsys, notebook, "--plan", "--json")
    assert code == 0, err
    requests = json.loads(out)["requests"]
    assert [(r["method"], r["path"]) for r in requests] == [("POST", "/templates"), ("POST", "/endpoints")]
    assert all(r["authorization"] == "Bearer <key from $RUNPOD_API_KEY>" for r in requests) and KEY not in out + err


def test_a_worker_directory_deploys_like_its_notebook(api, notebook, capsys, tmp_path):
    from kit.export.export import export_notebook

    worker = export_notebook(notebook, tmp_path / "my worker").out_dir
    code, _, err = kit(capsys, worker)
    assert code == 0, err
    [template] = api.templates.values()
    assert template["name"] == "my-worker"
    assert (api.mount / template["env"]["KIT_WORKER_DIR"].removeprefix("/runpod-volume/") / "handler.py").is_file()
