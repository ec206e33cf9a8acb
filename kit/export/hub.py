"""RunPod Hub's two files, `.runpod/hub.json` and `.runpod/tests.json`: their facts and their check.

The shapes are RunPod's Hub publishing guide (runpod/docs, hub/publishing-guide.mdx):
hub.json has `title`, `description`, `type: "serverless"`, a `category` out of five and a
`config` (`runsOn` GPU or CPU, `containerDiskInGb`, `gpuCount` + `gpuIds` on GPU or
`cpuFlavor` on CPU, optional `allowedCudaVersions`, `endpointType`, `env`, `presets`);
tests.json has `tests` (`name`, `input`, optional `timeout` in ms) and a `config`
(`gpuTypeId` + `gpuCount` or `cpuFlavor`, `env` as key/value pairs, `allowedCudaVersions`).

Users hand-edit these files, so `check_hub` and `check_tests` read them as hostile input
and raise one KitError naming the file and where in it (the line of a JSON syntax error,
the path of a field otherwise). `kit export --repo` checks what it writes the same way.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kit.errors import KitError

HUB = ".runpod/hub.json"
TESTS = ".runpod/tests.json"

CATEGORIES = ("audio", "embedding", "language", "video", "image")
INPUT_TYPES = ("string", "number", "boolean", "huggingface")
# RunPod's accepted CUDA versions, newest first (REST API v1, PodCreateInput.allowedCudaVersions).
CUDA_VERSIONS = ("13.0", "12.9", "12.8", "12.7", "12.6", "12.5", "12.4", "12.3", "12.2", "12.1", "12.0", "11.8")

MAX_BYTES = 1_000_000  # a hand-written hub.json or tests.json is a few kB


def cuda_from(version: str) -> list[str]:
    """`version` and every newer CUDA version RunPod knows, oldest first: a build for CUDA
    12.8 needs a driver for 12.8 or newer."""
    known = list(reversed(CUDA_VERSIONS))
    if version not in known:
        return []
    return known[known.index(version) :]


def read_json(path: Path, name: str) -> Any:
    """The JSON in `path` (shown as `name`); a KitError with the line and column of a syntax error."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise KitError(f"{name}: larger than {MAX_BYTES // 1000} kB", "a Hub configuration file is a few kB of JSON")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KitError(f"{name}: not UTF-8 text", "save it as UTF-8 JSON") from None
    except OSError as error:
        raise KitError(f"{name}: cannot read it ({error.strerror})") from None
    return parse_json(text, name)


def parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise KitError(
            f"{name}: line {error.lineno}, column {error.colno}: invalid JSON ({error.msg})",
            "JSON allows no trailing comma and no comments",
        ) from None
    except RecursionError:
        raise KitError(f"{name}: nested too deeply") from None


def _no_constant(word: str) -> Any:
    raise json.JSONDecodeError(f"{word} is not JSON", word, 0)


class _Checker:
    def __init__(self, name: str):
        self.name = name

    def fail(self, where: str, problem: str, hint: str | None = None) -> KitError:
        return KitError(f"{self.name}: {where}: {problem}" if where else f"{self.name}: {problem}", hint)

    def obj(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a JSON object, not {_kind(value)}")
        return value

    def required(self, parent: dict, key: str, where: str) -> Any:
        if key not in parent:
            raise self.fail(where or "top level", f'the required field "{key}" is missing')
        return parent[key]

    def string(self, value: Any, where: str, *, empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, not {_kind(value)}")
        if not empty and not value.strip():
            raise self.fail(where, "must not be empty")
        return value

    def integer(self, value: Any, where: str, *, low: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"must be a whole number, not {_kind(value)}")
        if value < low:
            raise self.fail(where, f"must be at least {low}, not {value}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(where, f"must be a number, not {_kind(value)}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, not {_kind(value)}")
        return value

    def one_of(self, value: Any, choices: tuple[str, ...], where: str) -> str:
        if value not in choices:
            shown = json.dumps(value) if isinstance(value, (str, int, float, bool)) or value is None else _kind(value)
            raise self.fail(where, f"{shown} is not one of {', '.join(json.dumps(c) for c in choices)}")
        return value

    def array(self, value: Any, where: str) -> list:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a JSON array, not {_kind(value)}")
        return value

    def cuda_versions(self, value: Any, where: str) -> None:
        for i, version in enumerate(self.array(value, where)):
            self.string(version, f"{where}[{i}]")

    def env_values(self, value: Any, where: str) -> None:
        for i, item in enumerate(self.array(value, where)):
            at = f"{where}[{i}]"
            self.obj(item, at)
            self.string(self.required(item, "key", at), f"{at}.key")
            if "value" not in item:
                raise self.fail(at, 'the required field "value" is missing')


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def check_hub(data: Any, name: str = HUB) -> dict:
    """`data` (parsed hub.json) as the publishing guide defines it; else a KitError naming where."""
    c = _Checker(name)
    hub = c.obj(data, "")
    c.string(c.required(hub, "title", ""), "title")
    c.string(c.required(hub, "description", ""), "description")
    c.one_of(c.required(hub, "type", ""), ("serverless",), "type")
    c.one_of(c.required(hub, "category", ""), CATEGORIES, "category")
    if "iconUrl" in hub:
        url = c.string(hub["iconUrl"], "iconUrl")
        if not url.startswith(("https://", "http://")):
            raise c.fail("iconUrl", "must be an http(s) URL")
    config = c.obj(c.required(hub, "config", ""), "config")
    runs_on = c.one_of(c.required(config, "runsOn", "config"), ("GPU", "CPU"), "config.runsOn")
    c.integer(c.required(config, "containerDiskInGb", "config"), "config.containerDiskInGb")
    if "endpointType" in config:
        c.one_of(config["endpointType"], ("LB",), "config.endpointType")
    if runs_on == "GPU":
        if "cpuFlavor" in config:
            raise c.fail("config.cpuFlavor", 'not allowed when runsOn is "GPU"', 'remove it, or set runsOn to "CPU"')
        c.integer(c.required(config, "gpuCount", "config"), "config.gpuCount")
        c.string(c.required(config, "gpuIds", "config"), "config.gpuIds")
    else:
        for key in ("gpuCount", "gpuIds"):
            if key in config:
                raise c.fail(f"config.{key}", 'not allowed when runsOn is "CPU"', 'remove it, or set runsOn to "GPU"')
        c.string(c.required(config, "cpuFlavor", "config"), "config.cpuFlavor")
    if "allowedCudaVersions" in config:
        c.cuda_versions(config["allowedCudaVersions"], "config.allowedCudaVersions")
    for i, item in enumerate(c.array(config.get("env", []), "config.env")):
        _check_env_item(c, item, f"config.env[{i}]")
    for i, preset in enumerate(c.array(config.get("presets", []), "config.presets")):
        at = f"config.presets[{i}]"
        c.obj(preset, at)
        c.string(c.required(preset, "name", at), f"{at}.name")
        c.obj(c.required(preset, "defaults", at), f"{at}.defaults")
    return hub


def _check_env_item(c: _Checker, item: Any, at: str) -> None:
    c.obj(item, at)
    c.string(c.required(item, "key", at), f"{at}.key")
    if ("value" in item) == ("input" in item):
        raise c.fail(at, 'needs either "value" (a static variable) or "input" (a field the user fills), not both or neither')
    if "value" in item:
        return
    field = c.obj(item["input"], f"{at}.input")
    kind = c.one_of(c.required(field, "type", f"{at}.input"), INPUT_TYPES, f"{at}.input.type")
    for key in ("name", "description"):
        if key in field:
            c.string(field[key], f"{at}.input.{key}", empty=key == "description")
    for key in ("advanced", "required"):
        if key in field:
            c.boolean(field[key], f"{at}.input.{key}")
    for key in ("min", "max"):
        if key in field:
            c.number(field[key], f"{at}.input.{key}")
    for key in ("trueValue", "falseValue"):
        if key in field:
            c.string(field[key], f"{at}.input.{key}", empty=True)
    if "default" in field:
        default = field["default"]
        where = f"{at}.input.default"
        if kind == "number":
            c.number(default, where)
        elif kind == "boolean":
            c.boolean(default, where)
        else:
            c.string(default, where, empty=True)
    for j, option in enumerate(c.array(field.get("options", []), f"{at}.input.options")):
        c.obj(option, f"{at}.input.options[{j}]")
        c.required(option, "label", f"{at}.input.options[{j}]")
        c.required(option, "value", f"{at}.input.options[{j}]")


def check_tests(data: Any, name: str = TESTS, *, hub: dict | None = None) -> dict:
    """`data` (parsed tests.json) as the publishing guide defines it; `hub`, when given, is the
    checked hub.json its config must agree with (GPU tests for a GPU worker, CPU for CPU)."""
    c = _Checker(name)
    doc = c.obj(data, "")
    tests = c.array(c.required(doc, "tests", ""), "tests")
    if not tests:
        raise c.fail("tests", "is empty: the Hub needs at least one test")
    names = set()
    for i, test in enumerate(tests):
        at = f"tests[{i}]"
        c.obj(test, at)
        test_name = c.string(c.required(test, "name", at), f"{at}.name")
        if test_name in names:
            raise c.fail(f"{at}.name", f"{json.dumps(test_name)} names another test too")
        names.add(test_name)
        c.obj(c.required(test, "input", at), f"{at}.input")
        if "timeout" in test:
            c.integer(test["timeout"], f"{at}.timeout")
    config = c.obj(c.required(doc, "config", ""), "config")
    gpu = "gpuTypeId" in config or "gpuCount" in config
    if gpu and "cpuFlavor" in config:
        raise c.fail("config.cpuFlavor", "not allowed beside gpuTypeId/gpuCount: a test runs on a GPU or on a CPU")
    if gpu:
        c.string(c.required(config, "gpuTypeId", "config"), "config.gpuTypeId")
        c.integer(c.required(config, "gpuCount", "config"), "config.gpuCount")
    elif "cpuFlavor" in config:
        c.string(config["cpuFlavor"], "config.cpuFlavor")
    else:
        raise c.fail("config", 'needs "gpuTypeId" and "gpuCount" (GPU tests) or "cpuFlavor" (CPU tests)')
    if "env" in config:
        c.env_values(config["env"], "config.env")
    if "allowedCudaVersions" in config:
        c.cuda_versions(config["allowedCudaVersions"], "config.allowedCudaVersions")
    if hub is not None:
        runs_on = hub["config"]["runsOn"]
        if (runs_on == "GPU") != gpu:
            wanted = '"gpuTypeId" and "gpuCount"' if runs_on == "GPU" else '"cpuFlavor"'
            raise c.fail("config", f"hub.json runs on {runs_on}, so the tests need {wanted}")
    return doc


def read_repo(directory: Path) -> tuple[dict, dict] | None:
    """(hub.json, tests.json) of the repository at `directory`, both checked; None when it has no tests.json."""
    tests_path = directory / TESTS
    if not tests_path.exists():
        return None
    hub_path = directory / HUB
    if not hub_path.exists():
        raise KitError(f"{tests_path} has no {HUB} beside it", "the Hub needs both: write it, or export with --repo")
    hub = check_hub(read_json(hub_path, str(hub_path)), str(hub_path))
    tests = check_tests(read_json(tests_path, str(tests_path)), str(tests_path), hub=hub)
    return hub, tests
