"""Notebook -> worker directory.

`build_worker` turns a notebook into the worker's files in memory (every front
end calls it: the CLI and the panel through `export_notebook`, the nbconvert
exporter directly); `export_notebook` writes them to disk atomically, so a
failed export leaves an existing directory exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kit import percent, workerdir
from kit.errors import KitEnvironmentError, KitError, KitWarning
from kit.export import files as worker_files
from kit.export import runtime
from kit.export.checks import Analysis, analyse, test_name_warnings
from kit.export.deps import Requirements, infer_requirements
from kit.export.facts import parse_test_cells
from kit.export.jobs import find_test_jobs
from kit.export.notebook import Notebook, read_notebook
from kit.workerdir import HandlerKind


@dataclass
class Worker:
    """A worker's files, before they are written."""

    notebook: Notebook
    analysis: Analysis
    requirements: Requirements
    jobs: list[dict]
    files: dict[str, str]  # name -> text
    warnings: list[KitWarning] = field(default_factory=list)
    data: worker_files.DataFiles = field(default_factory=worker_files.DataFiles)

    @property
    def copies(self) -> list[Path]:
        return self.requirements.local_modules

    @property
    def copied_files(self) -> dict[str, Path]:
        """Worker-relative path -> source file, for each file copied beside handler.py (local modules, data files)."""
        return {**self.requirements.local_files, **self.data.files}

    @property
    def copied(self) -> dict[str, str]:
        """What was copied beside handler.py (a module, a package or folder as "name/", a data file) -> why."""
        modules = {
            path.name + ("/" if path.is_dir() else ""): f"imported by {self.requirements.module_reasons.get(path.name, 'the notebook')}"
            for path in self.requirements.local_modules
        }
        return {**modules, **self.data.reasons}


@dataclass
class ExportResult:
    notebook: str
    out_dir: Path
    files: list[str]  # the files the export wrote, then what it copied (`copied`)
    warnings: list[KitWarning]
    requirements: Requirements
    handler_kind: str
    jobs: list[dict]
    notes: list[str] = field(default_factory=list)  # what --repo decided, for the CLI to print
    kept: list[str] = field(default_factory=list)  # repository files left as the user has them
    copied: dict[str, str] = field(default_factory=dict)  # a copied module, folder or data file -> why


def default_out_dir(notebook_path: str | Path) -> Path:
    """Where every front end exports a notebook by default: build/<stem> in the notebook's own folder,
    wherever the command runs (docs/worker-files.md)."""
    path = Path(notebook_path)
    return path.parent / "build" / path.stem


