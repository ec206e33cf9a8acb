"""IPython syntax in cells: what a worker can keep, what it must not run.

A notebook cell may hold IPython-only syntax (`%magic`, `!shell`, `%%cell
magic`). A worker is plain Python, so each such line is translated:

- ``%pip install x`` / ``!pip install x``: a requirement, not code;
- notebook-only magics (``%matplotlib``, ``%load_ext``, ``%autoreload``,
  ``%config``...): dropped with a warning;
- magics that only wrap code (``%%time``, ``%%capture``, ``%time expr``): unwrapped;
- anything else: an error in exported cells (a worker cannot run it), a
  skipped line with a warning in test cells, and silently masked in scratch
  cells (which are only read to explain mistakes).

Translation never changes the number of lines, so line L of the result is
line L of the cell: every message and traceback maps back to the notebook.
"""

from __future__ import annotations

import io
import re
import shlex
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field

from kit.errors import KitWarning
from kit.export.notebook import Cell, Notebook

# Line magics that only change how the notebook displays or reloads things.
NOTEBOOK_ONLY = {
    "matplotlib",
    "load_ext",
    "reload_ext",
    "unload_ext",
    "autoreload",
    "aimport",
    "config",
    "gui",
    "pylab",
    "precision",
    "timeit",
    "who",
    "whos",
    "lsmagic",
    "pwd",
    "history",
    "xmode",
    "autocall",
    "automagic",
    "colors",
    "pprint",
}
# Magics whose only effect is to run the code they wrap.
WRAPPING_CELL_MAGICS = {"time", "capture"}
WRAPPING_LINE_MAGICS = {"time"}
# Cell magics that run their body in a shell.
SHELL_CELL_MAGICS = {"bash", "sh", "script", "system", "sx"}

# `pip install` options that take a value (the value is not a requirement).
PIP_OPTIONS_WITH_VALUE = {
    "-r",
    "--requirement",
    "-c",
    "--constraint",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
    "-t",
    "--target",
    "--prefix",
    "--root",
    "--src",
    "--upgrade-strategy",
    "--python-version",
    "--platform",
    "--only-binary",
    "--no-binary",
    "--progress-bar",
    "--implementation",
    "--abi",
    "--trusted-host",
    "--cache-dir",
    "--log",
    "--proxy",
    "--retries",
    "--timeout",
    "--exists-action",
    "--global-option",
    "--config-settings",
    "-C",
    "--report",
    "--root-user-action",
}

PIP_COMMAND = re.compile(
    r"""^(?:%|!)\s*(?:
        pip3?
      | (?:python3?|\{sys\.executable\}|\$\{?PYTHON\}?|"?\{sys\.executable\}"?)\s+-m\s+pip
      | uv\s+pip
    )\s+(?P<rest>.*)$""",
    re.VERBOSE,
)
MAGIC_NAME = re.compile(r"^%{1,2}\s*([A-Za-z_][\w]*)")


@dataclass
class Requirement:
    spec: str  # as the user wrote it
    cell: int
    line: int
    magic: str = "%pip"  # how the cell said it: "%pip" or "!pip" (a shell command)


@dataclass
class TranslatedCell:
    cell: Cell
    source: str
    pip: list[Requirement] = field(default_factory=list)
    warnings: list[KitWarning] = field(default_factory=list)
    notebook: str | None = None  # the notebook's name, for the warnings

    def warn(self, line: int | None, message: str) -> None:
        warning = KitWarning(message, self.notebook, self.cell.index, line)
        if warning not in self.warnings:
            self.warnings.append(warning)

    def derived(self, source: str, located: Iterable[tuple[int, str]] = ()) -> TranslatedCell:
        """A new cell: this one with `source`, and the (line, message) warnings `located` added after its own."""
        new = TranslatedCell(self.cell, source, list(self.pip), list(self.warnings), self.notebook)
        for line, message in located:
            new.warn(line, message)
        return new


def translate_cell(notebook: Notebook, cell: Cell, mode: str) -> TranslatedCell:
    """Translate one cell's IPython syntax.

    mode: "export" (setup/handler cells: unknown syntax is a KitError),
    "test" (test cells: unknown syntax is skipped with a warning) or
    "scan" (scratch cells: unknown syntax is masked without a word).
    """
    result = TranslatedCell(cell, cell.source, notebook=notebook.name)
    if not _has_ipython_syntax(cell.source):
        return result
    translation = _Translation(notebook, cell, mode, result)
    lines = cell.source.splitlines()
    in_strings = _lines_inside_strings(cell.source)
    out: list[str] = []
    first_code = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")), None)
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if number in in_strings or not stripped or stripped[0] not in "%!" and not _is_assigned_magic(stripped):
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith("%%"):
            if first_code is not None and number - 1 == first_code:
                out.append(translation.cell_magic(number, stripped))
            else:
                out.append(translation.unsupported(number, stripped, indent))
            continue
        out.append(translation.line_magic(number, stripped, indent))
    result.source = "\n".join(out) + ("\n" if cell.source.endswith("\n") else "")
    return result


def _has_ipython_syntax(source: str) -> bool:
    return any(line.lstrip()[:1] in ("%", "!") or _is_assigned_magic(line.strip()) for line in source.splitlines())


