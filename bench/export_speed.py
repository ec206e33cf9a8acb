#!/usr/bin/env python
"""kit export vs `jupyter nbconvert --to python`: whole processes, side by side.

Both commands run on the same notebooks, interleaved round by round so that
machine noise hits both alike; the figure that matters is the ratio of the
medians. Usage:

    .venv/bin/python bench/export_speed.py [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("notebooks", nargs="*", default=sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb")))
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in args.notebooks:
            kit, nbconvert = [], []
            commands = {
                "kit": [str(BIN / "kit"), "export", notebook, "-o", f"{tmp}/kit"],
                "nbconvert": [str(BIN / "jupyter"), "nbconvert", "--to", "python", notebook, "--output-dir", f"{tmp}/nbconvert"],
            }
            for name in commands:  # warm the file cache once, untimed
                timed(commands[name])
            for _ in range(args.rounds):
                kit.append(timed(commands["kit"]))
                nbconvert.append(timed(commands["nbconvert"]))
            k, n = statistics.median(kit), statistics.median(nbconvert)
            rows.append({"notebook": notebook, "kit_export_s": round(k, 3), "nbconvert_to_python_s": round(n, 3), "ratio": round(k / n, 2)})

    if args.json:
        print(json.dumps({"rounds": args.rounds, "results": rows}, indent=2))
        return 0
    print(f"median of {args.rounds} rounds, whole processes, interleaved")
    print(f"{'notebook':32} {'kit export':>11} {'nbconvert':>11} {'ratio':>7}")
    for row in rows:
        print(f"{row['notebook']:32} {row['kit_export_s']:>10.3f}s {row['nbconvert_to_python_s']:>10.3f}s {row['ratio']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
