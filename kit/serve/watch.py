"""`kit serve NOTEBOOK --watch`: re-export on every save; warm reload or cold restart of the workers.

`Watcher` polls the notebook's path (not its inode: JupyterLab and VS Code
save by writing a new file and renaming it into place). Each save is exported
into a directory of its own; `compare` then decides, from the two exports:

- **warm**: only `handler` cells changed. The workers (run by
  `kit.worker.reloader`, which runs the exported handler.py through its own
  start block) swap in the new handler cells without re-running setup.
- **cold**: a setup cell, the requirements, a local module, the header or the
  start block changed: the workers drain and restart on the new export.
- a save that does not export prints the kit's one-line error and changes
  nothing: the workers keep serving the last good save.

Each reload prints one line when every worker has the new code in place:
which cells changed, warm or cold (and why), and the time from the save to
that moment, the reload's own figure. A save that exports but changes nothing
the workers run (a test cell, an output, a comment) says so in one line too.
Reloads are numbered from 1; the watcher and the workers speak through the
typed events of `kit.worker.reload_events`.
"""

from __future__ import annotations

import ast
import difflib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kit import percent, workerdir
from kit.errors import KitEnvironmentError, KitError
from kit.worker import reload_events
from kit.worker.reload_events import CONTROL_ENV

RELOADER = [sys.executable, "-m", "kit.worker.reloader"]
TICK = 0.05  # seconds between two looks at the notebook's path


@dataclass
class Version:
    """One export, as far as serving it is concerned."""

    path: Path  # the worker directory
    header: str
    footer: str
    cells: list[percent.PercentCell]
    kind: str
    requirements: str
    modules: dict[str, bytes]  # local modules copied beside handler.py, by name

    @classmethod
    def read(cls, path: Path) -> Version:
        parsed = percent.parse((path / workerdir.HANDLER).read_text(encoding="utf-8"))
        manifest = workerdir.Manifest.read(path)
        modules = {}
        for name in sorted(manifest.files if manifest else []):
            if name not in workerdir.GENERATED and (path / name).is_file():
                modules[name] = (path / name).read_bytes()
            elif name not in workerdir.GENERATED and (path / name).is_dir():
                modules[name] = b"".join(p.read_bytes() for p in sorted((path / name).rglob("*.py")))
        return cls(
            path=path,
            header=_code(parsed.header),
            footer=parsed.footer,
            cells=parsed.cells,
            kind=manifest.handler_kind if manifest else "function",
            requirements=_code((path / workerdir.REQUIREMENTS).read_text(encoding="utf-8")),
            modules=modules,
        )


@dataclass
class Change:
    cells: list[str] = field(default_factory=list)  # "cell 4 [handler]", "1 cell removed"
    cold: list[str] = field(default_factory=list)  # why the workers must restart; empty: warm

    @property
    def empty(self) -> bool:
        return not self.cells and not self.cold


def compare(old: Version, new: Version) -> Change:
    """What changed between two exports, and whether the workers must restart for it."""
    change = Change()
    a = [(c.tag, c.source) for c in old.cells]
    b = [(c.tag, c.source) for c in new.cells]
    removed = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        change.cells += [f"cell {new.cells[j].cell} [{new.cells[j].tag}]" for j in range(j1, j2)]
        removed += max(0, (i2 - i1) - (j2 - j1))
    if removed:
        change.cells.append(f"{removed} cell(s) removed")
    setup_old = [_meaning(c.source) for c in old.cells if c.tag != "handler"]
    setup_new = [_meaning(c.source) for c in new.cells if c.tag != "handler"]
    if setup_old != setup_new:
        change.cold.append("a setup cell changed, so setup runs again")
    if old.kind != new.kind:
        change.cold.append(f"the handler went from {old.kind} to {new.kind}")
    elif old.footer != new.footer:
        change.cold.append("the start block changed (a concurrency_modifier added or removed)")
    if old.header != new.header:
        change.cold.append("handler.py's header changed (`from __future__` imports)")
    if old.requirements != new.requirements:
        change.cold.append("requirements.txt changed")
    for name in sorted(set(old.modules) | set(new.modules)):
        if old.modules.get(name) != new.modules.get(name):
            change.cold.append(f"the local module {name} changed")
            change.cells.append(name)
    if change.cold and not change.cells:
        change.cells.append("no cell")
    return change


@dataclass
class _Pending:
    """A reload not yet in place in every worker."""

    number: int
    saved: float  # the notebook's mtime: when it was saved
    line: str  # the reload line, without its timing


