"""The files exported code names by a literal path: a fact read from source, never run.

`literal_paths(tree, anchor)` walks one module (a notebook cell or a local
module) and returns each path it can work out without running anything:
string literals given to `open()` and to readers (`np.load`, `pd.read_csv`...),
`Path("...")`, `os.path.join("...", ...)`, `/` joins, and paths built from
`__file__` (`Path(__file__).parent / "vocab.txt"`), also through module-level
names bound to such a path (`HERE = Path(__file__).parent`). Paths are
relative to the notebook's folder, which becomes the worker's folder and its
working directory; `anchor` is the folder of the module's own file there
(`__file__`-relative paths start from it).

Each path comes with how the code uses it: READ (opened for reading, read,
listed), WRITE (opened for writing, created) or USE (passed on, kept in a
name): the export copies what exists and is not written, and warns about a
path that is read and names nothing.
"""

from __future__ import annotations

import ast
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

# The one cutter of a long cell into statements, so that its syntax tree is never whole in memory.
from kit.export.pieces import statement_pieces


class Use(str, Enum):
    READ = "read"
    WRITE = "write"
    USE = "use"


@dataclass(frozen=True)
class LiteralPath:
    path: str  # posix, normalised, relative to the notebook's folder ("../x" lies outside it)
    use: Use
    line: int  # in the module or cell, 1-based
    folder: bool = False  # the code names something inside it (`Path("prompts") / name`): a folder is expected


# A value the evaluator knows: a path relative to the notebook's folder, or an absolute one (not ours).
@dataclass(frozen=True)
class Value:
    path: str | None  # None: absolute, or outside what a literal can say (a URL, `~`)
    is_path: bool  # built as a path (Path(...), __file__): not just any string


PATH_TYPES = {"Path", "PurePath", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}
OPENERS = {"open"}  # open(), io.open(), codecs.open(), builtins.open(), gzip.open(), Image.open()...
PASS_THROUGH = {"abspath", "realpath", "normpath", "resolve", "absolute", "expanduser", "fspath", "str"}
READ_METHODS = {"read_text", "read_bytes", "iterdir", "glob", "rglob", "stat"}
PROBES = {"exists", "is_file", "is_dir"}  # asking is no mistake: a missing path is not warned about
WRITE_METHODS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "rename", "replace", "makedirs"}
# Functions that read the file their first argument names (the last dotted name of the call).
READERS = {"load", "loadtxt", "genfromtxt", "fromfile", "imread", "listdir", "scandir", "read", "load_workbook"}
READER_PREFIX = "read_"  # pd.read_csv, read_json, read_parquet...
# Hub ids or local folders: a local one is copied, a missing one is no mistake.
MAYBE_LOCAL = {"from_pretrained", "from_single_file", "snapshot_download"}
# Functions that write the file their first argument names (img.save(path), np.save(path, a), df.to_csv(path)).
WRITERS = {"save", "savez", "savetxt", "to_csv", "to_json", "to_parquet", "to_excel", "imwrite"}


def literal_paths(tree: ast.AST, anchor: str, env: dict[str, Value] | None = None, offset: int = 0) -> list[LiteralPath]:
    """The literal paths in `tree` (its lines counted after `offset`). `env` carries module-level
    names across a notebook's cells and pieces (updated)."""
    walker = _Walker(anchor, env if env is not None else {})
    walker.bind_module_names(tree)
    walker.visit(tree)
    return [LiteralPath(f.path, f.use, f.line + offset, f.folder) for f in walker.found]


