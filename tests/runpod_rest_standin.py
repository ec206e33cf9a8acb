"""A local stand-in for RunPod's REST API v1, for `kit deploy`'s tests (no account, no internet).

It keeps templates, endpoints and pods in memory and checks every request against RunPod's
published OpenAPI spec (tests/data/runpod-rest-v1.openapi.json, see tests/data/SOURCE.md) with
jsonschema: the path and method must be in the spec, each query parameter declared for it
and of its type, the JSON body valid against the operation's request schema. One rule is
stricter than the schema text: an object may carry only the properties its schema lists (the
spec leaves `additionalProperties` open, and a misspelt field would otherwise pass unseen).
A request that breaks the contract is answered 400 and recorded in `.invalid`; every answer
the stand-in gives is checked against the response schema of its status, and a mismatch (a
bug of the stand-in) is recorded in `.bad_answers`. Tests assert both stay empty.

The behaviour beyond the schemas is RunPod's documented rules: GET /templates lists templates
bound to an endpoint only with includeEndpointBoundTemplates=true; GET /pods/{podId} returns
the pod's networkVolume and machine only when asked for (includeNetworkVolume, includeMachine);
a serverless template serves one endpoint; a network volume is usable only in its data center.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema

SPEC_PATH = Path(__file__).parent / "data" / "runpod-rest-v1.openapi.json"


def _openapi_to_jsonschema(node: Any, *, strict: bool) -> Any:
    """OpenAPI 3.0's schema dialect as JSON Schema draft 4: `nullable` becomes a null alternative."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n, strict=strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v, strict=strict) for k, v in node.items() if k not in ("nullable", "example", "default")}
    if strict and isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


class Spec:
    """The operations of the spec and validators for their bodies, parameters and answers."""

    def __init__(self, path: Path = SPEC_PATH):
        self.raw = json.loads(path.read_text())
        self.routes: list[tuple[re.Pattern[str], str, dict[str, Any]]] = []
        for template, operations in self.raw["paths"].items():
            pattern = re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
            for method, operation in operations.items():
                if method in ("get", "post", "patch", "put", "delete"):
                    self.routes.append((pattern, method.upper(), operation))
        self._components = {
            True: _openapi_to_jsonschema(self.raw["components"], strict=True),
            False: _openapi_to_jsonschema(self.raw["components"], strict=False),
        }

    def match(self, method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]] | None:
        for pattern, op_method, operation in self.routes:
            found = pattern.match(path)
            if found and op_method == method:
                return pattern.pattern, operation, found.groupdict()
        return None

    def errors(self, schema: dict[str, Any], value: Any, *, strict: bool) -> list[str]:
        root = {**_openapi_to_jsonschema(schema, strict=strict), "components": self._components[strict]}
        validator = jsonschema.Draft4Validator(root)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in validator.iter_errors(value)]


