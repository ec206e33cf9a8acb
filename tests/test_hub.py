"""kit.export.hub: hub.json and tests.json checked as RunPod's Hub publishing guide defines them.

Each case is judged twice: by the kit's check and by the JSON Schemas in tests/data,
written from the guide separately; the two must agree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from conftest import build_notebook, run_kit

from kit.errors import KitError
from kit.export import hub

DATA = Path(__file__).parent / "data"
HUB_SCHEMA = json.loads((DATA / "hub.schema.json").read_text())
TESTS_SCHEMA = json.loads((DATA / "tests.schema.json").read_text())

# The guide's hub.json template, as written there.
TEMPLATE_HUB = {
    "title": "Your Tool's Name",
    "description": "A brief explanation of what your tool does",
    "type": "serverless",
    "category": "language",
    "iconUrl": "https://your-icon-url.com/icon.png",
    "config": {
        "runsOn": "GPU",
        "containerDiskInGb": 20,
        "gpuCount": 1,
        "gpuIds": "RTX A4000,-NVIDIA GeForce RTX 4090",
        "allowedCudaVersions": ["12.8", "12.7", "12.6", "12.5", "12.4", "12.3", "12.2", "12.1", "12.0"],
        "presets": [{"name": "Preset Name", "defaults": {"STRING_ENV_VAR": "value1", "INT_ENV_VAR": 10, "BOOL_ENV_VAR": True}}],
        "env": [
            {"key": "STATIC_ENV_VAR", "value": "static_value"},
            {
                "key": "STRING_ENV_VAR",
                "input": {
                    "name": "User-friendly Name",
                    "type": "string",
                    "description": "Description of this input",
                    "default": "default value",
                    "advanced": False,
                },
            },
            {
                "key": "OPTION_ENV_VAR",
                "input": {
                    "name": "Select Option",
                    "type": "string",
                    "description": "Choose from available options",
                    "options": [{"label": "Option 1", "value": "value1"}, {"label": "Option 2", "value": "value2"}],
                    "default": "value1",
                },
            },
            {
                "key": "INT_ENV_VAR",
                "input": {"name": "Numeric Value", "type": "number", "description": "Enter a number", "min": 1, "max": 100, "default": 50},
            },
            {
                "key": "BOOL_ENV_VAR",
                "input": {
                    "type": "boolean",
                    "name": "Enable Feature",
                    "description": "Toggle this feature on/off",
                    "default": False,
                    "trueValue": "enabled",
                    "falseValue": "disabled",
                },
            },
        ],
    },
}

# The guide's tests.json template.
TEMPLATE_TESTS = {
    "tests": [{"name": "test_case_name", "input": {"param1": "value1", "param2": "value2"}, "timeout": 10000}],
    "config": {
        "gpuTypeId": "NVIDIA GeForce RTX 4090",
        "gpuCount": 1,
        "env": [{"key": "TEST_ENV_VAR", "value": "test_value"}],
        "allowedCudaVersions": ["12.7", "12.6", "12.5", "12.4", "12.3", "12.2", "12.1", "12.0", "11.7"],
    },
}


def changed(doc: dict, path: str, value=None, *, delete: bool = False) -> dict:
    """A copy of `doc` with the field at dotted `path` (list indexes as numbers) set or deleted."""
    doc = copy.deepcopy(doc)
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    parent = doc
    for part in parts[:-1]:
        parent = parent[part]
    if delete:
        del parent[parts[-1]]
    else:
        parent[parts[-1]] = value
    return doc


def test_the_guides_templates_pass_both_checks():
    hub.check_hub(TEMPLATE_HUB)
    hub.check_tests(TEMPLATE_TESTS, hub=TEMPLATE_HUB)
    jsonschema.validate(TEMPLATE_HUB, HUB_SCHEMA)
    jsonschema.validate(TEMPLATE_TESTS, TESTS_SCHEMA)


HUB_BREAKS = [
    (changed(TEMPLATE_HUB, "title", delete=True), 'top level: the required field "title" is missing'),
    (changed(TEMPLATE_HUB, "category", "music"), 'category: "music" is not one of "audio", "embedding"'),
    (changed(TEMPLATE_HUB, "type", "pod"), 'type: "pod" is not one of "serverless"'),
    (changed(TEMPLATE_HUB, "config.cpuFlavor", "cpu3c"), 'config.cpuFlavor: not allowed when runsOn is "GPU"'),
    (changed(TEMPLATE_HUB, "config.gpuIds", delete=True), 'config: the required field "gpuIds" is missing'),
    (changed(TEMPLATE_HUB, "config.runsOn", "TPU"), 'config.runsOn: "TPU" is not one of "GPU", "CPU"'),
    (changed(TEMPLATE_HUB, "config.containerDiskInGb", "20"), "config.containerDiskInGb: must be a whole number, not a string"),
    (changed(TEMPLATE_HUB, "config.env.3.input.default", "fifty"), "config.env[3].input.default: must be a number, not a string"),
    (changed(TEMPLATE_HUB, "config.env.4.input.type", "toggle"), 'config.env[4].input.type: "toggle" is not one of'),
    (changed(TEMPLATE_HUB, "config.env.0.input", {"type": "string"}), 'config.env[0]: needs either "value"'),
    (changed(TEMPLATE_HUB, "config.presets.0.defaults", delete=True), 'config.presets[0]: the required field "defaults" is missing'),
]


@pytest.mark.parametrize(("doc", "message"), HUB_BREAKS)
def test_a_hub_json_that_breaks_the_guide_is_one_error_naming_where(doc, message):
    with pytest.raises(KitError) as caught:
        hub.check_hub(doc)
    assert str(caught.value).startswith(".runpod/hub.json: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, HUB_SCHEMA)


TESTS_BREAKS = [
    (changed(TEMPLATE_TESTS, "tests", []), "tests: is empty"),
    (changed(TEMPLATE_TESTS, "tests.0.input", delete=True), 'tests[0]: the required field "input" is missing'),
    (changed(TEMPLATE_TESTS, "tests.0.input", "hello"), "tests[0].input: must be a JSON object, not a string"),
    (changed(TEMPLATE_TESTS, "tests.0.timeout", 1.5), "tests[0].timeout: must be a whole number"),
    (changed(TEMPLATE_TESTS, "config.cpuFlavor", "cpu3c"), "config.cpuFlavor: not allowed beside gpuTypeId"),
    (changed(TEMPLATE_TESTS, "config.gpuCount", delete=True), 'config: the required field "gpuCount" is missing'),
    (changed(TEMPLATE_TESTS, "config.env.0.value", delete=True), 'config.env[0]: the required field "value" is missing'),
]


@pytest.mark.parametrize(("doc", "message"), TESTS_BREAKS)
def test_a_tests_json_that_breaks_the_guide_is_one_error_naming_where(doc, message):
    with pytest.raises(KitError) as caught:
        hub.check_tests(doc)
    assert str(caught.value).startswith(".runpod/tests.json: ") and message in str(caught.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, TESTS_SCHEMA)


def test_tests_on_a_cpu_for_a_gpu_worker_are_refused():
    cpu_tests = {"tests": TEMPLATE_TESTS["tests"], "config": {"cpuFlavor": "cpu3c"}}
    hub.check_tests(cpu_tests)  # fine alone
    with pytest.raises(KitError, match='hub.json runs on GPU, so the tests need "gpuTypeId" and "gpuCount"'):
        hub.check_tests(cpu_tests, hub=TEMPLATE_HUB)


def test_invalid_json_names_the_line(tmp_path):
    # A public worker's tests.json once shipped with a trailing comma.
    text = json.dumps(TEMPLATE_TESTS, indent=2).replace('"timeout": 10000', '"timeout": 10000,')
    with pytest.raises(KitError) as caught:
        hub.parse_json(text, hub.TESTS)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip() == "}")
    assert str(caught.value).startswith(f".runpod/tests.json: line {line}, column ")
    assert "invalid JSON" in str(caught.value) and "trailing comma" in str(caught.value)
    with pytest.raises(KitError, match="NaN is not JSON"):
        hub.parse_json('{"tests": NaN}', hub.TESTS)


def test_cuda_versions_are_the_base_and_newer():
    assert hub.cuda_from("12.8") == ["12.8", "12.9", "13.0"]
    assert hub.cuda_from("11.8")[0] == "11.8" and hub.cuda_from("11.8")[-1] == "13.0"
    assert hub.cuda_from("10.2") == []


def test_kit_test_reports_a_broken_tests_json_in_one_line_before_running(tmp_path):
    notebook = build_notebook(
        tmp_path / "w.ipynb",
        [("handler", "def handler(job):\n    return job['input']"), ("test", "handler({'input': {'a': 1}})")],
    )
    out = tmp_path / "repo"
    exported = run_kit("export", notebook, "-o", out, "--repo", "--category", "language")
    assert exported.returncode == 0, exported.stderr
    tests_json = out / ".runpod" / "tests.json"
    tests_json.write_text(tests_json.read_text().replace('"timeout": 300000', '"timeout": 300000,'))
    result = run_kit("test", out)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {out}/.runpod/tests.json: line ") and result.stderr.count("\n") == 1
    assert result.stdout == ""  # nothing ran
    (out / ".runpod" / "hub.json").write_text(
        json.dumps(changed(json.loads((out / ".runpod" / "hub.json").read_text()), "category", "music"))
    )
    result = run_kit("test", out)
    assert result.returncode == 2 and result.stderr.startswith(f'error: {out}/.runpod/hub.json: category: "music" is not one of')