class _Walker:
    def __init__(self, anchor: str, env: dict[str, Value]):
        self.anchor = anchor
        self.env = env
        self.found: list[LiteralPath] = []

    # ------------------------------------------------------------------ names
    def bind_module_names(self, tree: ast.AST) -> None:
        for node in getattr(tree, "body", []):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            for target in targets:
                if isinstance(target, ast.Name):
                    known = self.value(value)
                    if known is not None:
                        self.env[target.id] = known
                    else:
                        self.env.pop(target.id, None)

    # ------------------------------------------------------------------ values
    def value(self, node: ast.expr) -> Value | None:
        """What path (or string) `node` is, if a literal says so."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return _string(node.value)
        if isinstance(node, ast.Name):
            if node.id == "__file__":
                return Value(posixpath.join(self.anchor, "__file__"), True)
            return self.env.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            inner = self.value(node.value)
            return _parent(inner) if inner is not None and inner.is_path else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left, right = self.value(node.left), self.value(node.right)
            if left is not None and right is not None and left.is_path:
                return _join(left, right)
            return None
        if isinstance(node, ast.Call):
            return self._call_value(node)
        return None

    def _call_value(self, node: ast.Call) -> Value | None:
        name = _call_name(node.func)
        args = [self.value(arg) for arg in node.args]
        if node.keywords or any(a is None for a in args):
            return None
        known = [a for a in args if a is not None]
        if name in PATH_TYPES:
            if not known:
                return Value(".", True)
            joined = known[0]
            for part in known[1:]:
                joined = _join(joined, part)
            return Value(joined.path, True)
        if name == "join" and _dotted(node.func).endswith("path.join") and known:
            joined = known[0]
            for part in known[1:]:
                joined = _join(joined, part)
            return joined
        if name == "dirname" and len(known) == 1:
            return _parent(known[0])
        if name in ("getcwd", "cwd") and not known:
            return Value(".", name == "cwd")
        if name in PASS_THROUGH:
            if isinstance(node.func, ast.Attribute) and not known:  # Path(...).resolve()
                return self.value(node.func.value)
            if len(known) == 1:  # os.path.abspath(x), str(x)
                return known[0]
        if name == "with_name" and isinstance(node.func, ast.Attribute) and len(known) == 1:
            base = self.value(node.func.value)  # Path(__file__).with_name("x.json")
            return _join(_parent(base), known[0]) if base is not None and base.is_path else None
        if name == "joinpath" and isinstance(node.func, ast.Attribute):
            base = self.value(node.func.value)
            if base is None:
                return None
            for part in known:
                base = _join(base, part)
            return base
        return None

    # ------------------------------------------------------------------ the walk
    def note(self, node: ast.expr, use: Use, line: int, folder: bool = False) -> bool:
        """Record `node` if it is a literal path; True when it was."""
        known = self.value(node)
        if known is not None and known.path is not None:
            self.found.append(LiteralPath(known.path, use, line, folder))
            return True
        prefix = _folder_prefix(node)  # open(f"prompts/{name}.txt"), "prompts/" + name
        if prefix is not None:
            self.found.append(LiteralPath(posixpath.normpath(prefix), use, line, True))
            return True
        return known is not None  # an absolute path or a URL: nothing to copy

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Call) and self._call(node):
            return
        if isinstance(node, ast.expr) and self._path_expression(node):
            return
        for child in ast.iter_child_nodes(node):
            self.visit(child)

    def _path_expression(self, node: ast.expr) -> bool:
        """A path built in the code (Path(...), a join, __file__'s folder), used in some other way."""
        built = self.value(node)
        if built is None or not built.is_path or isinstance(node, ast.Name):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                # `Path("prompts") / name`: the code reads something inside prompts/.
                left = self.value(node.left)
                if left is not None and left.is_path and left.path is not None:
                    self.found.append(LiteralPath(left.path, Use.USE, node.lineno, True))
                    self.visit(node.right)
                    return True
            return False
        if built.path is not None:
            self.found.append(LiteralPath(built.path, Use.USE, node.lineno))
        return True

    def _call(self, node: ast.Call) -> bool:
        """A call that reads or writes the path it is given; True when its path was recorded."""
        name = _call_name(node.func)
        line = node.lineno
        if name in OPENERS and node.args and not (isinstance(node.func, ast.Attribute) and self.value(node.func.value)):
            use = Use.WRITE if _writes(node) else Use.READ
            if self.note(node.args[0], use, line):
                self._visit_rest(node, skip=node.args[0])
                return True
            return False
        if isinstance(node.func, ast.Attribute) and name in READ_METHODS | WRITE_METHODS | PROBES | {"open"}:
            receiver = node.func.value
            known = self.value(receiver)
            if known is not None and known.is_path:
                if name in WRITE_METHODS or (name == "open" and _writes(node, first=0)):
                    use = Use.WRITE
                else:
                    use = Use.USE if name in PROBES else Use.READ
                self.note(receiver, use, line, folder=name in ("iterdir", "glob", "rglob", "is_dir"))
                self._visit_rest(node, skip=receiver)
                return True
            return False
        first = _first_argument(node)
        if first is None:
            return False
        if name in READERS or name.startswith(READER_PREFIX) or name in MAYBE_LOCAL or name in WRITERS:
            use = Use.WRITE if name in WRITERS else Use.USE if name in MAYBE_LOCAL else Use.READ
            if self.note(first, use, line, folder=name in ("listdir", "scandir")):
                self._visit_rest(node, skip=first)
                return True
        return False

    def _visit_rest(self, node: ast.Call, skip: ast.expr) -> None:
        for child in ast.iter_child_nodes(node):
            if child is not skip and child is not node.func:
                self.visit(child)
        if isinstance(node.func, ast.Attribute) and node.func.value is not skip:
            self.visit(node.func.value)


def _string(text: str) -> Value | None:
    if not text or "\0" in text or "\n" in text or "://" in text:
        return None
    if text.startswith(("/", "~", "\\")) or (len(text) > 1 and text[1] == ":"):
        return Value(None, False)  # absolute (a network volume, the home folder): not the notebook's
    return Value(posixpath.normpath(text), False)


def _join(left: Value, right: Value) -> Value:
    if right.path is None or left.path is None:
        return Value(None, left.is_path)
    return Value(posixpath.normpath(posixpath.join(left.path, right.path)), left.is_path)


def _parent(value: Value) -> Value:
    if value.path is None:
        return value
    return Value(posixpath.normpath(posixpath.dirname(value.path) or "."), value.is_path)


def _folder_prefix(node: ast.expr) -> str | None:
    """The folder an f-string or `"dir/" + name` starts with, when it is relative."""
    head: object = None
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        head = node.values[0].value
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and isinstance(node.left, ast.Constant):
        head = node.left.value
    if not isinstance(head, str) or "/" not in head:
        return None
    known = _string(head.rsplit("/", 1)[0] or "/")
    return known.path if known is not None else None


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _dotted(func: ast.expr) -> str:
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _writes(node: ast.Call, first: int = 1) -> bool:
    """open()'s mode (its second argument, or the first of Path.open) creates or changes the file."""
    mode: ast.expr | None = node.args[first] if len(node.args) > first else None
    for keyword in node.keywords:
        if keyword.arg == "mode":
            mode = keyword.value
    return isinstance(mode, ast.Constant) and isinstance(mode.value, str) and any(c in mode.value for c in "wax")


def _first_argument(node: ast.Call) -> ast.expr | None:
    if node.args:
        return node.args[0]
    for keyword in node.keywords:
        if keyword.arg in ("path", "file", "filename", "fname", "filepath_or_buffer", "pretrained_model_name_or_path"):
            return keyword.value
    return None


def cell_trees(cells: Iterable[tuple[int, str]]) -> Iterator[tuple[int, int, ast.Module]]:
    """(cell, lines before the piece, tree) for each piece of each cell's code. A piece that does not
    parse (a cut in the wrong place) reads the whole cell instead; a cell that does not parse is
    skipped (the export reports it elsewhere)."""
    for index, source in cells:
        for offset, text in statement_pieces(source):
            try:
                yield index, offset, ast.parse(text)
            except (SyntaxError, ValueError):
                try:
                    yield index, 0, ast.parse(source)
                except (SyntaxError, ValueError):
                    pass
                break
