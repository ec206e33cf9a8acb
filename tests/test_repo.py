"""`kit export --repo`: the repository files RunPod's GitHub integration and the Hub read.

hub.json and tests.json are validated against JSON Schemas written from RunPod's Hub
publishing guide (tests/data/*.schema.json), apart from the kit's own check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import nbformat
import pytest
from conftest import NOTEBOOKS, ROOT, build_notebook, run_kit

from kit.errors import KitError
from kit.export import hub, repo
from kit.export.export import export_notebook

DATA = Path(__file__).parent / "data"
HUB_SCHEMA = json.loads((DATA / "hub.schema.json").read_text())
TESTS_SCHEMA = json.loads((DATA / "tests.schema.json").read_text())

CELLS = [
    ("md", "# Greeter\n\nSays **hello** to `name`, in the `GREETING` you set.\n\nMore text."),
    (
        "setup",
        "import os\n"
        "GREETING = os.environ.get('GREETING', 'hello')\n"
        "TIMES = int(os.getenv('TIMES', '2'))\n"
        "RATIO = float(os.environ.get('RATIO', 0.5))\n"
        "LOUD = os.environ.get('LOUD', 'false') == 'true'\n"
        "TOKEN = os.environ['API_TOKEN']\n"
        "if 'DEBUG_MODE' in os.environ:\n    print('debug')\n"
        "POD = os.environ.get('RUNPOD_POD_ID')",
    ),
    (
        "handler",
        "def handler(job):\n    if 'name' not in job['input']:\n        return {'error': 'no name'}\n    return {'greeting': GREETING, **job['input']}",
    ),
    (None, "import os\nSCRATCH = os.environ.get('SCRATCH_ONLY', 'x')"),
    (
        "test",
        "import os\nos.environ.get('TEST_ONLY')\n"
        "result = handler({'input': {'name': 'ada'}})\nassert result['name'] == 'ada'\n"
        "bad = handler({'input': {}})\nassert 'error' in bad\n"
        "try:\n    handler({'input': {'name': 1, 'boom': True}})\nexcept Exception:\n    pass",
    ),
]


def export_repo(tmp_path, cells=CELLS, **options):
    notebook = build_notebook(tmp_path / "greeter.ipynb", cells)
    out = tmp_path / "repo"
    return export_notebook(notebook, out, repo=True, **options), out


def read(out: Path, name: str):
    return json.loads((out / name).read_text())


def test_hub_json_is_filled_from_the_notebook_and_matches_the_guide(tmp_path):
    result, out = export_repo(tmp_path, category="language")
    data = read(out, hub.HUB)
    jsonschema.validate(data, HUB_SCHEMA)
    assert data["title"] == "Greeter"
    assert data["description"] == "Says hello to name, in the GREETING you set."
    assert data["type"] == "serverless" and data["category"] == "language"
    config = data["config"]
    assert config["runsOn"] == "CPU" and config["cpuFlavor"] and "gpuIds" not in config
    env = {item["key"]: item["input"] for item in config["env"]}
    # Setup and handler cells only: not the test cell, not the untagged one, not RunPod's own.
    assert list(env) == ["GREETING", "TIMES", "RATIO", "LOUD", "API_TOKEN", "DEBUG_MODE"]
    assert env["GREETING"] | {"description": ""} == {"name": "Greeting", "type": "string", "default": "hello", "description": ""}
    assert env["TIMES"]["type"] == "number" and env["TIMES"]["default"] == 2
    assert env["RATIO"]["type"] == "number" and env["RATIO"]["default"] == 0.5
    assert env["LOUD"]["type"] == "boolean" and env["LOUD"]["default"] is False
    assert env["API_TOKEN"]["required"] is True and "default" not in env["API_TOKEN"]
    assert "default" not in env["DEBUG_MODE"] and "required" not in env["DEBUG_MODE"]
    assert "cell 2, line 6" in env["API_TOKEN"]["description"]
    assert not any("guessed" in note for note in result.notes)


def test_tests_json_has_one_test_per_job_and_leaves_out_the_expected_failures(tmp_path):
    result, out = export_repo(tmp_path, category="language")
    data = read(out, hub.TESTS)
    jsonschema.validate(data, TESTS_SCHEMA)
    assert data["tests"] == [{"name": "cell_5_line_3", "input": {"name": "ada"}, "timeout": 300_000}]
    assert data["config"]["cpuFlavor"] == repo.CPU_FLAVOR
    # The defaults the tests need; never a value from this machine's environment.
    assert {"key": "GREETING", "value": "hello"} in data["config"]["env"]
    assert {"key": "TIMES", "value": "2"} in data["config"]["env"]
    assert not any(item["key"] == "API_TOKEN" for item in data["config"]["env"])
    assert any("API_TOKEN is required" in str(w) for w in result.warnings)
    skipped = [note for note in result.notes if note.startswith("left out")]
    assert len(skipped) == 2
    assert "cell_5_line_5" in skipped[0] and '"error"' in skipped[0]
    assert "cell_5_line_8" in skipped[1] and "try/except" in skipped[1]
    assert any("300 s" in note and "Record cell timing" in note for note in result.notes)


def test_the_embeddings_example_is_a_gpu_embedding_worker(tmp_path):
    result = export_notebook(NOTEBOOKS / "embeddings.ipynb", tmp_path / "repo", repo=True)
    data = read(tmp_path / "repo", hub.HUB)
    jsonschema.validate(data, HUB_SCHEMA)
    jsonschema.validate(read(tmp_path / "repo", hub.TESTS), TESTS_SCHEMA)
    assert data["category"] == "embedding"
    assert any(note.startswith("category 'embedding' guessed from") for note in result.notes)
    config = data["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1 and "cpuFlavor" not in config
    # Built on CUDA 12.8: that version and the newer ones, none older.
    assert config["allowedCudaVersions"] == ["12.8", "12.9", "13.0"]
    assert config["containerDiskInGb"] >= 20
    assert [item["key"] for item in config["env"]] == ["MODEL_DIR"]
    assert "set MODEL_DIR to use another copy" in data["description"]
    tests = read(tmp_path / "repo", hub.TESTS)
    assert tests["config"]["gpuTypeId"] and tests["config"]["gpuCount"] == 1


def test_timeouts_come_from_the_run_times_the_notebook_recorded(tmp_path):
    path = build_notebook(tmp_path / "timed.ipynb", CELLS)
    nb = nbformat.read(path, as_version=4)
    times = {2: 40.0, 5: 5.0}  # setup 40 s, the test cell 5 s
    for index, seconds in times.items():
        nb.cells[index - 1].metadata["execution"] = {
            "iopub.execute_input": "2026-01-01T10:00:00.000000Z",
            "shell.execute_reply": f"2026-01-01T10:00:{seconds:06.3f}Z" if seconds < 60 else "",
        }
    nbformat.write(nb, path)
    result = export_notebook(path, tmp_path / "repo", repo=True, category="language")
    # 60 s for the start + 3 x (40 + 5) = 195 s, rounded up to 10 s.
    assert read(tmp_path / "repo", hub.TESTS)["tests"][0]["timeout"] == 200_000
    assert any("recorded" in note for note in result.notes)


def test_dockerfile_builds_from_the_folder_alone_on_the_kits_base_image(tmp_path):
    _, out = export_repo(tmp_path, category="language")
    text = (out / "Dockerfile").read_text()
    kit_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert kit_base and f"ARG BASE_IMAGE={kit_base.group(1)}" in text and repo.BASE_IMAGE == kit_base.group(1)
    lines = [line for line in re.sub(r"\\\n", " ", text).splitlines() if line and not line.startswith("#")]
    copies = [line.split()[1] for line in lines if line.startswith("COPY")]
    assert copies == ["requirements.txt", "."]  # the requirements' layer before the code
    assert lines[-1] == 'CMD ["python", "-u", "handler.py"]'
    assert "kit" not in " ".join(line for line in lines if line.startswith(("RUN", "COPY")))
    hadolint = Path(sys.executable).parent / "hadolint"
    checked = subprocess.run([str(hadolint), str(out / "Dockerfile")], capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout


def test_the_dockerfiles_requirement_step_holds_the_base_images_torch(tmp_path):
    # The RUN step's shell, on the host: torch lines out, the rest installed as pinned.
    _, out = export_repo(tmp_path, category="language")
    text = re.sub(r"\\\n", " ", (out / "Dockerfile").read_text())
    run = next(line for line in text.splitlines() if line.startswith("RUN "))[4:]
    filtering = run.split("&&")[1].strip()
    (tmp_path / "requirements.txt").write_text(
        "# header\nrunpod==1.12.0  # the worker loop\ntorch==2.13.0  # import torch\nTorchVision>=0.2\ntorchmetrics==1.0\n"
    )
    assert filtering.endswith(">/tmp/requirements.pins")
    filtering = filtering.replace("/tmp/", f"{tmp_path}/")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", filtering], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "requirements.pins").read_text().split() == ["runpod==1.12.0", "torchmetrics==1.0"]


def test_readme_says_how_to_deploy_and_call_it(tmp_path):
    _, out = export_repo(tmp_path, category="language")
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Greeter\n")
    for text in ("Import Git Repository", "30 minutes", "no GPU at build", "/runsync", '{"input": {"name": "ada"}}', "`API_TOKEN`"):
        assert text in readme, text


def test_reexport_rewrites_only_the_files_still_as_the_kit_wrote_them(tmp_path):
    _, out = export_repo(tmp_path, category="language")
    (out / "README.md").write_text("# my own words\n")
    (out / ".github").mkdir()
    (out / ".github" / "workflow.yml").write_text("on: release\n")
    (out / "LICENSE").write_text("MIT\n")
    dockerfile = (out / "Dockerfile").read_text()
    tests_before = (out / hub.TESTS).read_text()
    (out / hub.TESTS).write_text(tests_before.replace("300000", "600000"))
    (out / "Dockerfile").unlink()

    result, out = export_repo(tmp_path, category="image")
    assert (out / "README.md").read_text() == "# my own words\n"
    assert (out / ".github" / "workflow.yml").read_text() == "on: release\n" and (out / "LICENSE").read_text() == "MIT\n"
    assert "600000" in (out / hub.TESTS).read_text()
    assert (out / "Dockerfile").read_text() == dockerfile  # removed: written again
    assert read(out, hub.HUB)["category"] == "image"  # unchanged: rewritten
    assert result.kept == [hub.TESTS, "README.md"]
    assert any("left alone" in note and "README.md" in note for note in result.notes)
    # Changed once, the user's for good: another re-export leaves them too.
    result, out = export_repo(tmp_path, category="image")
    assert result.kept == [hub.TESTS, "README.md"]


def test_plain_reexport_into_a_repository_keeps_its_files(tmp_path):
    _, out = export_repo(tmp_path, category="language")
    (out / "README.md").write_text("# mine\n")
    hub_text = (out / hub.HUB).read_text()
    export_notebook(tmp_path / "greeter.ipynb", out)  # no --repo: the panel's Export button
    assert (out / hub.HUB).read_text() == hub_text and (out / "README.md").read_text() == "# mine\n"
    # The kit's unchanged files stay the kit's: the next --repo export still rewrites them.
    result, _ = export_repo(tmp_path, category="audio")
    assert read(out, hub.HUB)["category"] == "audio"
    assert result.kept == ["README.md"]


def test_a_user_readme_in_a_worker_directory_is_left_alone(tmp_path):
    notebook = build_notebook(tmp_path / "greeter.ipynb", CELLS)
    export_notebook(notebook, tmp_path / "repo")
    (tmp_path / "repo" / "README.md").write_text("# notes\n")
    result = export_notebook(notebook, tmp_path / "repo", repo=True, category="language")
    assert (tmp_path / "repo" / "README.md").read_text() == "# notes\n"
    assert result.kept == ["README.md"] and (tmp_path / "repo" / hub.HUB).exists()


def test_a_notebook_without_a_job_that_can_pass_is_refused(tmp_path):
    cells = [CELLS[1], CELLS[2], ("test", "bad = handler({'input': {}})\nassert bad['error']")]
    with pytest.raises(KitError, match="no test job for .runpod/tests.json"):
        export_repo(tmp_path, cells=cells, category="language")
    assert not (tmp_path / "repo").exists()


def test_cli_repo_flags(tmp_path):
    notebook = build_notebook(tmp_path / "greeter.ipynb", CELLS)
    result = run_kit("export", notebook, "-o", tmp_path / "repo", "--repo")
    assert result.returncode == 0, result.stderr
    assert "note: category 'language' guessed from nothing in the code" in result.stdout
    assert "note: left out of .runpod/tests.json: cell_5_line_5" in result.stdout
    assert "  .runpod/hub.json" in result.stdout
    manifest = json.loads((tmp_path / "repo" / "kit.json").read_text())
    assert "--repo" in manifest["command"] and set(manifest["hashes"]) == set(repo.REPO_FILES)
    bad = run_kit("export", notebook, "-o", tmp_path / "repo", "--repo", "--category", "music")
    assert bad.returncode == 2 and "invalid choice: 'music'" in bad.stderr


# --- the proof: the folder alone builds an image that passes its Hub tests ----


@pytest.mark.image
@pytest.mark.timeout(3600)
def test_repo_folder_alone_builds_an_image_that_passes_every_hub_test(tmp_path):
    # As RunPod's GitHub integration builds it: the folder's Dockerfile, the folder as the
    # context, nothing beside it; BASE_IMAGE is the stand-in for runpod/pytorch.
    import shutil
    import time

    from test_image import Container, image_sh, podman_or_skip

    from kit.serve.emulator import QueueEmulator

    podman_or_skip()
    export_notebook(NOTEBOOKS / "embeddings.ipynb", tmp_path / "export", repo=True)
    context = tmp_path / "alone" / "embeddings"
    shutil.copytree(tmp_path / "export", context)
    assert sorted(p.name for p in context.parent.iterdir()) == ["embeddings"]
    tag = "localhost/kit-repo-embeddings:latest"
    started = time.monotonic()
    image_sh("build-dir", tag, str(context), timeout=1800)
    print(f"\nbuild: {time.monotonic() - started:.0f} s; {image_sh('sizes', tag).stdout.strip()}")

    tests = read(context, hub.TESTS)
    env = {item["key"]: item["value"] for item in tests["config"].get("env", [])}
    with QueueEmulator(host="127.0.0.1", port=0) as emu:
        container = Container(tag, **emu.worker_env("repo-1"), **env)
        try:
            for test in tests["tests"]:
                job_id = emu.submit({"input": test["input"]})
                state = emu.wait(job_id, timeout=test["timeout"] / 1000)
                assert state["status"] == "COMPLETED", (test["name"], state, container.logs()[-3000:])
                output = state["output"]
                assert output["dimensions"] == 384 and len(output["embeddings"]) == len(test["input"]["sentences"])
        finally:
            container.remove()


def test_the_kits_jupyterlab_records_cell_timing_for_the_hub_timeouts(tmp_path):
    # What the image copies into JupyterLab's settings, loaded as JupyterLab loads it.
    import shutil

    from jupyterlab.commands import get_app_dir
    from jupyterlab_server.settings_utils import get_settings

    shutil.copytree(ROOT / "docker" / "jupyter" / "overrides.d", tmp_path / "settings" / "overrides.d")
    settings, warnings = get_settings(
        str(tmp_path / "settings"),
        str(Path(get_app_dir()) / "schemas"),
        str(tmp_path / "user"),
        schema_name="@jupyterlab/notebook-extension:tracker",
    )
    assert not any(warnings), warnings
    assert settings["schema"]["properties"]["recordTiming"]["default"] is True


def test_jobs_of_one_batch_call_get_names_of_their_own_and_non_json_inputs_are_left_out(tmp_path):
    cells = [
        ("handler", "def batch_handler(jobs):\n    return [job['input'] for job in jobs]"),
        ("test", "batch_handler([{'input': {'a': 1}}, {'input': {'a': 2}}, {'input': {'a': 3}}])\nhandler({'input': {'x': 1e999}})"),
    ]
    result, out = export_repo(tmp_path, cells=cells, category="language")
    names = [test["name"] for test in read(out, hub.TESTS)["tests"]]
    assert names == ["cell_2_line_1_job_1", "cell_2_line_1_job_2", "cell_2_line_1_job_3"]
    assert any("cell_2_line_2" in note and "NaN or infinity" in note for note in result.notes)
    json.loads((out / hub.TESTS).read_text(), parse_constant=lambda word: pytest.fail(f"{word} in tests.json"))
