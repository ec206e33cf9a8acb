#!/usr/bin/env python
"""Does reading a long cell in pieces pay? `kit export` of a 200,000-line cell, read in pieces and whole.

For each role the long cell can have (setup: exported; test: read for jobs and
names; untagged: read only to explain a name the worker lacks), the same export
runs with the kit as it is and with PIECE_LINES raised so that every cell is
read whole, interleaved round by round. Peak memory (KB) and seconds, medians.
Usage:

    .venv/bin/python bench/long_cell.py [--rounds 3] [--lines 200000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# kit export in this interpreter, with every cell read whole when argv[1] is "whole".
EXPORT = """
import sys
import kit.export.pieces
if sys.argv[1] == "whole":
    kit.export.pieces.PIECE_LINES = 10**9
from kit.cli import main
sys.exit(main(["export", *sys.argv[2:]]))
"""


def notebook(path: Path, role: str | None, lines: int) -> Path:
    long = "".join(f"row_{i} = {i}\n" for i in range(lines))
    handler = "def handler(job):\n    return row_1" if role == "setup" else "def handler(job):\n    return job"
    if role is None:
        handler = "def handler(job):\n    return row_1"  # defined only in the untagged cell: an export error that names it
    cells = [(role, long), ("handler", handler), ("test", "handler({'input': 1})")]
    data = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {"cell_type": "code", "metadata": {"tags": [tag] if tag else []}, "source": source, "outputs": [], "execution_count": None}
            for tag, source in cells
        ],
    }
    path.write_text(json.dumps(data))
    return path


def measured(mode: str, path: Path, out: Path) -> tuple[float, int, int]:
    """(seconds, peak KB, exit code) of one export, as /usr/bin/time reports them."""
    run = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", sys.executable, "-c", EXPORT, mode, str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds, peak = run.stderr.split()[-2:]
    return float(seconds), int(peak), run.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines", type=int, default=200_000)
    args = parser.parse_args()
    print(f"{args.lines}-line cell, median of {args.rounds} rounds, interleaved")
    print(f"{'long cell':10} {'exit':>4} {'pieces s':>9} {'whole s':>9} {'pieces KB':>10} {'whole KB':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for role in ("setup", "test", None):
            path = notebook(Path(tmp) / f"long-{role}.ipynb", role, args.lines)
            results: dict[str, list[tuple[float, int, int]]] = {"pieces": [], "whole": []}
            for _ in range(args.rounds):
                for mode in results:
                    results[mode].append(measured(mode, path, Path(tmp) / f"out-{mode}"))
            time = {mode: statistics.median(r[0] for r in runs) for mode, runs in results.items()}
            peak = {mode: statistics.median(r[1] for r in runs) for mode, runs in results.items()}
            code = results["pieces"][0][2]
            print(
                f"{role or 'untagged':10} {code:>4} {time['pieces']:>9.2f} {time['whole']:>9.2f} {peak['pieces']:>10.0f} {peak['whole']:>10.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
