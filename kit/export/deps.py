"""The worker's requirements, inferred from the exported cells.

Guessing distributions from module names is wrong often (`cv2`, `sklearn`,
`PIL`, `yaml`), so the kit asks the environment the export runs in (from the
panel, the kernel's own): each imported module is mapped to the distribution
that installed it, pinned to the installed version. `%pip install` lines are
kept as the user wrote them. The result is sorted and stable, so re-exporting
an unchanged notebook gives the same bytes.
"""

from __future__ import annotations

import fnmatch
import importlib.machinery
import importlib.metadata
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kit.errors import KitError, KitWarning
from kit.export.analysis import Analysis, analyse
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

# Files a local package may hold that look like secrets: left out of the worker
# (and its zip) unless the export is asked to include them (--include-secrets).
SECRET_PATTERNS = (
    ".env",
    ".env.*",
    "*.env",
    ".netrc",
    ".pypirc",
    ".npmrc",
    ".git-credentials",
    ".htpasswd",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.keystore",
    "*.jks",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "credentials",
    "credentials.*",
    "secrets.*",
    "*.secret",
    "*.secrets",
)
SECRET_DIRS = (".git", ".ssh", ".aws", ".gnupg", ".docker")
SKIPPED = ("__pycache__", ".ipynb_checkpoints")


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

    def warn(item, message: str) -> None:
        warnings.append(KitWarning(message, notebook.name, item.cell, item.line))

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
            spec, reason = requirement.spec, f"%pip (cell {requirement.cell})"
            if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec) and _installed(
                spec
            ):  # `%pip install numpy`: pin what the notebook ran with
                spec, reason = pinned(name), f"%pip (cell {requirement.cell}), pinned to the installed version"
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
    local: dict[str, Path] = {}
    for item in analysis.imports:
        module = item.module
        where = f"(cell {item.cell})"
        if module in sys.stdlib_module_names or module == "__future__":
            beside = _shadowing_stdlib(notebook, module)
            if beside is not None:
                local[module] = beside
                warnings.append(
                    f"cell {item.cell}, line {item.line}: {beside.name} beside the notebook shadows the standard "
                    f"library's `{module}`; copied, since the worker's folder comes first on Python's path"
                )
            continue
        if module == "kit":
            raise notebook.error(
                "the worker must not import the kit",
                "move `import kit` (and kit.panel()) to an untagged cell",
                cell=item.cell,
                line=item.line,
            )
        if normalise(module) in excluded_names:
            if module not in excluded:
                excluded.append(module)
            continue
        beside = _local_module(notebook, module)
        if beside is not None:
            local[module] = beside
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
            warn(item, f"optional import `{module}` is not installed here; left out")
            continue
        if alias:
            add(alias, alias, f"import {module} {where}, not installed here: unpinned")
            warn(item, f"`{module}` is not installed here; requiring `{alias}` unpinned — install it and re-export to pin it")
            continue
        if unnamed_pip:
            warn(item, f"`{module}` is not installed here; assuming a `%pip install` URL provides it")
            continue
        raise notebook.error(
            f"`import {module}`: no installed package provides `{module}`",
            "install it and re-export, or add a `%pip install <package>` line to a setup cell",
            cell=item.cell,
            line=item.line,
        )
    if ALWAYS not in excluded_names:
        add(ALWAYS, pinned(ALWAYS) if _installed(ALWAYS) else ALWAYS, "the worker loop (always)")

    ordered = sorted(lines.values(), key=lambda l: (normalise(l.name), l.spec))
    modules = [local[m] for m in sorted(local)]
    files = local_files(notebook, modules, include_secrets=include_secrets, warnings=warnings)
    return Requirements(ordered, warnings, sorted(excluded), modules, files)


_distributions: tuple[tuple, dict] | None = None


def packages_distributions() -> dict[str, list[str]]:
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


def _local_module(notebook: Notebook, module: str) -> Path | None:
    directory = notebook.directory
    if directory is None:
        return None
    for candidate in (directory / f"{module}.py", directory / module):
        if candidate.is_file() or (candidate.is_dir() and any(candidate.glob("*.py"))):
            if candidate.is_symlink():
                raise notebook.error(
                    f"the local module {candidate.name} is a symlink (to {os.readlink(candidate)}); "
                    "the kit copies only regular files inside the notebook's folder",
                    f"replace {candidate.name} with a copy of what it points to",
                )
            return candidate
    return None


def _shadowing_stdlib(notebook: Notebook, module: str) -> Path | None:
    """A file or regular package beside the notebook named like a standard-library module
    that Python would import instead of it (built-in and frozen modules cannot be shadowed)."""
    if module in sys.builtin_module_names or importlib.machinery.FrozenImporter.find_spec(module) is not None:
        return None
    found = _local_module(notebook, module)
    if found is None or (found.is_dir() and not (found / "__init__.py").is_file()):
        return None  # a folder without __init__.py is a namespace package: the standard library wins
    return found


def _is_secret(name: str) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in SECRET_PATTERNS)


def local_files(
    notebook: Notebook, modules: list[Path], *, include_secrets: bool = False, warnings: list[str] | None = None
) -> dict[str, Path]:
    """What a worker copies of its local modules: worker-relative path -> source file.

    The one rule for `kit export` and the nbconvert zip: only regular files, found
    without following a symlink, so nothing outside the notebook's folder is read;
    no caches; no secret-looking files unless `include_secrets`. Every file left
    out is named in `warnings`.
    """
    warnings = warnings if warnings is not None else []
    files: dict[str, Path] = {}
    left_out: list[str] = []
    secrets: list[str] = []
    for module in modules:
        if not module.is_dir():
            files[module.name] = module
            continue
        for root, dirs, names in os.walk(module, followlinks=False):
            base = Path(root)
            relative = base.relative_to(module.parent)
            for name in list(dirs):
                path = base / name
                if name in SKIPPED:
                    dirs.remove(name)
                elif path.is_symlink():
                    dirs.remove(name)
                    left_out.append(f"{(relative / name).as_posix()} (a symlink)")
                elif name in SECRET_DIRS and not include_secrets:
                    dirs.remove(name)
                    secrets.append((relative / name).as_posix() + "/")
            dirs.sort()
            for name in sorted(names):
                path = base / name
                target = (relative / name).as_posix()
                if name.endswith((".pyc", ".pyo")):
                    continue
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    left_out.append(f"{target} (a symlink)")
                elif not stat.S_ISREG(mode):
                    left_out.append(f"{target} (not a regular file)")
                elif _is_secret(name) and not include_secrets:
                    secrets.append(target)
                else:
                    files[target] = path
    if left_out:
        warnings.append(f"left out of the worker: {', '.join(left_out)}; the kit copies only regular files inside the notebook's folder")
    if secrets:
        warnings.append(
            f"left out of the worker, as they look like secrets: {', '.join(secrets)}; "
            "pass --include-secrets to copy them, or give the worker secrets through environment variables"
        )
    return files


def format_requirements_report(requirements: Requirements) -> str:
    """What `kit deps` prints: the lines with their reasons, then warnings."""
    out = [line.render() for line in requirements.lines]
    for path in requirements.local_modules:
        out.append(f"# copied beside handler.py: {path.name}")
    for name in requirements.excluded:
        out.append(f"# excluded (provided by the base image): {name}")
    for warning in requirements.warnings:
        out.append(f"# warning: {warning}")
    return "\n".join(out) + "\n"