class Watcher:
    """The watched notebook, its exports and the reloads of a `WorkerPool`."""

    def __init__(self, notebook: str | Path, *, say: Callable[[str], None] = print, tick: float = TICK):
        self.notebook = Path(notebook)
        if self.notebook.is_dir():
            raise KitError(f"{notebook}: --watch needs a notebook, not a worker directory", "give the .ipynb file")
        self.say = say
        self.tick = tick
        self.base: Path | None = None
        self.control: Path | None = None
        self.number = 0  # the generation the workers were last asked to serve: 0 the first export, N reload N
        self.exports = 0
        self.live: Version | None = None  # what the workers serve (or were last asked to)
        self.broken = False  # the last save did not export
        self.down = False  # the workers could not start: the next good save starts them
        self.pending: _Pending | None = None
        self._seen = None

    # ------------------------------------------------------------ lifecycle
    @contextmanager
    def serving(self):
        """Export the notebook for the first time; yield the worker directory; clean up at the end."""
        self.base = Path(tempfile.mkdtemp(prefix="kit-watch-"))
        self.control = self.base / "control"
        self.control.mkdir()
        try:
            self._seen = _stat(self.notebook)
            path = self._export()
            self.live = Version.read(path)
            reload_events.publish(self.control, reload_events.Generation(self.number, str(path / workerdir.HANDLER)))
            yield path
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def pool_options(self) -> dict:
        """What a `WorkerPool` needs to run the workers through the launcher."""
        return {"command": RELOADER, "env": {CONTROL_ENV: str(self.control)}}

    def _serving(self) -> tuple[Path, Path]:
        """The export base and control directories (made by `serving`)."""
        assert self.base is not None and self.control is not None, "Watcher.serving() has not started"
        return self.base, self.control

    def _export(self) -> Path:
        from kit.export.export import export_notebook

        self.exports += 1
        out = self._serving()[0] / str(self.exports) / self.notebook.stem
        result = export_notebook(self.notebook, out)
        for warning in result.warnings:
            self.say(f"warning: {warning}")
        return out

    def _publish(self, path: Path) -> None:
        """A reload: the next generation, for the workers to load."""
        self.number += 1
        reload_events.publish(self._serving()[1], reload_events.Generation(self.number, str(path / workerdir.HANDLER)))

    # ------------------------------------------------------------ every tick
    def poll(self, pool) -> None:
        """Supervise `pool` (restart dead workers), take in a save, report reloads."""
        if not self.down:
            try:
                pool.check()
            except KitEnvironmentError as error:
                # The new setup cannot start: say so, and wait for a save that fixes it.
                self.say(f"error: {error}; fix the notebook and save: the workers start on the next good save")
                pool.stop()
                self.down = True
                self.pending = None
        seen = _stat(self.notebook)
        if seen is not None and seen != self._seen:
            self._seen = seen
            self.saved(pool, seen[0] / 1e9)
        self._report(pool)

    def saved(self, pool, saved_at: float) -> None:
        try:
            path = self._export()
        except KitError as error:
            if _stat(self.notebook) == self._seen:  # not a save still being written
                self.say(f"error: {error} (still serving the last good save)")
                self.broken = True
            return
        broken, self.broken = self.broken, False
        new = Version.read(path)
        assert self.live is not None  # serving() read the first export
        change = compare(self.live, new)
        if change.empty and not self.down:
            shutil.rmtree(path.parent, ignore_errors=True)
            again = "the notebook exports again, " if broken else ""
            self.say(
                f"saved: {again}no change to the code the workers run (test cells, outputs and comments are not served): nothing to reload"
            )
            return
        if self.pending is not None:
            self.say(f"{self.pending.line}; superseded by the next save before every worker had it")
        cells = ", ".join(change.cells) or "no cell"
        self.live = new
        self._publish(path)
        if self.down or change.cold:
            why = "; ".join(change.cold) or "the workers were down"
            self.pending = _Pending(self.number, saved_at, f"reload {self.number}: {cells} changed — cold restart: {why}")
            self.down = False
            pool.restart(path)
        else:
            self.pending = _Pending(
                self.number, saved_at, f"reload {self.number}: {cells} changed — warm: setup kept, new handler code swapped in"
            )
            pool.reload()

    def _report(self, pool) -> None:
        """Say how the pending reload went, once every live worker reported on its generation."""
        if self.pending is None:
            return
        number = self.pending.number
        loaded: list[float] = []
        for worker_id in list(pool.processes):
            event = reload_events.reported(self._serving()[1], worker_id)
            if event is None or event.generation != number:
                return  # this worker has not reported on it yet
            if isinstance(event, reload_events.LoadFailed):
                self.say(
                    f"error: reload {number}: {self.notebook.name}: {event.error} "
                    "(the new handler cells failed in the worker; still serving the last good save)"
                )
                self.pending = None
                return
            if isinstance(event, reload_events.Loaded):
                loaded.append(event.at)
        if loaded:
            seconds = max(0.0, max(loaded) - self.pending.saved)
            self.say(f"{self.pending.line}; in place in {len(loaded)} worker(s) {seconds:.2f} s after the save")
            self.pending = None


def _meaning(source: str) -> str:
    """A cell's code without its comments and layout: a comment edit in a setup cell keeps the workers warm."""
    try:
        return ast.dump(ast.parse(source))
    except SyntaxError:
        return source


def _code(text: str) -> str:
    """`text` without comments: they name the export's directory and cell numbers, not what runs."""
    lines = (line.split("#", 1)[0].rstrip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _stat(path: Path):
    """What tells one save of `path` from the next, looked up by path: a rename into place is a new inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