def build_worker(
    notebook: Notebook,
    *,
    extra=(),
    exclude=(),
    include=(),
    command: str | None = None,
    include_secrets: bool = False,
) -> Worker:
    """The worker's files for `notebook`. Raises KitError on the first user mistake.

    `include`: globs (relative to the notebook's folder) of more files to copy beside handler.py."""
    analysis = analyse(notebook)
    requirements = infer_requirements(notebook, analysis, extra=extra, exclude=exclude, include_secrets=include_secrets)
    data = worker_files.data_files(
        notebook,
        [(parsed.index, parsed.translated.source) for parsed in analysis.cells],
        requirements.closure or worker_files.LocalModules(),
        include=include,
        include_secrets=include_secrets,
    )
    test_cells = parse_test_cells(notebook)
    warnings = list(analysis.warnings)
    for test in test_cells:
        warnings += test.translated.warnings
    warnings += [
        KitWarning(message, notebook.name, cell, line) for cell, line, message in test_name_warnings(notebook, analysis, test_cells)
    ]
    warnings += requirements.warnings
    warnings += data.warnings

    jobs = []
    for job in find_test_jobs(test_cells):
        try:
            json.dumps(job["job"])
        except (TypeError, ValueError):
            warnings.append(
                KitWarning("this job is not JSON, so it cannot be a RunPod job; skipped", notebook.name, job["cell"], job["line"])
            )
            continue
        jobs.append(job)
    if not jobs:
        warnings.append(
            KitWarning(
                'no `test` cell calls handler({...}) with a job literal such as {"input": {...}}: '
                "test_input.json not written, so `python handler.py` has no job to run locally",
                notebook.name,
            )
        )

    command = command or export_command(notebook.name, extra=extra, exclude=exclude, include=include)
    files = {
        workerdir.HANDLER: _render_handler(notebook, analysis, command),
        workerdir.REQUIREMENTS: requirements.text(
            f"# Requirements of the worker exported from {comment_text(notebook.name)} by the kit; each line says why.\n"
            f"# Regenerate with: {comment_text(command)}\n"
        ),
        workerdir.TESTS: _render_tests(notebook, test_cells, command),
    }
    if jobs:
        files[workerdir.TEST_INPUT] = json.dumps(jobs[0]["job"], indent=2) + "\n"
    files.update(runtime.support_files(batched=analysis.batch_handler_kind is not None))
    _check_no_clash(notebook, files, requirements)
    manifest = workerdir.Manifest(
        notebook=notebook.name,
        handler_kind=analysis.handler_kind.value,
        setup_cells=[c.index for c in analysis.cells if c.role == "setup"],
        handler_cells=[c.index for c in analysis.cells if c.role == "handler"],
        test_cells=[t.translated.cell.index for t in test_cells],
        jobs=jobs,
        batch_handler_kind=None if analysis.batch_handler_kind is None else analysis.batch_handler_kind.value,
        command=command,
        # Every file the kit writes, so that a re-export replaces these and nothing else.
        files=sorted([*files, workerdir.MANIFEST, *requirements.local_files, *data.files]),
    )
    files[workerdir.MANIFEST] = manifest.to_text()
    return Worker(notebook, analysis, requirements, jobs, files, warnings, data)


def _check_no_clash(notebook: Notebook, files: dict[str, str], requirements: Requirements) -> None:
    """A local module named like a generated file would replace it (tests.py, worker_loop.py, handler.py)."""
    generated = {*files, *workerdir.GENERATED}
    for module in requirements.local_modules:
        if module.name in generated:
            raise notebook.error(
                f"the local module {module.name} has the name of a file kit export writes",
                f"rename {module.name} (the worker's own files are {', '.join(sorted(generated))})",
            )


