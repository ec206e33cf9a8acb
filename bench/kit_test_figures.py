"""What `kit test` reports for a notebook, over a few runs: cold start and per-job times.

    .venv/bin/python bench/kit_test_figures.py [NOTEBOOK] [--runs N]

Each run exports the notebook and tests it in a fresh interpreter, exactly as
`kit test NOTEBOOK --json` does; the figures are the medians of the runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

from kit.test.run import run_notebook_tests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", default="notebooks/embeddings.ipynb")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    rows = []
    for _ in range(args.runs):
        started = time.perf_counter()
        report = run_notebook_tests(args.notebook)
        if not report.ok:
            raise SystemExit("\n".join(report.lines()))
        rows.append(
            {
                "wall": time.perf_counter() - started,
                "cold_start": report.cold_start.seconds,
                "setup": report.cold_start.setup_seconds,
                "import_runpod": report.cold_start.runpod_import_seconds,
                "tests": sum(t.seconds for t in report.tests),
                "jobs": [j.seconds for j in report.jobs],
                "sizes": [j.size for j in report.jobs],
            }
        )

    def median(key):
        return statistics.median(row[key] for row in rows)

    print(f"{args.notebook}: median of {args.runs} runs of kit test")
    print(f"  kit test wall time     {median('wall'):8.2f} s  (export + fresh interpreter + everything below)")
    print(f"  cold start             {median('cold_start'):8.2f} s")
    print(f"    setup cells          {median('setup'):8.2f} s")
    print(f"    import runpod        {median('import_runpod'):8.2f} s")
    print(f"  test cells             {median('tests') * 1000:8.1f} ms")
    for index in range(len(rows[0]["jobs"])):
        seconds = statistics.median(row["jobs"][index] for row in rows)
        print(f"  job {index + 1}                  {seconds * 1000:8.1f} ms  result {rows[0]['sizes'][index]} bytes")


if __name__ == "__main__":
    main()
