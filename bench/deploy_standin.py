"""`kit deploy` against the local stand-in of RunPod's REST API: what a user sees, and how long it takes.

Runs the CLI as a user does (`python -m kit deploy`, a fresh interpreter each time) in a
temporary pod set-up: the stand-in (tests/runpod_rest_standin.py, validating every request
against RunPod's OpenAPI spec) knows one pod whose network volume is a temporary folder.

    .venv/bin/python bench/deploy_standin.py [--notebook notebooks/hello.ipynb] [--rounds 3]
    .venv/bin/python bench/deploy_standin.py --in-image localhost/kit-base:bookworm --notebook notebooks/embeddings.ipynb

Prints each command's output (docs/deploy.md quotes it), then the figures: the wall time from
starting `kit deploy` to its exit with the endpoint existing in the stand-in, for a first
deploy (export, requirements onto the volume, template, endpoint), an unchanged redeploy and
way B (--image); medians over rounds.

--in-image BASE runs the pod side in a podman container of BASE (as root, via docker/image.sh)
instead: a stock pod where the user pip-installed the kit and the notebook's libraries after
the container started (the kit's wheel, and its "examples" extra but torch, which BASE has), so
the requirements installed onto the volume are what such a pod adds to its image; torch stays
the image's own. It prints that deploy's output, with the size and time of the install. On a host (not in a pod's container) every installed
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


def in_image(base: str, notebook: str) -> None:
    from test_deploy_image import host_pip_settings, kit_wheel
    from test_image import podman

    with tempfile.TemporaryDirectory(prefix="kit-deploy-bench-") as tmp, RestStandIn(KEY) as api:
        volume = Path(tmp) / "volume"
        volume.mkdir()
        api.add_pod(
            {
                "id": POD,
                "image": base,
                "volumeMountPath": "/workspace",
                "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
                "networkVolume": {"id": "agv6w2qcg7", "name": "work", "size": 50, "dataCenterId": "EU-RO-1"},
                "env": {"HF_HOME": "/workspace/.cache/huggingface"},
            }
        )
        wheel = kit_wheel(Path(tmp))
        pip_env, pip_mounts = host_pip_settings()
        script = (
            f"python -m pip install --quiet '/wheel/{wheel.name}[examples]' torch==$(python -c 'import torch; print(torch.__version__)') "
            f"&& kit deploy /src/{notebook}"
        )
        started = time.monotonic()
        result = podman(
            "run", "--rm", "--network=host", f"--volume={volume}:/workspace", f"--volume={ROOT}:/src:ro",
            f"--volume={wheel.parent}:/wheel:ro", *pip_env, *pip_mounts,
            f"--env=RUNPOD_API_KEY={KEY}", f"--env=RUNPOD_REST_URL={api.url}", f"--env=RUNPOD_POD_ID={POD}",
            base, "bash", "-c", script, timeout=1800, check=False,
        )  # fmt: skip
        print(f"$ kit deploy {notebook}   (in a container of {base}, after pip install of the kit and the examples' libraries)")
        print("\n".join(line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("WARNING: Location")))
        print(f"container wall time {time.monotonic() - started:.1f} s, exit {result.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", default="notebooks/hello.ipynb")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-image", default=None, metavar="BASE", help="run the pod side in a container of BASE (podman)")
    options = parser.parse_args()
    if options.in_image:
        in_image(options.in_image, options.notebook)
        return
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