def comment_text(text: str) -> str:
    """`text` made safe for one `#` comment line in generated code or requirements:
    line breaks and other unprintable characters are escaped, so a file name cannot
    end the comment and inject a line (pip also splits on \\f, \\v, \\x1c-\\x1e, \\x85, \\u2028)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def export_command(
    notebook: str,
    out_dir: str | Path | None = None,
    *,
    extra=(),
    exclude=(),
    include=(),
    repo: bool = False,
    category: str | None = None,
) -> str:
    """The `kit export` command line that writes this worker, as the files print it to regenerate them."""
    words = ["kit", "export", str(notebook)]
    if out_dir is not None:
        words += ["-o", str(out_dir)]
    for requirement in extra:
        words += ["--extra", requirement]
    for name in exclude:
        words += ["--exclude", name]
    for pattern in include:
        words += ["--include", pattern]
    if repo:
        words += ["--repo"] + (["--category", category] if category else [])
    return shlex.join(words)


def _render_handler(notebook: Notebook, analysis: Analysis, command: str) -> str:
    header = [
        f"# handler.py: the RunPod serverless worker exported by the kit from {comment_text(notebook.name)}.\n",
        "# Generated: edit the notebook, not this file, and regenerate with\n",
        f"#     {comment_text(command)}\n",
        "# Each `# %% cell N [tag]` marker names the notebook cell the code below it comes from.\n",
    ]
    if analysis.future_imports:
        header.append(f"from __future__ import {', '.join(analysis.future_imports)}\n")
    # The worker loop comes first: it imports runpod without the CPU probe that costs every
    # cold start, and on runpod 2.0 reports a setup cell that raises as a failed job (see
    # worker_loop.py). Importing handler.py (kit test, the notebook) runs neither.
    header.append(
        'if __name__ == "__main__":\n    import worker_loop  # noqa: E402 (runpod without its CPU probe; setup failures reported)\n'
    )
    if analysis.batch_handler_kind == HandlerKind.FUNCTION:
        header.append(runtime.batch_split_header())
    cells = [(p.index, p.role, p.translated.source) for p in analysis.cells]
    if not analysis.defines_handler:
        # Only batch_handler: the handler(job) the export provides goes after the last cell, so
        # importing handler.py (kit test, tests.py, the SDK's local test mode) sees it too.
        index, role, source = cells[-1]
        cells[-1] = (index, role, source.rstrip("\n") + "\n\n\n" + runtime.provided_handler())
    main = runtime.main_block(
        analysis.handler_kind.value,
        analysis.has_concurrency_modifier,
        analysis.start.config_name,
        batched=analysis.batch_handler_kind is not None,
    )
    return percent.render("".join(header), cells, main)


def _render_tests(notebook: Notebook, test_cells, command: str) -> str:
    header = (
        f"# tests.py: the `test` cells of {comment_text(notebook.name)}, exported by the kit.\n"
        "# Not a module to import: as in the notebook, the cells run in the worker's namespace\n"
        "# and may `await` at top level. Run them with: kit test <this directory>\n"
        f"# Regenerate with: {comment_text(command)}\n"
    )
    return percent.render(header, [(t.translated.cell.index, "test", t.translated.source) for t in test_cells])


# --------------------------------------------------------------------------- writing


def export_notebook(
    path: str | Path,
    out_dir: str | Path | None = None,
    *,
    extra=(),
    exclude=(),
    include=(),
    include_secrets: bool = False,
    repo: bool = False,
    category: str | None = None,
) -> ExportResult:
    """Export the notebook at `path` into `out_dir` (default build/<stem> in the notebook's folder);
    `repo`: also the files that make it a repository RunPod builds by itself (kit.export.repo)."""
    from kit.export.repo import with_repo

    notebook = read_notebook(path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    command = export_command(notebook.name, out_dir, extra=extra, exclude=exclude, include=include, repo=repo, category=category)
    worker = build_worker(notebook, extra=extra, exclude=exclude, include=include, command=command, include_secrets=include_secrets)
    worker, keep, made = with_repo(worker, out, repo=repo, category=category)
    write_worker(worker, out, keep=keep)
    copied = worker.copied
    return ExportResult(
        notebook=notebook.name,
        out_dir=out,
        files=sorted(worker.files) + sorted(copied),
        warnings=worker.warnings,
        requirements=worker.requirements,
        handler_kind=worker.analysis.handler_kind.value,
        jobs=worker.jobs,
        notes=made.notes,
        kept=sorted(keep) if repo else [],
        copied=copied,
    )


def write_worker(worker: Worker, out_dir: Path, *, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Write the worker's files into `out_dir`, replacing only what an earlier export wrote.

    The new files are written to a temporary sibling directory first. A new
    `out_dir` is that directory, renamed. An existing one keeps every file its
    manifest (kit.json) does not list: the listed files are moved aside, the new
    ones moved in, and any failure moves everything back, so a failed export
    leaves the old output as it was and no file the kit did not write is touched.
    `keep`: files an earlier export wrote that stay as they are (repository files the user changed).
    """
    previous = _previous_files(worker, out_dir)
    if previous is not None:
        previous = [name for name in previous if name not in keep]
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=parent))
    except OSError as error:
        raise KitEnvironmentError(f"cannot create {parent}: {error.strerror}", "choose another output directory with -o") from None
    retired = None
    try:
        written: dict[str, str | Path] = {**worker.files, **worker.copied_files}
        for name, content in written.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy2(content, target, follow_symlinks=False)
            else:
                target.write_text(content, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)
        if previous is None:
            os.replace(staging, out_dir)
        else:
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            _swap_files(staging, out_dir, retired, sorted(written), previous)
    except OSError as error:
        raise KitEnvironmentError(
            f"cannot write {out_dir}: {error.strerror}", "check the permissions and free space, or choose another -o"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def _previous_files(worker: Worker, out_dir: Path) -> list[str] | None:
    """What an earlier export wrote in `out_dir` (None: there is no `out_dir` yet).

    Refuses a directory the kit did not write, one that holds the notebook, and
    a re-export that would overwrite a file the earlier export did not write.
    """
    if worker.notebook.path is not None and out_dir.exists():
        notebook = worker.notebook.path.resolve()
        if out_dir.resolve() in notebook.parents:
            raise KitError(
                f"refusing to export into {out_dir}: the notebook {worker.notebook.name} lies inside it",
                "choose an output directory outside the notebook's folder with -o",
            )
    if not os.path.lexists(out_dir):
        return None
    if out_dir.is_symlink():
        raise KitError(f"{out_dir} is a symlink; the kit writes only into a real directory", "give the directory it points to with -o")
    if not out_dir.is_dir():
        raise KitError(f"{out_dir} exists and is not a directory", "choose another output directory with -o")
    if not any(out_dir.iterdir()):
        return []  # empty: the new files are moved in
    manifest = out_dir / workerdir.MANIFEST
    if not manifest.is_file() or manifest.is_symlink():
        raise KitError(
            f"refusing to replace {out_dir}: it is not empty and was not written by kit export",
            "choose a new or empty output directory with -o",
        )
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        # An export from before the manifest listed its files: only the generated ones are known.
        listed = list(workerdir.GENERATED)
    previous = []
    for name in listed:
        if (
            isinstance(name, str)
            and _is_inside(name)
            and _within(out_dir, name)
            and os.path.lexists(out_dir / name)
            and not (out_dir / name).is_dir()
        ):
            previous.append(name)
    ours = set(previous)
    for name in [*worker.files, *worker.copied_files]:
        parts = Path(name).parts
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            path = out_dir / prefix
            is_last = depth == len(parts)
            if prefix in ours or not os.path.lexists(path):
                continue
            if is_last or path.is_symlink() or not path.is_dir():
                raise KitError(
                    f"refusing to overwrite {path}: an earlier export did not write it",
                    f"move it out of {out_dir}, or choose another output directory with -o",
                )
    return previous


def _within(out_dir: Path, name: str) -> bool:
    """No folder on the way from out_dir to `name` is a symlink (which could lead out of out_dir)."""
    parts = Path(name).parts[:-1]
    return not any((out_dir.joinpath(*parts[: depth + 1])).is_symlink() for depth in range(len(parts)))


def _is_inside(name: str) -> bool:
    path = Path(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\0" not in name


def _swap_files(staging: Path, out_dir: Path, retired: Path, new: list[str], previous: list[str]) -> None:
    """Move `previous` (relative to out_dir) aside into `retired` and `new` in from `staging`; undo on failure."""
    moved: list[tuple[Path, Path]] = []  # (from, to), in order
    made: list[Path] = []  # directories created in out_dir
    try:
        for name in previous:
            aside = retired / name
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.rename(out_dir / name, aside)
            moved.append((out_dir / name, aside))
        for name in new:
            target = out_dir / name
            for directory in reversed(target.parents):
                if directory != out_dir and out_dir in directory.parents and not directory.exists():
                    directory.mkdir()
                    made.append(directory)
            os.rename(staging / name, target)
            moved.append((staging / name, target))
    except BaseException:
        for source, target in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(target, source)
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    # Folders only the earlier export's files were in, now empty (rmdir never removes a file).
    for name in sorted(previous, key=lambda n: -len(Path(n).parts)):
        for directory in Path(name).parents:
            if directory != Path("."):
                with contextlib.suppress(OSError):
                    (out_dir / directory).rmdir()


@contextmanager
def worker_dir(target: str | Path, out_dir: str | Path | None = None, on_export: Callable[[ExportResult], None] | None = None):
    """A worker directory for `target`: a notebook (exported first) or a worker directory.

    `on_export` receives the export's result (its warnings, requirements) when
    `target` is a notebook.
    """
    path = Path(target)
    if path.is_dir():
        if not workerdir.is_worker_dir(path):
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
