"""The worker's requirements, inferred from the exported cells.

Guessing distributions from module names is wrong often (`cv2`, `sklearn`,
`PIL`, `yaml`), so the kit asks the environment the export runs in (from the
panel, the kernel's own): each imported module is mapped to the distribution
that installed it, pinned to the installed version. `%pip install` lines are
kept as the user wrote them. The result is sorted and stable, so re-exporting
an unchanged notebook gives the same bytes.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError, KitWarning
from kit.export import files
from kit.export.checks import Analysis, analyse
from kit.export.notebook import Notebook

# Modules whose distribution has another name, for imports that are not
# installed where the export runs (documented in the README). An installed
# module is always mapped through its real distribution instead.
ALIASES = {
    "sklearn": "scikit-learn",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "yaml": "PyYAML",
    "bs4": "beautifulsoup4",
    "skimage": "scikit-image",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "attr": "attrs",
    "Crypto": "pycryptodome",
    "jwt": "PyJWT",
    "docx": "python-docx",
    "pptx": "python-pptx",
    "git": "GitPython",
    "serial": "pyserial",
    "fitz": "PyMuPDF",
    "OpenSSL": "pyOpenSSL",
    "zmq": "pyzmq",
    "magic": "python-magic",
    "google.protobuf": "protobuf",
    "faiss": "faiss-cpu",
    "huggingface_hub": "huggingface-hub",
}

# The worker loop itself.
ALWAYS = "runpod"


@dataclass
class RequirementLine:
    name: str  # distribution (or project) name, for sorting and matching
    spec: str  # the line as pip reads it
    reasons: list[str] = field(default_factory=list)

    def render(self) -> str:
        return f"{self.spec}  # {'; '.join(self.reasons)}"


@dataclass
class Requirements:
    lines: list[RequirementLine]
    warnings: list[KitWarning] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    local_modules: list[Path] = field(default_factory=list)  # files/packages copied beside handler.py
    # What is copied: worker-relative posix path -> the regular file it is copied from.
    local_files: dict[str, Path] = field(default_factory=dict)
    module_reasons: dict[str, str] = field(default_factory=dict)  # a local module's name -> who imports it first
    closure: files.LocalModules | None = None  # what the local modules' own code reaches (for the data files)

    def text(self, header: str = "") -> str:
        body = "".join(line.render() + "\n" for line in self.lines)
        return header + body

    def to_json(self) -> dict:
        return {
            "requirements": [{"spec": l.spec, "name": l.name, "reasons": l.reasons} for l in self.lines],
            "warnings": [str(warning) for warning in self.warnings],
            "excluded": self.excluded,
            "local_modules": [p.name for p in self.local_modules],
        }


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_name(spec: str) -> str | None:
    """The project a requirement line names (None for URLs and paths)."""
    if "://" in spec or spec.startswith((".", "/")):
        egg = re.search(r"#egg=([A-Za-z0-9._-]+)", spec)
        return normalise(egg.group(1)) if egg else None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    return normalise(match.group(1)) if match else None


def pinned(distribution: str) -> str:
    version = importlib.metadata.version(distribution)
    return f"{distribution}=={version.split('+', 1)[0]}"


def infer_requirements(
    notebook: Notebook,
    analysis: Analysis | None = None,
    *,
    extra=(),
    exclude=(),
    include_secrets: bool = False,
) -> Requirements:
    """Infer the worker's requirements. Raises KitError for an import nobody provides."""
    analysis = analysis or analyse(notebook)
    excluded_names = {normalise(name) for name in exclude}
    lines: dict[str, RequirementLine] = {}
    warnings: list[KitWarning] = []

    excluded: list[str] = []

    def add(name: str, spec: str, reason: str) -> None:
        key = normalise(name)
        if key in excluded_names:
            if name not in excluded:
                excluded.append(name)
            return
        line = lines.setdefault(key, RequirementLine(name, spec))
        if reason not in line.reasons:
            line.reasons.append(reason)

    unnamed_pip = False
    for parsed in analysis.cells:
        for requirement in parsed.translated.pip:
            name = project_name(requirement.spec)
            unnamed_pip |= name is None
            spec, reason = requirement.spec, f"{requirement.magic} (cell {requirement.cell})"
            if name is not None and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec) and _installed(spec):
                # `%pip install numpy`: pin what the notebook ran with
                spec, reason = pinned(name), f"{requirement.magic} (cell {requirement.cell}), pinned to the installed version"
            add(name or spec, spec, reason)
    for spec in extra:
        if not spec.strip() or any(not c.isprintable() for c in spec):
            raise KitError(
                f"--extra {spec!r} is not one requirement line",
                "give one requirement per --extra, without line breaks or control characters",
            )
        add(project_name(spec) or spec, spec, "--extra")
    pip_projects = set(lines)

    distributions = packages_distributions()
    cells = [(parsed.index, parsed.translated.source) for parsed in analysis.cells]
    closure = files.local_closure(notebook, cells, seeds=[(item.dotted, item.cell, item.line) for item in analysis.imports])
    warnings += closure.warnings
    asked = [
        _Asked(item.module, item.dotted, item.optional, f"cell {item.cell}", item.cell, item.line)
        for item in analysis.imports
        if item.module not in closure.modules
    ]
    asked += [_Asked(i.module, i.dotted, i.optional, i.source, None, i.line) for i in closure.imports]
    for item in asked:
        module = item.module
        where = f"({item.source})"
        if module in sys.stdlib_module_names or module == "__future__":
            continue
        if module == "kit":
            raise item.error(notebook, "the worker must not import the kit", "move `import kit` (and kit.panel()) to an untagged cell")
        if normalise(module) in excluded_names:
            if module not in excluded:
                excluded.append(module)
            continue
        dists = _distributions_for(item.dotted, module, distributions)
        if dists:
            for dist in dists:
                add(dist, pinned(dist), f"import {module} {where}")
            continue
        alias = ALIASES.get(item.dotted) or ALIASES.get(module)
        if normalise(alias or module) in pip_projects:
            continue  # a `%pip install` line provides it
        if item.optional:
            warnings.append(item.warning(notebook, f"optional import `{module}` is not installed here; left out"))
            continue
        if alias:
            add(alias, alias, f"import {module} {where}, not installed here: unpinned")
            warnings.append(
                item.warning(
                    notebook, f"`{module}` is not installed here; requiring `{alias}` unpinned — install it and re-export to pin it"
                )
            )
            continue
        if unnamed_pip:
            warnings.append(item.warning(notebook, f"`{module}` is not installed here; assuming a `%pip install` URL provides it"))
            continue
        raise item.error(
            notebook,
            f"`import {module}`: no installed package provides `{module}`",
            "install it and re-export, or add a `%pip install <package>` line to a setup cell",
        )
    if ALWAYS not in excluded_names:
        add(ALWAYS, pinned(ALWAYS) if _installed(ALWAYS) else ALWAYS, "the worker loop (always)")

    ordered = sorted(lines.values(), key=lambda l: (normalise(l.name), l.spec))
    modules = [closure.modules[m] for m in sorted(closure.modules)]
    copied, left_out = files.local_files(notebook, modules, include_secrets=include_secrets)
    warnings += left_out
    return Requirements(
        ordered,
        warnings,
        sorted(excluded),
        modules,
        copied,
        module_reasons={closure.modules[m].name: closure.reasons[m] for m in sorted(closure.modules)},
        closure=closure,
    )


