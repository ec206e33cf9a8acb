"""`kit deploy` against the local stand-in of RunPod's REST API: what a user sees, and how long it takes.

Runs the CLI as a user does (`python -m kit deploy`, a fresh interpreter each time) in a
temporary pod set-up: the stand-in (tests/runpod_rest_standin.py, validating every request
against RunPod's OpenAPI spec) knows one pod whose network volume is a temporary folder.

    .venv/bin/python bench/deploy_standin.py [--notebook notebooks/hello.ipynb] [--rounds 3]

Prints each command's output (docs/deploy.md quotes it), then the figures: the wall time from
starting `kit deploy` to its exit with the endpoint existing in the stand-in, for a first
deploy (export, requirements onto the volume, template, endpoint), an unchanged redeploy and
way B (--image); medians over rounds. On a host (not in a pod's container) every installed
distribution is newer than the machine's first process, so the first deploy installs all the
worker's requirements onto the volume, as on a stock pod where they were pip-installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from runpod_rest_standin import RestStandIn  # noqa: E402  (the tests' stand-in, beside them)

KEY = "bench-account-key"
POD = "pod-bench"


def run(args: list[str], env: dict[str, str], show: bool) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "kit", "deploy", *args], env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    if show:
        print(f"$ kit deploy {' '.join(args)}")
        print((result.stdout + result.stderr).rstrip())
        print()
    if result.returncode != 0:
        sys.exit(f"kit deploy {' '.join(args)} failed: {result.stderr.strip()}")
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", default="notebooks/hello.ipynb")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    figures: dict[str, list[float]] = {"first deploy": [], "unchanged redeploy": [], "way B (--image)": []}
    for round_ in range(options.rounds):
        with tempfile.TemporaryDirectory(prefix="kit-deploy-bench-") as tmp, RestStandIn(KEY) as api:
            mount = Path(tmp) / "workspace"
            mount.mkdir()
            api.add_pod(
                {
                    "id": POD,
                    "image": "runpod/pytorch:1.0.3-cu1281-torch291-ubuntu2404",
                    "volumeMountPath": str(mount),
                    "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
                    "networkVolume": {"id": "agv6w2qcg7", "name": "work", "size": 50, "dataCenterId": "EU-RO-1"},
                    "env": {"HF_HOME": f"{mount}/.cache/huggingface"},
                }
            )
            env = {**os.environ, "RUNPOD_API_KEY": KEY, "RUNPOD_REST_URL": api.url, "RUNPOD_POD_ID": POD, "HOME": tmp}
            show = round_ == 0
            if show:
                run([options.notebook, "--plan"], env, show)
            figures["first deploy"].append(run([options.notebook], env, show)[0])
            figures["unchanged redeploy"].append(run([options.notebook, "--json"], env, show)[0])
            b_env = {k: v for k, v in env.items() if k != "RUNPOD_POD_ID"}
            figures["way B (--image)"].append(
                run([options.notebook, "--image", "ghcr.io/me/hello:1", "--name", "hello-image"], b_env, show)[0]
            )
            assert api.invalid == [] and api.bad_answers == [], (api.invalid, api.bad_answers)
    print(f"kit deploy {options.notebook} against the stand-in, median of {options.rounds} rounds (wall time of the command):")
    for name, values in figures.items():
        print(f"  {name}: {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
