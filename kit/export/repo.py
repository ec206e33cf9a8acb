"""`kit export --repo`: the worker directory as a repository RunPod builds by itself.

Besides the worker's files, `repo_files` writes what RunPod's GitHub integration and the
Hub read: a `Dockerfile` that builds from the folder alone, `.dockerignore`,
`.runpod/hub.json`, `.runpod/tests.json` (kit.export.hub checks both) and a `README.md`.
What it fills in comes from the notebook: the title and description from its first
markdown cell, the env inputs from the environment variables its setup and handler
cells read, the tests from its test cells' job literals (kit.export.repo_facts reads
them). The user owns these files once they edit them: `keep_user_files` compares each
with the hash the manifest recorded when the kit wrote it, and a re-export rewrites
only those still as the kit wrote them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit import workerdir
from kit.errors import KitError, KitWarning
from kit.export import hub

if TYPE_CHECKING:
    from kit.export.export import Worker
    from kit.export.repo_facts import Facts

# The kit's own Dockerfile builds on this image (tests/test_repo.py checks they agree).
BASE_IMAGE = "runpod/pytorch:1.0.3-cu1281-torch291-ubuntu2404"
BASE_CUDA = "12.8"  # cu1281 in its tag

DOCKERFILE = "Dockerfile"
DOCKERIGNORE = ".dockerignore"
README = "README.md"
REPO_FILES = (DOCKERFILE, DOCKERIGNORE, README, hub.HUB, hub.TESTS)

GPU_IDS = "AMPERE_16,AMPERE_24,ADA_24"  # pools with 16-24 GB (docs: references/gpu-types, GPU pools)
TEST_GPU = "NVIDIA RTX A4000"  # in AMPERE_16
CPU_FLAVOR = "cpu3c"  # compute-optimised vCPUs


@dataclass
class RepoFiles:
    files: dict[str, str]  # repository file -> text
    notes: list[str] = field(default_factory=list)  # what the export decided and why, printed by the CLI
    warnings: list[KitWarning] = field(default_factory=list)


def repo_files(worker: Worker, *, category: str | None = None, base_image: str = BASE_IMAGE) -> RepoFiles:
    """The repository's files for `worker` (built by kit.export.export.build_worker)."""
    if category is not None and category not in hub.CATEGORIES:
        raise KitError(f"--category {category!r} is not a Hub category", f"give one of {', '.join(hub.CATEGORIES)}")
    from kit.export.repo_facts import read_facts  # only for --repo: a plain export stays quick to start

    facts = read_facts(worker)
    notes: list[str] = []
    warnings = list(facts.warnings)
    if category is None:
        category, why = facts.category_guess
        notes.append(f"category {category!r} guessed from {why}; pass --category to choose another")
    hub_json = _hub_json(worker, facts, category)
    tests, skipped = _tests(facts)
    for name, reason in skipped:
        notes.append(f"left out of {hub.TESTS}: {name}: {reason}")
    if not tests:
        raise worker.notebook.error(
            f"no test job for {hub.TESTS}: the Hub runs at least one",
            'add a `test` cell that calls handler({"input": {...}}) with a job that succeeds',
        )
    notes.append(facts.timing_note)
    tests_json = {"tests": tests, "config": _test_config(facts, warnings)}
    hub.check_hub(hub_json)
    hub.check_tests(tests_json, hub=hub_json)
    files = {
        DOCKERFILE: _dockerfile(worker, base_image),
        DOCKERIGNORE: _DOCKERIGNORE,
        hub.HUB: json.dumps(hub_json, indent=2, ensure_ascii=False) + "\n",
        hub.TESTS: json.dumps(tests_json, indent=2, ensure_ascii=False) + "\n",
        README: _readme(worker, facts, hub_json, tests_json),
    }
    return RepoFiles(files, notes, warnings)


def with_repo(worker: Worker, out_dir: Path, *, repo: bool, category: str | None = None) -> tuple[Worker, set[str], RepoFiles]:
    """`worker` with its repository files (`repo`) and their hashes in the manifest, and the
    repository files to leave alone in `out_dir` (the user's, or all of them without `repo`)."""
    keep, carried = keep_user_files(out_dir, writing=repo)
    made = repo_files(worker, category=category) if repo else RepoFiles({})
    written = {name: text for name, text in made.files.items() if name not in keep}
    hashes = {name: digest(text.encode("utf-8")) for name, text in written.items()} if repo else carried
    manifest = workerdir.Manifest.from_text(worker.files[workerdir.MANIFEST])
    manifest.files = sorted({*manifest.files, *written, *carried})
    manifest.hashes = hashes
    files = {**worker.files, **written, workerdir.MANIFEST: manifest.to_text()}
    if repo and keep:
        made.notes.append(f"left alone (changed since the kit wrote them, or not the kit's): {', '.join(sorted(keep))}")
    return replace(worker, files=files, warnings=[*worker.warnings, *made.warnings]), keep, made