ASSIGNED_MAGIC = re.compile(r"^[A-Za-z_][\w.]*\s*=\s*[%!]")


def _is_assigned_magic(stripped: str) -> bool:
    return bool(ASSIGNED_MAGIC.match(stripped))


def _lines_inside_strings(source: str) -> set[int]:
    """Lines that lie inside a multi-line string literal (not magic lines)."""
    inside: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.STRING and token.end[0] > token.start[0]:
                inside.update(range(token.start[0] + 1, token.end[0] + 1))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return inside


def _comment(indent: str, text: str) -> str:
    # A lone comment cannot stand as the body of an indented block: keep a pass.
    return f"{indent}pass  # {text}" if indent else f"# {text}"


class _MaskCell(Exception):
    pass


@dataclass
class _Translation:
    """One cell's translation under way: its methods translate a line and add to `result`."""

    notebook: Notebook
    cell: Cell
    mode: str
    result: TranslatedCell

    def cell_magic(self, number: int, stripped: str) -> str:
        if _magic_name(stripped) in WRAPPING_CELL_MAGICS:
            self.result.warn(number, f"`{stripped}` unwrapped: the cell's code runs without it")
            return f"# kit: unwrapped {stripped}"
        if self.mode == "scan":
            # The body of an unknown cell magic is not Python: mask the whole cell.
            raise _MaskCell()
        return self.unsupported(number, stripped, "", cell_magic=True)

    def line_magic(self, number: int, stripped: str, indent: str) -> str:
        pip = PIP_COMMAND.match(stripped)
        if pip:
            rest = pip.group("rest")
            words = rest.split()
            if words[:1] == ["install"]:
                specs, notes = parse_pip_install(rest[len("install") :])
                for spec in specs:
                    self.result.pip.append(Requirement(spec, self.cell.index, number, f"{stripped[0]}pip"))
                for note in notes:
                    self.result.warn(number, note)
                return _comment(indent, f"kit: requirement -> requirements.txt: {stripped}")
            self.result.warn(number, f"`{stripped}` dropped: only `pip install` lines become requirements")
            return _comment(indent, f"kit: dropped {stripped}")
        name_match = MAGIC_NAME.match(stripped)
        if name_match and stripped.startswith("%"):
            name = name_match.group(1)
            if name in WRAPPING_LINE_MAGICS:
                body = stripped[name_match.end() :].strip()
                if body:
                    self.result.warn(number, f"`%{name}` unwrapped: the statement runs without it")
                    return indent + body
            if name in NOTEBOOK_ONLY:
                if self.mode != "scan":
                    self.result.warn(number, f"`{stripped}` dropped: it only matters in a notebook")
                return _comment(indent, f"kit: dropped notebook-only {stripped}")
        return self.unsupported(number, stripped, indent)

    def unsupported(self, number: int, stripped: str, indent: str, cell_magic: bool = False) -> str:
        if self.mode == "scan":
            return _comment(indent, f"kit: masked {stripped}")
        shell = "!" in stripped[:2] or "= !" in stripped or (cell_magic and _magic_name(stripped) in SHELL_CELL_MAGICS)
        what = "cell magic" if cell_magic else ("shell command" if shell else "IPython magic")
        if self.mode == "test":
            self.result.warn(number, f"`{stripped}` skipped: a {what} cannot run outside IPython")
            if cell_magic:
                raise _MaskCell()
            return _comment(indent, f"kit: skipped {stripped}")
        hint = (
            "run it from Python with subprocess.run([...], check=True), or move it to an untagged cell"
            if shell
            else "write it as plain Python, or move it to an untagged cell"
        )
        article = "an" if what[0] in "aeiouI" else "a"
        raise self.notebook.error(f"`{stripped}` is {article} {what}, which a worker cannot run", hint, cell=self.cell.index, line=number)


def _magic_name(stripped: str) -> str:
    match = MAGIC_NAME.match(stripped)
    return match.group(1) if match else ""


def translate(notebook: Notebook, cell: Cell, mode: str) -> TranslatedCell:
    """`translate_cell`, where a cell magic that hides the whole cell masks it."""
    try:
        return translate_cell(notebook, cell, mode)
    except _MaskCell:
        masked = TranslatedCell(cell, "\n" * cell.source.count("\n"), notebook=notebook.name)
        if mode == "test":
            first = cell.source.strip().splitlines()[0]
            masked.warn(1, f"`{first}` skipped: a cell magic cannot run outside IPython")
        return masked


def parse_pip_install(arguments: str) -> tuple[list[str], list[str]]:
    """The requirements in a `pip install ...` argument string, and notes on what was left out."""
    notes: list[str] = []
    try:
        words = shlex.split(arguments, comments=True)
    except ValueError:
        words = arguments.split()
    specs: list[str] = []
    skip_next = False
    for word in words:
        if skip_next:
            skip_next = False
            continue
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            if option in ("-r", "--requirement", "-e", "--editable"):
                notes.append(f"`pip install {word} ...` not followed: list those requirements in a `%pip install` line")
            if option in PIP_OPTIONS_WITH_VALUE or option in ("-e", "--editable"):
                skip_next = "=" not in word
            continue
        if "$" in word or "{" in word:
            notes.append(f"`{word}` skipped: a requirement built from a variable cannot be pinned")
            continue
        specs.append(word)
    return specs, notes
