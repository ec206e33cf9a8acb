"""Notebook -> worker directory.

`build_worker` turns a notebook into the worker's files in memory (every front
end calls it: the CLI and the panel through `export_notebook`, the nbconvert
exporter directly); `export_notebook` writes them to disk atomically, so a
failed export leaves an existing directory exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import contextlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kit.build import runtime
from kit.build.analysis import Analysis, analyse, find_jobs, parse_test_cells
from kit.build.deps import Requirements, infer_requirements
from kit.errors import KitError, KitWarning
from kit.build.notebook import Notebook, marker, read_notebook

MANIFEST = "kit.json"


@dataclass
class Worker:
    """A worker's files, before they are written."""

    notebook: Notebook
    analysis: Analysis
    requirements: Requirements
    jobs: list[dict]
    files: dict[str, str]  # name -> text
    warnings: list[KitWarning] = field(default_factory=list)

    @property
    def copies(self) -> list[Path]:
        return self.requirements.local_modules


@dataclass
class ExportResult:
    notebook: str
    out_dir: Path
    files: list[str]
    warnings: list[KitWarning]
    requirements: Requirements
    handler_kind: str
    jobs: list[dict]


def default_out_dir(notebook_path: str | Path) -> Path:
    return Path("build") / Path(notebook_path).stem


def build_worker(notebook: Notebook, *, extra=(), exclude=(), command: str | None = None) -> Worker:
    """The worker's files for `notebook`. Raises KitError on the first user mistake."""
    analysis = analyse(notebook)
    requirements = infer_requirements(notebook, analysis, extra=extra, exclude=exclude)
    test_cells = parse_test_cells(notebook)
    warnings = [KitWarning(message, notebook.name, cell, line) for cell, line, message in analysis.warnings]
    for test in test_cells:
        warnings += [KitWarning(m, notebook.name, test.translated.cell.index, line) for line, m in test.translated.warnings]
    warnings += [KitWarning(message, notebook.name) for message in requirements.warnings]

    jobs = []
    for job in find_jobs([(t.translated.cell.index, t.tree) for t in test_cells]):
        try:
            json.dumps(job["job"])
        except (TypeError, ValueError):
            warnings.append(KitWarning("this job is not JSON, so it cannot be a RunPod job; skipped", notebook.name, job["cell"], job["line"]))
            continue
        jobs.append(job)
    if not jobs:
        warnings.append(
            KitWarning(
                "no `test` cell calls handler({...}) with a job literal such as {\"input\": {...}}: "
                "test_input.json not written, so `python handler.py` has no job to run locally",
                notebook.name,
            )
        )

    command = command or f"kit export {notebook.name}"
    files = {
        "handler.py": _render_handler(notebook, analysis, command),
        "requirements.txt": requirements.text(
            f"# Requirements of the worker exported from {notebook.name} by the kit; each line says why.\n"
            f"# Regenerate with: {command}\n"
        ),
        "tests.py": _render_tests(notebook, test_cells, command),
        MANIFEST: json.dumps(
            {
                "notebook": notebook.name,
                "handler_kind": analysis.handler_kind,
                "setup_cells": [c.index for c in analysis.cells if c.role == "setup"],
                "handler_cells": [c.index for c in analysis.cells if c.role == "handler"],
                "test_cells": [t.translated.cell.index for t in test_cells],
                "jobs": jobs,
            }
            | ({"batch_handler_kind": analysis.batch_handler_kind} if analysis.batch_handler_kind else {}),
            indent=2,
        )
        + "\n",
    }
    if jobs:
        files["test_input.json"] = json.dumps(jobs[0]["job"], indent=2) + "\n"
    files.update(runtime.support_files(batched=analysis.batch_handler_kind is not None))
    for copied in requirements.local_modules:
        if copied.name in files or copied.stem + ".py" in files:
            raise notebook.error(f"the local module {copied.name} has the name of a file the kit writes beside handler.py", "rename the module")
    return Worker(notebook, analysis, requirements, jobs, files, warnings)