def digest(data: bytes) -> str:
    import hashlib  # only when there are repository files to hash

    return hashlib.sha256(data).hexdigest()


def keep_user_files(out_dir: Path, *, writing: bool) -> tuple[set[str], dict[str, str]]:
    """(repository files to leave alone, hashes of those still the kit's, to carry over).

    A file the earlier export recorded a hash for is the kit's while its content has that
    hash; changed, it is the user's from now on (kept, and no longer listed). A repository
    file the manifest never recorded is the user's too. `writing`: this export writes the
    repository files again (--repo), so the kit's are replaced and only the user's kept;
    otherwise every one is left as it is.
    """
    manifest = workerdir.Manifest.read(out_dir)
    recorded = manifest.hashes if manifest and isinstance(manifest.hashes, dict) else {}
    keep: set[str] = set()
    carried: dict[str, str] = {}
    for name in REPO_FILES:
        path = out_dir / name
        if not os.path.lexists(path):
            continue
        theirs = path.is_symlink() or not path.is_file() or recorded.get(name) != _file_digest(path)
        if theirs or not writing:
            keep.add(name)
        if not theirs and not writing:
            carried[name] = recorded[name]
    return keep, carried


def _file_digest(path: Path) -> str | None:
    try:
        return digest(path.read_bytes())
    except OSError:
        return None


# --------------------------------------------------------------------------- hub.json / tests.json


def _hub_json(worker: Worker, facts: Facts, category: str) -> dict[str, Any]:
    config: dict[str, Any] = {"runsOn": "GPU" if facts.uses_cuda else "CPU", "containerDiskInGb": facts.disk_gb}
    if facts.uses_cuda:
        config |= {"gpuCount": 1, "gpuIds": GPU_IDS, "allowedCudaVersions": hub.cuda_from(BASE_CUDA)}
    else:
        config["cpuFlavor"] = CPU_FLAVOR
    env = []
    for var in facts.env:
        field_: dict[str, Any] = {
            "name": var.label,
            "type": var.type,
            "description": f"Read by {Path(worker.notebook.name).name} cell {var.cell}, line {var.line} ({var.how})",
        }
        if var.required:
            field_["required"] = True
        elif var.has_default:
            field_["default"] = var.default
        if var.type == "boolean":
            field_ |= {"trueValue": "true", "falseValue": "false"}
        env.append({"key": var.key, "input": field_})
    if env:
        config["env"] = env
    return {
        "title": facts.title,
        "description": facts.description,
        "type": "serverless",
        "category": category,
        "config": config,
    }


def _tests(facts: Facts) -> tuple[list[dict], list[tuple[str, str]]]:
    tests, skipped = [], []
    for job in facts.jobs:
        if job.expected_failure:
            skipped.append((job.name, job.expected_failure))
            continue
        tests.append({"name": job.name, "input": job.input, "timeout": job.timeout_ms})
    return tests, skipped


def _test_config(facts: Facts, warnings: list[KitWarning]) -> dict[str, Any]:
    config: dict[str, Any] = (
        {"gpuTypeId": TEST_GPU, "gpuCount": 1, "allowedCudaVersions": hub.cuda_from(BASE_CUDA)}
        if facts.uses_cuda
        else {"cpuFlavor": CPU_FLAVOR}
    )
    env = []
    for var in facts.env:
        if var.has_default:
            value = var.default if isinstance(var.default, str) else json.dumps(var.default)
            env.append({"key": var.key, "value": value})
        elif var.required:
            # Never the value from this machine's environment: it may be a secret.
            warnings.append(
                KitWarning(
                    f"{var.key} is required and has no default: add it to config.env of {hub.TESTS} "
                    "(the Hub's tests start the worker with those values only)",
                    facts.notebook,
                    var.cell,
                    var.line,
                )
            )
    if env:
        config["env"] = env
    return config


# --------------------------------------------------------------------------- Dockerfile, README


