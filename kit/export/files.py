"""What a worker copies from the notebook's folder, beside the files the export writes.

- **Local modules**: the closure of the exported cells' imports that resolve
  beside the notebook (`import service`, `from helpers import x`), followed
  through the imports of those modules however deep, `from . import`
  included. A module is copied as its file, a package as its folder. Their
  other imports go to requirements.txt (`kit.export.deps`).
- **Data files**: what the exported cells and the local modules name by a
  literal relative path that exists (`kit.export.paths`), and what
  `--include GLOB` adds.

One rule for `kit export` and the nbconvert zip (docs/worker-files.md): only
regular files inside the notebook's folder, found without following a
symlink; no caches; no secret-looking files unless asked (--include-secrets);
no name a Windows unzip tool would split (a backslash) or a control
character; at most `MAX_DATA_BYTES` of data files. Everything left out is named
in one warning.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.machinery
import os
import posixpath
import re
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kit import workerdir
from kit.errors import KitError, KitWarning
from kit.export import paths
from kit.export.notebook import Notebook

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
# Data files (found or --include'd) a worker folder takes: more belongs on a network volume or in the image.
MAX_DATA_BYTES = 100 * 1024 * 1024
MAX_DATA_FILES = 2000
MAX_MODULE_BYTES = 1024 * 1024  # a local module larger than this is copied, not read (its syntax tree would take ~100x)


@dataclass
class LocalImport:
    """An import in a local module that does not resolve beside the notebook."""

    module: str  # top-level name
    dotted: str
    source: str  # the module's worker-relative path
    line: int
    optional: bool  # inside a try that catches ImportError

    @property
    def where(self) -> str:
        return f"{self.source}, line {self.line}"


@dataclass
class LocalModules:
    """The closure of the notebook's local imports."""

    modules: dict[str, Path] = field(default_factory=dict)  # top-level name -> the file or package folder
    reasons: dict[str, str] = field(default_factory=dict)  # top-level name -> who imports it first
    sources: dict[str, Path] = field(default_factory=dict)  # each module file the imports reach, worker-relative
    imports: list[LocalImport] = field(default_factory=list)
    warnings: list[KitWarning] = field(default_factory=list)


def local_module(notebook: Notebook, module: str) -> Path | None:
    """`module.py` or a folder of Python files named `module` beside the notebook; a symlink is refused."""
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


def shadowing_stdlib(notebook: Notebook, module: str) -> Path | None:
    """A file or regular package beside the notebook named like a standard-library module
    that Python would import instead of it (built-in and frozen modules cannot be shadowed)."""
    if module in sys.builtin_module_names or importlib.machinery.FrozenImporter.find_spec(module) is not None:
        return None
    found = local_module(notebook, module)
    if found is None or (found.is_dir() and not (found / "__init__.py").is_file()):
        return None  # a folder without __init__.py is a namespace package: the standard library wins
    return found


def local_closure(notebook: Notebook, cells: Iterable[tuple[int, str]], seeds: Iterable[tuple[str, int, int]] = ()) -> LocalModules:
    """Follow the exported cells' (index, source) imports through the local modules they reach.

    `seeds`: (dotted name, cell, line) of imports the analysis found, in case a cell does not parse whole."""
    return _Closure(notebook).run(cells, seeds)


