"""Save -> first job served by the new code, for a warm reload and a cold restart, side by side.

Serves a copy of notebooks/embeddings.ipynb with `kit serve --watch`, then
alternates two kinds of save, each written as JupyterLab writes it (a new file
renamed into place):

- warm: only the handler cell changes (the `model` label it returns);
- cold: the setup cell changes too, so the workers restart and load the model again.

After each save the client calls /runsync with the notebook's test job until
the answer carries the new label; the figure is the time from just before the
rename to that answer, plus the one the kit prints on its reload line.

    .venv/bin/python bench/reload_speed.py [--rounds 3]

Machine-dependent: quote the numbers with the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import requests

ROOT = Path(__file__).resolve().parent.parent


def save(path: Path, round_: int, cold: bool) -> float:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "handler" in tags:
            cell.source = re.sub(r'"model": "[^"]*"', f'"model": "edit-{round_}"', cell.source)
        if cold and "setup" in tags:
            cell.source = re.sub(r"\nBENCH_SETUP = \d+$", "", cell.source) + f"\nBENCH_SETUP = {round_}"
    partial = path.with_name(f".~{path.name}")
    nbformat.write(nb, partial)
    saved = time.time()
    os.replace(partial, path)
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="warm and cold saves, each (default 3)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kit-reload-bench-"))
    notebook = work / "embeddings.ipynb"
    shutil.copy(ROOT / "notebooks" / "embeddings.ipynb", notebook)
    job = {"input": {"sentences": ["A man is eating food."]}}
    process = subprocess.Popen(
        [sys.executable, "-m", "kit", "serve", str(notebook), "--watch", "--port", "0"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in process.stdout), daemon=True).start()
    results = {"warm": [], "cold": [], "steady": []}
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None:
            assert process.poll() is None and time.monotonic() < deadline, "\n".join(lines)
            url = next((m.group(1) for line in list(lines) if (m := re.search(r"endpoint: (http://\S+)/v2", line))), None)
            time.sleep(0.1)
        runsync = f"{url}/v2/bench/runsync"
        assert requests.post(runsync, json=job, timeout=120).json()["status"] == "COMPLETED"
        for _ in range(5):  # what one job costs on this machine now: the floor of either figure
            started = time.time()
            requests.post(runsync, json=job, timeout=120)
            results["steady"].append(time.time() - started)
        number = 0  # reloads count from 1
        for round_ in range(1, 2 * args.rounds + 1):
            kind = "cold" if round_ % 2 == 0 else "warm"
            saved = save(notebook, round_, kind == "cold")
            while True:
                state = requests.post(runsync, json=job, timeout=120).json()
                if state.get("output", {}).get("model") == f"edit-{round_}":
                    break
            client = time.time() - saved
            number += 1
            line = None
            deadline = time.monotonic() + 30
            while line is None and time.monotonic() < deadline:
                line = next((l for l in list(lines) if l.startswith(f"reload {number}: ")), None)
                time.sleep(0.02)
            assert line and kind in line.split(" — ")[1], line
            in_place = float(re.search(r"in place in \d+ worker\(s\) (\d+\.\d+) s after the save", line).group(1))
            results[kind].append((client, in_place))
            print(f"{kind}: save -> new code in place {in_place:.2f} s, first answer on the new code {client:.2f} s", flush=True)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(work, ignore_errors=True)
    for index, what in ((0, "save -> first answer on the new code"), (1, "save -> new code in place")):
        warm = statistics.median(r[index] for r in results["warm"])
        cold = statistics.median(r[index] for r in results["cold"])
        print(
            f"median over {args.rounds} each, {what}: warm reload {warm:.2f} s, cold restart {cold:.2f} s ({cold / max(warm, 0.01):.0f}x)"
        )
    job = statistics.median(results["steady"])
    print(f"one embeddings job at steady state, for scale: {job:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