@dataclass
class _Asked:
    """An import the worker's code makes: in a cell (`cell` set) or in a local module (`source` its path)."""

    module: str
    dotted: str
    optional: bool
    source: str  # "cell 3" or "helpers/service.py"
    cell: int | None
    line: int

    def warning(self, notebook: Notebook, message: str) -> KitWarning:
        if self.cell is not None:
            return KitWarning(message, notebook.name, self.cell, self.line)
        return KitWarning(f"{self.source}, line {self.line}: {message}", notebook.name)

    def error(self, notebook: Notebook, message: str, hint: str) -> KitError:
        if self.cell is not None:
            return notebook.error(message, hint, cell=self.cell, line=self.line)
        return notebook.error(f"{self.source}, line {self.line}: {message}", hint)


_distributions: tuple[tuple, Mapping[str, list[str]]] | None = None


def packages_distributions() -> Mapping[str, list[str]]:
    """`importlib.metadata.packages_distributions()` (a third of a second), cached while no
    site-packages directory on sys.path changes (installing or removing a package changes it).
    `kit serve --watch` exports on every save; the notebook's own folder, which every save
    changes, is not part of the key."""
    global _distributions
    key = tuple((entry, _mtime_ns(entry)) for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages"))
    if _distributions is None or _distributions[0] != key:
        _distributions = (key, _packages_distributions())
    return _distributions[1]


def _packages_distributions() -> dict[str, list[str]]:
    """Python 3.11's packages_distributions() on every version: Python 3.10's reads only
    top_level.txt, which wheels built without setuptools (numpy's, torch's) do not have,
    so it misses them; 3.11 infers their top-level names from the files they installed."""
    if sys.version_info >= (3, 11):
        return importlib.metadata.packages_distributions()
    mapping: dict[str, list[str]] = {}
    for dist in importlib.metadata.distributions():
        declared = (dist.read_text("top_level.txt") or "").split()
        inferred = {f.parts[0] if len(f.parts) > 1 else f.with_suffix("").name for f in dist.files or () if f.suffix == ".py"}
        for top in declared or sorted(inferred):
            mapping.setdefault(top, []).append(dist.metadata["Name"])
    return mapping


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _distributions_for(dotted: str, module: str, distributions) -> list[str]:
    candidates = sorted(set(distributions.get(module, [])))
    if len(candidates) > 1 and "." in dotted:
        # A namespace package (google.*): keep the distributions that ship the submodule.
        path = dotted.replace(".", "/")
        narrowed = [d for d in candidates if any(str(f).startswith(path) for f in (importlib.metadata.files(d) or []))]
        candidates = narrowed or candidates
    return candidates


def format_requirements_report(requirements: Requirements) -> str:
    """What `kit deps` prints: the lines with their reasons, then warnings."""
    out = [line.render() for line in requirements.lines]
    for path in requirements.local_modules:
        out.append(f"# copied beside handler.py: {path.name} (imported by {requirements.module_reasons.get(path.name, 'the notebook')})")
    for name in requirements.excluded:
        out.append(f"# excluded (provided by the base image): {name}")
    for warning in requirements.warnings:
        out.append(f"# warning: {warning}")
    return "\n".join(out) + "\n"