def _dockerfile(worker: Worker, base_image: str) -> str:
    return f"""\
# The worker exported by the kit from {_one_line(worker.notebook.name)}, built from this folder
# alone: RunPod's GitHub integration and the Hub build it as is (or: docker build -t my-worker .).
# No GPU at build time, a public base image, and a docker build under 30 minutes.
ARG BASE_IMAGE={base_image}
FROM ${{BASE_IMAGE}}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_ROOT_USER_ACTION=ignore \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_BREAK_SYSTEM_PACKAGES=1
WORKDIR /app

# The pinned requirements in a layer of their own, so a change to the code alone reuses it.
# The base image's CUDA build of torch stays: its lines are left out and its version held.
COPY requirements.txt /app/requirements.txt
RUN python -m pip list --format=freeze | {{ grep -iE '^(torch|torchvision|torchaudio)==' || true; }} >/tmp/held.txt \\
    && sed -E -e 's/(^|[[:space:]]+)#.*$//' -e '/^[[:space:]]*$/d' requirements.txt \\
    | {{ grep -viE '^(torch|torchvision|torchaudio)([[:space:]<>=!~;@[]|$)' || true; }} >/tmp/requirements.pins \\
    && python -m pip install --progress-bar off -r /tmp/requirements.pins -c /tmp/held.txt \\
    && rm -f /tmp/held.txt /tmp/requirements.pins

COPY . /app
CMD ["python", "-u", "handler.py"]
"""


_DOCKERIGNORE = """\
# Not part of the image: the repository's own files and local caches.
.git
.github
.runpod
README.md
Dockerfile
.dockerignore
.venv
**/__pycache__
**/*.pyc
**/.ipynb_checkpoints
"""


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _readme(worker: Worker, facts: Facts, hub_json: dict, tests_json: dict) -> str:
    config = hub_json["config"]
    first = tests_json["tests"][0]
    request = json.dumps({"input": first["input"]}, ensure_ascii=False)
    sections = [
        f"# {facts.title}\n\n{facts.description}\n",
        "## Input and output\n\n"
        f"A job's `input`, as the notebook's test job {first['name']} sends it:\n\n"
        f"```json\n{json.dumps(first['input'], indent=2, ensure_ascii=False)}\n```\n",
    ]
    if facts.output_example is not None:
        sections[-1] += f"\nIts output, as the notebook recorded it:\n\n```\n{facts.output_example}\n```\n"
    else:
        sections[-1] += "\nIts output is what the handler returns, as JSON (run `kit test .` to see it).\n"
    if facts.env:
        rows = "\n".join(
            f"| `{v.key}` | {v.type} | {'required' if v.required else (json.dumps(v.default) if v.has_default else '(unset)')} |"
            for v in facts.env
        )
        sections.append(
            "## Environment variables\n\nSet on the endpoint (the Hub asks for them when it deploys):\n\n"
            f"| Variable | Type | Default |\n| --- | --- | --- |\n{rows}\n"
        )
    runs = (
        f"a GPU ({config['gpuIds']}, CUDA {', '.join(config['allowedCudaVersions'])})"
        if config["runsOn"] == "GPU"
        else f"CPU ({config['cpuFlavor']})"
    )
    sections.append(
        "## Deploy it from GitHub\n\n"
        "1. Push this folder to a GitHub repository.\n"
        "2. In the RunPod console: Serverless → New Endpoint → Import Git Repository; pick the repository "
        "and branch (the Dockerfile is at the root).\n"
        f"3. Choose {runs} and a container disk of {config['containerDiskInGb']} GB, and deploy.\n\n"
        "A new GitHub release rebuilds and redeploys the endpoint. RunPod's build limits: the `docker build` "
        "must finish within 30 minutes (the whole build, tests included, within 160), there is no GPU at build "
        "time, the base image must be public, and the image may not exceed 80 GB.\n\n"
        "To list it on the RunPod Hub: `.runpod/hub.json` and `.runpod/tests.json` are already here; create a "
        "GitHub release and add the repository on the Hub page. The Hub runs every test of tests.json on each "
        "release: each passes when its job completes within its `timeout`.\n"
    )
    sections.append(
        "## Call it\n\n"
        "```bash\n"
        "curl -X POST https://api.runpod.ai/v2/$ENDPOINT_ID/runsync \\\n"
        '  -H "Authorization: Bearer $RUNPOD_API_KEY" -H "Content-Type: application/json" \\\n'
        f"  -d {_shell_quote(request)}\n"
        "```\n"
    )
    sections.append(
        "## Where it comes from\n\n"
        f"Exported by the kit from `{_one_line(worker.notebook.name)}`: edit the notebook and run "
        f"`{_one_line(facts.command)}` again. The export rewrites only the files it wrote that are still as it "
        "wrote them: edit this README, the Dockerfile or the `.runpod` files and they are yours. "
        "`kit test .` runs the notebook's tests and every test of `.runpod/tests.json` as the Hub would.\n"
    )
    return "\n".join(sections)


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