class _Closure:
    def __init__(self, notebook: Notebook):
        self.notebook = notebook
        self.result = LocalModules()
        self.queue: list[Path] = []

    def run(self, cells: Iterable[tuple[int, str]], seeds: Iterable[tuple[str, int, int]]) -> LocalModules:
        for index, offset, tree in paths.cell_trees(cells):
            for node, line in _import_nodes(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    continue  # a notebook is no package: Jupyter fails on it too
                for dotted, names in _imported(node):
                    self.reach(dotted.split("."), names, f"cell {index}", (index, line + offset))
        for dotted, cell, line in seeds:
            if dotted.split(".")[0] not in self.result.modules:
                self.reach(dotted.split("."), [], f"cell {cell}", (cell, line))
        while self.queue:
            self.read_module(self.queue.pop(0))
        return self.result

    def reach(self, parts: list[str], names: list[str], via: str, cell_line: tuple[int, int] | None = None) -> bool:
        """Follow `import a.b.c` / `from a.b import names` when `a` lies beside the notebook."""
        top = parts[0]
        if top in sys.stdlib_module_names or top == "__future__":
            found = shadowing_stdlib(self.notebook, top)
            if found is not None and top not in self.result.modules:
                where = "" if cell_line else f"{via}: "
                self.result.warnings.append(
                    KitWarning(
                        f"{where}{found.name} beside the notebook shadows the standard library's `{top}`; copied, "
                        "since the worker's folder comes first on Python's path",
                        self.notebook.name,
                        *(cell_line or (None, None)),
                    )
                )
        else:
            found = local_module(self.notebook, top)
        if found is None:
            return False
        if top not in self.result.modules:
            self.result.modules[top] = found
            self.result.reasons[top] = via
        if found.is_file():
            self.visit(found)
            return True
        folder: Path | None = found
        for part in parts[1:]:
            assert folder is not None
            self.visit(folder / "__init__.py")
            if (folder / part).is_dir():
                folder = folder / part
            else:
                self.visit(folder / f"{part}.py")
                folder = None
                break
        if folder is not None:
            self.visit(folder / "__init__.py")
            for name in names:
                self.visit(folder / name / "__init__.py")
                self.visit(folder / f"{name}.py")
        return True

    def visit(self, path: Path) -> None:
        directory = self.notebook.directory
        assert directory is not None
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return
        relative = path.relative_to(directory).as_posix()
        if stat.S_ISREG(mode) and relative not in self.result.sources:
            self.result.sources[relative] = path
            self.queue.append(path)

    def read_module(self, path: Path) -> None:
        directory = self.notebook.directory
        assert directory is not None
        relative = path.relative_to(directory)
        tree = _read_python(path)
        if tree is None:
            self.result.warnings.append(
                KitWarning(f"{relative.as_posix()} could not be read as Python: the imports in it are not followed", self.notebook.name)
            )
            return
        package = list(relative.parts[:-1])  # the folders from the notebook's one down to the module's
        optional_lines = _optional_lines(tree)
        for node, line in _import_nodes(tree):
            optional = line in optional_lines
            if isinstance(node, ast.ImportFrom) and node.level:
                if not package or node.level > len(package):
                    continue  # beyond the top-level package: Python refuses it too
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                self.reach(target, [a.name for a in node.names], relative.as_posix())
                continue
            for dotted, names in _imported(node):
                if not self.reach(dotted.split("."), names, relative.as_posix()):
                    top = dotted.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "__future__":
                        self.result.imports.append(LocalImport(top, dotted, relative.as_posix(), line, optional))


def _read_python(path: Path) -> ast.Module | None:
    try:
        if path.stat().st_size > MAX_MODULE_BYTES:
            return None
        return ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None


def _import_nodes(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, int]]:
    return [(node, node.lineno) for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _imported(node: ast.Import | ast.ImportFrom) -> list[tuple[str, list[str]]]:
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    if node.module:
        return [(node.module, [alias.name for alias in node.names])]
    return []


def _optional_lines(tree: ast.AST) -> set[int]:
    """Lines of the imports under a `try:` that catches ImportError (or anything)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            lines |= {n.lineno for statement in node.body for n in ast.walk(statement) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(handler.type) if isinstance(n, (ast.Name, ast.Attribute))}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


# --------------------------------------------------------------------------- the copy rule


def is_secret(name: str) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in SECRET_PATTERNS)


def unsafe_name(name: str) -> str | None:
    """Why a file name cannot go into a worker folder or its zip (None: it can)."""
    if "\\" in name:
        return "a backslash in its name, which Windows unzip tools read as a folder separator"
    if any(not c.isprintable() for c in name):
        return "a control character in its name"
    return None


@dataclass
class _Copy:
    """What one walk copies and leaves out."""

    include_secrets: bool
    files: dict[str, Path] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def add(self, path: Path, target: str) -> None:
        """Copy `path` (a file or a folder, reached without following a symlink) as `target`."""
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            self.walk(path, target)
        else:
            self.file(path, target, mode)

    def file(self, path: Path, target: str, mode: int) -> None:
        name = path.name
        why = unsafe_name(target)
        if why:
            self.left_out.append(f"{target!r} ({why})")
        elif stat.S_ISLNK(mode):
            self.left_out.append(f"{target} (a symlink)")
        elif not stat.S_ISREG(mode):
            self.left_out.append(f"{target} (not a regular file)")
        elif is_secret(name) and not self.include_secrets:
            self.secrets.append(target)
        else:
            self.files[target] = path

    def walk(self, folder: Path, target: str) -> None:
        for root, dirs, names in os.walk(folder, followlinks=False):
            base = Path(root)
            relative = posixpath.join(target, base.relative_to(folder).as_posix()).removesuffix("/.")
            for name in list(dirs):
                path = base / name
                if name in SKIPPED:
                    dirs.remove(name)
                elif unsafe_name(name):
                    dirs.remove(name)
                    self.left_out.append(f"{relative + '/' + name!r} ({unsafe_name(name)})")
                elif path.is_symlink():
                    dirs.remove(name)
                    self.left_out.append(f"{relative}/{name} (a symlink)")
                elif name in SECRET_DIRS and not self.include_secrets:
                    dirs.remove(name)
                    self.secrets.append(f"{relative}/{name}/")
            dirs.sort()
            for name in sorted(names):
                if not name.endswith((".pyc", ".pyo")):
                    self.file(base / name, f"{relative}/{name}", os.lstat(base / name).st_mode)

    def warnings(self, notebook: Notebook) -> list[KitWarning]:
        out = []
        if self.left_out:
            out.append(
                KitWarning(
                    f"left out of the worker: {', '.join(self.left_out)}; the kit copies only regular files inside the "
                    "notebook's folder, with names every unzip tool reads alike",
                    notebook.name,
                )
            )
        if self.secrets:
            out.append(
                KitWarning(
                    f"left out of the worker, as they look like secrets: {', '.join(self.secrets)}; "
                    "pass --include-secrets to copy them, or give the worker secrets through environment variables",
                    notebook.name,
                )
            )
        return out


def local_files(notebook: Notebook, modules: list[Path], *, include_secrets: bool = False) -> tuple[dict[str, Path], list[KitWarning]]:
    """What a worker copies of its local modules: worker-relative path -> source file, and the warnings."""
    copy = _Copy(include_secrets)
    for module in modules:
        copy.add(module, module.name)
    return copy.files, copy.warnings(notebook)


# --------------------------------------------------------------------------- data files


@dataclass
class DataFiles:
    files: dict[str, Path] = field(default_factory=dict)  # worker-relative path -> source file
    reasons: dict[str, str] = field(default_factory=dict)  # what was copied (a file, or a folder as "name/") -> why
    warnings: list[KitWarning] = field(default_factory=list)


def data_files(
    notebook: Notebook,
    cells: Iterable[tuple[int, str]],
    closure: LocalModules,
    *,
    include: Iterable[str] = (),
    include_secrets: bool = False,
) -> DataFiles:
    """The data files the exported code opens by a literal path, and those `include` globs name."""
    result = DataFiles()
    directory = notebook.directory
    include = list(include)
    if directory is None:
        if include:
            raise KitError("--include needs the notebook's folder, and this notebook has none", "export the notebook from a file")
        return result
    taken = {name for path in closure.modules.values() for name in [path.name]}
    copy = _Copy(include_secrets)

    def consider(found: paths.LiteralPath, where: str, locate: tuple[int | None, int | None]) -> None:
        relative = found.path
        if relative == "." or relative.split("/")[-1] == "__file__":
            return  # the folder itself, or the module's own file
        if relative == ".." or relative.startswith("../"):
            if found.use is paths.Use.READ:
                warn(f"{relative} lies outside the notebook's folder, so it is not copied into the worker", locate, where)
            return
        top = relative.split("/")[0]
        if top in taken or top in workerdir.GENERATED:
            return  # a local module (copied already) or a file the export writes
        state = _lookup(directory, relative)
        if state == "missing":
            if found.use is paths.Use.READ:
                warn(
                    f"{relative} is read here but names nothing beside the notebook, so the worker will not find it: "
                    "add the file, fix the path, or read it from a network volume by an absolute path",
                    locate,
                    where,
                )
            return
        if state == "symlink":
            copy.left_out.append(f"{relative} (a symlink)")
            return
        if state == "folder" and (directory / relative / workerdir.MANIFEST).exists():
            return  # a worker folder the kit wrote
        verb = "read" if found.use is paths.Use.READ else "named"
        name = relative + ("/" if state == "folder" else "")
        if any(relative.startswith(done.rstrip("/") + "/") for done in result.reasons if done.endswith("/")):
            return  # inside a folder already copied
        trial = _Copy(include_secrets)
        trial.add(directory / relative, relative)
        size = _size(trial.files)
        if _size(copy.files) + size > MAX_DATA_BYTES or len(copy.files) + len(trial.files) > MAX_DATA_FILES:
            warn(
                f"{name} ({size / 1e6:.1f} MB, {len(trial.files)} files) is {verb} here but left out of the worker: the "
                f"data files a worker folder takes are bounded ({MAX_DATA_BYTES // 1_000_000} MB, {MAX_DATA_FILES} files); "
                "put it on a network volume or into the image and read it there by an absolute path",
                locate,
                where,
            )
            return
        result.reasons[name] = f"{verb} in {where}"
        copy.files.update(trial.files)
        copy.left_out += trial.left_out
        copy.secrets += trial.secrets

    def warn(message: str, locate: tuple[int | None, int | None], where: str) -> None:
        if locate[0] is None:
            message = f"{where}: {message}"  # a local module's line
        result.warnings.append(KitWarning(message, notebook.name, *locate))

    # Every mention of each path, then one decision per path: copied when some code reads it, or
    # names it and none writes it; the first reading mention is the one the note and warnings name.
    mentions: dict[str, list[tuple[paths.LiteralPath, str, tuple[int | None, int | None]]]] = {}
    env: dict[str, paths.Value] = {}
    for index, offset, tree in paths.cell_trees(cells):
        for found in paths.literal_paths(tree, ".", env, offset):
            mentions.setdefault(found.path, []).append((found, f"cell {index}, line {found.line}", (index, found.line)))
    for relative, path in closure.sources.items():
        module = _read_python(path)
        if module is not None:
            for found in paths.literal_paths(module, posixpath.dirname(relative) or "."):
                mentions.setdefault(found.path, []).append((found, f"{relative}, line {found.line}", (None, None)))
    for found_path, uses in mentions.items():
        reads = [use for use in uses if use[0].use is paths.Use.READ]
        if reads:
            consider(*reads[0])
        elif not any(use[0].use is paths.Use.WRITE for use in uses) and found_path != ".":
            consider(*uses[0])

    for pattern in include:
        matches = _glob(notebook, directory, pattern)
        if not matches:
            raise KitError(
                f"--include {pattern!r} matches nothing in the notebook's folder {directory}",
                "give a glob relative to the notebook's folder, such as --include 'data/*.json'",
            )
        before = set(copy.files)
        for relative in matches:
            if relative.split("/")[0] in taken or relative in copy.files:
                continue
            copy.add(directory / relative, relative)
        added = sorted(set(copy.files) - before)
        if added:
            result.reasons.setdefault(f"{pattern} ({len(added)} file{'s' if len(added) != 1 else ''})", f"--include {pattern}")
    if include:
        _check_size(notebook, copy.files, include)
    for name in copy.files:
        if name in workerdir.GENERATED:
            raise KitError(f"--include copies {name}, which is the name of a file kit export writes", f"rename {name} or narrow the glob")
    result.files = copy.files
    result.warnings += copy.warnings(notebook)
    return result


def _lookup(directory: Path, relative: str) -> str:
    """ "file", "folder", "other", "missing" or "symlink" (a symlink anywhere on the way)."""
    path = directory
    mode = 0
    for part in relative.split("/"):
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return "missing"
        if stat.S_ISLNK(mode):
            return "symlink"
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "other"


def _size(files: dict[str, Path]) -> int:
    total = 0
    for path in files.values():
        try:
            total += os.lstat(path).st_size
        except OSError:
            continue
    return total


def _check_size(notebook: Notebook, files: dict[str, Path], include: list[str]) -> None:
    total = _size(files)
    if total <= MAX_DATA_BYTES and len(files) <= MAX_DATA_FILES:
        return
    raise KitError(
        f"--include {' '.join(include)}: with the data files the code names, {len(files)} files, {total / 1e6:.0f} MB, "
        "more than a worker folder takes "
        f"({MAX_DATA_BYTES // 1_000_000} MB, {MAX_DATA_FILES} files)",
        "put large files on a network volume or into the image, and read them there by an absolute path",
        notebook=notebook.name,
    )


def _glob(notebook: Notebook, directory: Path, pattern: str) -> list[str]:
    """The notebook-relative posix paths `pattern` matches, found without following a symlink."""
    if not pattern or pattern.startswith(("/", "~")) or ".." in pattern.split("/") or "\\" in pattern or "\0" in pattern:
        raise KitError(
            f"--include {pattern!r}: give a glob relative to the notebook's folder, inside it",
            "for example --include 'prompts/*.txt' or --include 'data/**'",
        )
    regex = _glob_regex(pattern.rstrip("/"))
    literal = []
    for part in pattern.split("/"):
        if any(c in part for c in "*?["):
            break
        literal.append(part)
    start = directory.joinpath(*literal) if literal else directory
    if _lookup(directory, "/".join(literal) or ".") in ("missing", "symlink") and literal:
        return []
    if start.is_file():
        return ["/".join(literal)] if regex.fullmatch("/".join(literal)) else []
    matches: list[str] = []
    visited = 0
    for root, dirs, names in os.walk(start, followlinks=False):
        base = Path(root).relative_to(directory).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED and not (Path(root) / d / workerdir.MANIFEST).exists())
        for name in [*dirs, *sorted(names)]:
            visited += 1
            if visited > 100_000:
                raise KitError(f"--include {pattern!r} walks too many files", "narrow the glob to a folder", notebook=notebook.name)
            relative = prefix + name
            if regex.fullmatch(relative):
                matches.append(relative)
        # A folder that matched is copied whole: no need to match inside it.
        dirs[:] = [d for d in dirs if not regex.fullmatch(prefix + d)]
    return matches


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`**` any number of folders, `*` and `?` within one name, `[...]` a class (as pathlib's glob)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append("[" + pattern[i + 1 : end].replace("\\", "\\\\").replace("!", "^", 1) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