def _render_handler(notebook: Notebook, analysis: Analysis, command: str) -> str:
    parts = [
        f"# handler.py: the RunPod serverless worker exported by the kit from {notebook.name}.\n",
        "# Generated: edit the notebook, not this file, and regenerate with\n",
        f"#     {command}\n",
        "# Each `# %% cell N [tag]` marker names the notebook cell the code below it comes from.\n",
    ]
    if analysis.future_imports:
        parts.append(f"from __future__ import {', '.join(analysis.future_imports)}\n")
    if any(item.module == "runpod" for item in analysis.imports):
        # The setup imports runpod itself: let the worker loop import it first, without the
        # CPU probe that costs every cold start (see worker_loop.py).
        parts.append('if __name__ == "__main__":\n    import worker_loop  # noqa: E402 (runpod, imported without its 1.3 s CPU probe)\n')
    for parsed in analysis.cells:
        parts.append(f"\n{marker(parsed.translated.cell)}\n")
        parts.append(_with_newline(parsed.translated.source))
    batched = analysis.batch_handler_kind is not None
    if not analysis.defines_handler:  # after the last cell, so `kit test` and tests.py see it too
        parts.append("\n\n" + runtime.provided_handler())
    parts.append("\n\n")
    parts.append(runtime.main_block(analysis.handler_kind, analysis.has_concurrency_modifier, batched=batched))
    return "".join(parts)


def _render_tests(notebook: Notebook, test_cells, command: str) -> str:
    parts = [
        f"# tests.py: the `test` cells of {notebook.name}, exported by the kit.\n",
        "# Not a module to import: as in the notebook, the cells run in the worker's namespace\n",
        "# and may `await` at top level. Run them with: kit test <this directory>\n",
        f"# Regenerate with: {command}\n",
    ]
    for test in test_cells:
        parts.append(f"\n{marker(test.translated.cell)}\n")
        parts.append(_with_newline(test.translated.source))
    return "".join(parts)


def _with_newline(source: str) -> str:
    return source if source.endswith("\n") or not source else source + "\n"


# --------------------------------------------------------------------------- writing


def export_notebook(path: str | Path, out_dir: str | Path | None = None, *, extra=(), exclude=()) -> ExportResult:
    """Export the notebook at `path` into `out_dir` (default build/<stem>)."""
    notebook = read_notebook(path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    command = f"kit export {notebook.name}" + (f" -o {out_dir}" if out_dir is not None else "")
    worker = build_worker(notebook, extra=extra, exclude=exclude, command=command)
    write_worker(worker, out)
    return ExportResult(
        notebook=notebook.name,
        out_dir=out,
        files=sorted(worker.files) + [p.name for p in worker.copies],
        warnings=worker.warnings,
        requirements=worker.requirements,
        handler_kind=worker.analysis.handler_kind,
        jobs=worker.jobs,
    )


def write_worker(worker: Worker, out_dir: Path) -> None:
    """Write into a temporary sibling directory, then swap it in."""
    _check_replaceable(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=parent))
    except OSError as error:
        raise KitError(f"cannot create {parent}: {error.strerror}", "choose another output directory with -o") from None
    try:
        for name, text in worker.files.items():
            (staging / name).write_text(text, encoding="utf-8")
        for source in worker.copies:
            if source.is_dir():
                shutil.copytree(source, staging / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, staging / source.name)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.replace(out_dir, retired / out_dir.name)
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise KitError(f"cannot write {out_dir}: {error.strerror}", "check the permissions and free space, or choose another -o") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise KitError(f"{out_dir} exists and is not a directory", "choose another output directory with -o")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise KitError(
            f"refusing to replace {out_dir}: it is not empty and was not written by kit export",
            "choose a new or empty output directory with -o",
        )


@contextmanager
def worker_dir(target: str | Path, out_dir: str | Path | None = None, on_export: Callable[[ExportResult], None] | None = None):
    """A worker directory for `target`: a notebook (exported first) or a worker directory.

    `on_export` receives the export's result (its warnings, requirements) when
    `target` is a notebook.
    """
    path = Path(target)
    if path.is_dir():
        if not (path / "handler.py").is_file():
            raise KitError(f"{target}: no handler.py in this directory", "give a notebook or a directory written by kit export")
        yield path
        return
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kit-worker-"))) / path.stem
        result = export_notebook(path, out_dir)
        if on_export:
            on_export(result)
        yield result.out_dir