class RestStandIn:
    """ThreadingHTTPServer on 127.0.0.1, a free port; `with RestStandIn(key) as api: api.url`."""

    def __init__(self, api_key: str = "test-account-key", spec: Spec | None = None):
        self.api_key = api_key
        self.spec = spec or Spec()
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path with query, body)
        self.invalid: list[str] = []
        self.bad_answers: list[str] = []
        self._faults: list[tuple[str, str, int, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # --- the test's side ---------------------------------------------------

    def add_pod(self, pod: dict[str, Any]) -> None:
        self.pods[pod["id"]] = pod

    def add_template(self, **fields: Any) -> str:
        template_id = fields.pop("id", None) or self._new_id()
        self.templates[template_id] = {"id": template_id, "isPublic": False, "isRunpod": False, "readme": "", **fields}
        return template_id

    def fail(self, method: str, path_regex: str, status: int, message: str) -> None:
        """The next request matching answers `status` with RunPod's error shape, {"error": message}."""
        self._faults.append((method, path_regex, status, message))

    def changes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.requests if m != "GET"]

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> RestStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, answer = standin.handle(self.command, self.path, dict(self.headers), raw)
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the API's side ----------------------------------------------------

    @staticmethod
    def _new_id() -> str:
        return secrets.token_hex(5)

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        with self._lock:
            split = urlsplit(target)
            path = split.path.removeprefix("/v1")
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._invalid(f"{method} {path}: the body is not JSON")
            self.requests.append((method, path + (f"?{split.query}" if split.query else ""), body))
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                return 401, {"error": "invalid api key"}
            matched = self.spec.match(method, path)
            if matched is None:
                return self._invalid(f"{method} {path}: not an operation of the spec", status=404)
            _, operation, params = matched
            problem = self._check_request(operation, split.query, body, headers)
            if problem:
                return self._invalid(f"{method} {path}: {problem}")
            for i, (f_method, f_path, f_status, f_message) in enumerate(self._faults):
                if f_method == method and re.fullmatch(f_path, path):
                    del self._faults[i]
                    return f_status, {"error": f_message}
            query = {k: v == "true" for k, v in parse_qsl(split.query)}
            status, answer = self._route(method, path, params, query, body)
            self._check_answer(operation, method, path, status, answer)
            return status, answer

    def _invalid(self, message: str, status: int = 400) -> tuple[int, Any]:
        self.invalid.append(message)
        return status, {"error": message}

    def _check_request(self, operation: dict[str, Any], query: str, body: Any, headers: dict[str, str]) -> str | None:
        declared = {p["name"]: p for p in operation.get("parameters", []) if p.get("in") == "query"}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in declared:
                return f"query parameter {name!r} is not in the spec"
            schema = declared[name].get("schema", {})
            typed: Any = value
            if schema.get("type") == "boolean":
                if value not in ("true", "false"):
                    return f"query parameter {name}={value!r} is not a boolean"
                typed = value == "true"
            errors = self.spec.errors(schema, typed, strict=True)
            if errors:
                return f"query parameter {name}: {errors[0]}"
        request_body = operation.get("requestBody")
        if request_body is None:
            return "this operation takes no body" if body is not None else None
        if body is None:
            return "the body is missing" if request_body.get("required") else None
        if "application/json" not in headers.get("Content-Type", ""):
            return "the body is not sent as application/json"
        errors = self.spec.errors(request_body["content"]["application/json"]["schema"], body, strict=True)
        return "; ".join(errors[:3]) if errors else None

    def _check_answer(self, operation: dict[str, Any], method: str, path: str, status: int, answer: Any) -> None:
        response = operation.get("responses", {}).get(str(status))
        if response is None:
            self.bad_answers.append(f"{method} {path}: status {status} is not in the spec")
            return
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            errors = self.spec.errors(schema, answer, strict=False)
            if errors:
                self.bad_answers.append(f"{method} {path}: {errors[:3]}")

    def _route(self, method: str, path: str, params: dict[str, str], query: dict[str, bool], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        kind = parts[0]
        if kind == "pods" and method == "GET" and len(parts) == 2:
            return self._get_pod(params["podId"], query)
        if kind == "templates":
            if len(parts) == 1:
                return (200, self._create_template(body)) if method == "POST" else (200, self._list_templates(query))
            template = self.templates.get(params["templateId"])
            if template is None:
                return 404, {"error": "template not found"}
            if method == "GET":
                return 200, copy.deepcopy(template)
            template.update(copy.deepcopy(body))
            return 200, copy.deepcopy(template)
        if kind == "endpoints":
            if len(parts) == 1:
                return (
                    self._create_endpoint(body)
                    if method == "POST"
                    else (200, [self._endpoint_answer(e, query) for e in self.endpoints.values()])
                )
            endpoint = self.endpoints.get(params["endpointId"])
            if endpoint is None:
                return 404, {"error": "endpoint not found"}
            if method == "GET":
                return 200, self._endpoint_answer(endpoint, query)
            return self._update_endpoint(endpoint, body)
        return 400, {"error": f"the stand-in does not implement {method} {path}"}

    def _get_pod(self, pod_id: str, query: dict[str, bool]) -> tuple[int, Any]:
        pod = self.pods.get(pod_id)
        if pod is None:
            return 404, {"error": "pod not found"}
        answer = copy.deepcopy(pod)
        if not query.get("includeNetworkVolume"):
            answer.pop("networkVolume", None)
        if not query.get("includeMachine"):
            answer.pop("machine", None)
        return 200, answer

    def _create_template(self, body: dict[str, Any]) -> dict[str, Any]:
        defaults = {"category": "NVIDIA", "containerDiskInGb": 50, "dockerEntrypoint": [], "dockerStartCmd": [], "env": {}}
        defaults |= {"isServerless": False, "ports": [], "volumeInGb": 20, "volumeMountPath": "/workspace"}
        template_id = self.add_template(**{**defaults, **copy.deepcopy(body)})
        return copy.deepcopy(self.templates[template_id])

    def _bound(self, template_id: str) -> str | None:
        return next((e["id"] for e in self.endpoints.values() if e["templateId"] == template_id), None)

    def _list_templates(self, query: dict[str, bool]) -> list[dict[str, Any]]:
        listed = []
        for template in self.templates.values():
            if self._bound(template["id"]) and not query.get("includeEndpointBoundTemplates"):
                continue
            if template.get("isRunpod") and not query.get("includeRunpodTemplates"):
                continue
            listed.append(copy.deepcopy(template))
        return listed

    def _volume(self, volume_id: str) -> dict[str, Any] | None:
        return next((p["networkVolume"] for p in self.pods.values() if p.get("networkVolume", {}).get("id") == volume_id), None)

    def _check_endpoint(self, endpoint: dict[str, Any], endpoint_id: str | None) -> str | None:
        template = self.templates.get(endpoint.get("templateId", ""))
        if template is None:
            return "template not found"
        if not template.get("isServerless"):
            return "template is not a serverless template"
        bound = self._bound(template["id"])
        if bound and bound != endpoint_id:
            return f"template {template['id']} is already used by endpoint {bound}"
        volume_id = endpoint.get("networkVolumeId")
        if volume_id:
            volume = self._volume(volume_id)
            if volume is None:
                return f"network volume {volume_id} not found"
            if volume["dataCenterId"] not in endpoint.get("dataCenterIds", []):
                return f"network volume {volume_id} is in {volume['dataCenterId']}, which dataCenterIds does not include"
        return None

    def _create_endpoint(self, body: dict[str, Any]) -> tuple[int, Any]:
        endpoint = {
            "computeType": "GPU",
            "dataCenterIds": ["EU-RO-1", "US-TX-3"],
            "executionTimeoutMs": 600000,
            "gpuCount": 1,
            "idleTimeout": 5,
            "scalerType": "QUEUE_DELAY",
            "scalerValue": 4,
            "workersMax": 3,
            "workersMin": 0,
            "userId": "user-standin",
            "version": 0,
            "createdAt": "2026-12-07 00:00:00.000 +0000 UTC",
            **copy.deepcopy(body),
        }
        problem = self._check_endpoint(endpoint, None)
        if problem:
            return 400, {"error": problem}
        endpoint["id"] = self._new_id()
        self.endpoints[endpoint["id"]] = endpoint
        return 200, self._endpoint_answer(endpoint, {})

    def _update_endpoint(self, endpoint: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        updated = {**endpoint, **copy.deepcopy(body)}
        problem = self._check_endpoint(updated, endpoint["id"])
        if problem:
            return 400, {"error": problem}
        updated["version"] = endpoint["version"] + 1
        endpoint.clear()
        endpoint.update(updated)
        return 200, self._endpoint_answer(endpoint, {})

    def _endpoint_answer(self, endpoint: dict[str, Any], query: dict[str, bool]) -> dict[str, Any]:
        answer = {k: copy.deepcopy(v) for k, v in endpoint.items() if k != "flashboot"}  # not a field of the Endpoint schema
        answer["env"] = copy.deepcopy(self.templates[endpoint["templateId"]].get("env", {}))
        if query.get("includeTemplate"):
            answer["template"] = copy.deepcopy(self.templates[endpoint["templateId"]])
        return answer
