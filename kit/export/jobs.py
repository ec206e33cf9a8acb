"""The test-job finder: the job literals the `test` cells pass to the handler.

They become kit.json's `jobs` (what `kit test` sends through the SDK), the
first becomes test_input.json, and the panel pre-fills its Run box with it.
The finder reads the JobSites kit.export.facts kept of each test cell.
"""

from __future__ import annotations

from collections.abc import Iterable

from kit.export.facts import JobSite, TestCell


def find_test_jobs(test_cells: Iterable[TestCell]) -> list[dict]:
    """find_jobs over the test cells."""
    return find_jobs((test.translated.cell.index, test.job_sites) for test in test_cells)


def find_jobs(cells: Iterable[tuple[int, list[JobSite]]]) -> list[dict]:
    """Job literals passed to `handler(...)` or `batch_handler([...])` in test code, in order.

    `cells` holds (cell number, the cell's JobSites), in order. A job is a dict literal with
    an "input" key, passed directly or through a variable that test code assigned a literal
    to earlier (in this cell or an earlier one).
    """
    names: dict[str, object] = {}
    jobs: list[dict] = []
    for cell, sites in cells:
        for site in sites:
            if site.call is None and site.name is not None:
                names[site.name] = site.value
            elif site.call == "handler":
                job = names.get(site.name) if site.name is not None else site.value
                if isinstance(job, dict) and "input" in job:
                    jobs.append({"cell": cell, "line": site.line, "job": job})
            elif site.call == "batch_handler":
                jobs += [{"cell": cell, "line": site.line, "job": job} for job in _batch_jobs(site, names)]
    return jobs


def _batch_jobs(site: JobSite, names: dict[str, object]) -> list[dict]:
    """The jobs of a list passed to batch_handler: a list literal, or a name assigned one, of job literals."""
    value: object
    if site.name is not None:
        value = names.get(site.name)
    elif site.items is not None:
        value = [names.get(name) if name is not None else item for name, item in site.items]
    else:
        value = None
    return [job for job in value if isinstance(job, dict) and "input" in job] if isinstance(value, list) else []
