"""What `kit export --repo` reads from a notebook for hub.json, tests.json and the README.

Its own parse of the exported code (setup and handler cells; test and untagged cells
never reach the image): the environment variables it reads (`os.environ.get`,
`os.getenv`, `os.environ[...]`, `"X" in os.environ`), whether it uses CUDA, the imports
a category is guessed from; and of the test cells: which job literal is expected to
fail (its call inside `try`/`pytest.raises`, or its result checked for "error").

Times: a Hub test starts a fresh worker, so its timeout covers the cold start. They come
from the notebook: the run time JupyterLab records in each cell's metadata
(`execution`, "Record cell timing", on in the kit's image) of the setup cells and of the
test cell that sends the job; headroom: `60 s + 3 × that`. A notebook without recorded
times gets DEFAULT_TIMEOUT, and the export says so.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeGuard

from kit import workerdir
from kit.errors import KitWarning
from kit.export.facts import parse_test_cells

if TYPE_CHECKING:
    from kit.export.export import Worker

DEFAULT_TIMEOUT_MS = 300_000
START_ALLOWANCE = 60.0  # seconds for the worker's start on the Hub's machine (its image pulled already)
HEADROOM = 3.0
DISK_FLOOR_GB = 20  # what RunPod's own workers ask for
NOTEBOOK_LIMIT = 50_000_000  # bytes of .ipynb read for its timing metadata

# Words in imports, the title and the handler's names -> the Hub category they suggest, strongest first.
CATEGORY_WORDS = {
    "embedding": ("sentence_transformers", "fastembed", "infinity_emb", "embedding", "embed", "minilm", "bge", "e5"),
    "audio": ("whisper", "faster_whisper", "torchaudio", "librosa", "soundfile", "audio", "speech", "tts", "transcri"),
    "video": ("decord", "moviepy", "imageio_ffmpeg", "video", "av"),
    "image": ("diffusers", "PIL", "cv2", "torchvision", "controlnet", "image", "diffusion", "sdxl", "flux"),
    "language": ("vllm", "llama_cpp", "openai", "sglang", "exllamav2", "chat", "llm", "language", "generate"),
}


@dataclass
class EnvVar:
    key: str
    cell: int
    line: int
    how: str  # how it is read, e.g. os.environ.get
    required: bool = False
    has_default: bool = False
    default: Any = None

    @property
    def label(self) -> str:
        return self.key.replace("_", " ").strip().capitalize() or self.key

    @property
    def type(self) -> str:
        if isinstance(self.default, bool):
            return "boolean"
        if isinstance(self.default, (int, float)):
            return "number"
        return "string"


@dataclass
class Job:
    cell: int
    line: int
    input: dict
    timeout_ms: int
    expected_failure: str | None = None  # why it is left out: the notebook expects it to fail, or it is no JSON
    number: int = 0  # among several jobs of one call (batch_handler([...])): 1, 2, ...

    @property
    def name(self) -> str:
        return f"cell_{self.cell}_line_{self.line}" + (f"_job_{self.number}" if self.number else "")


@dataclass
class Facts:
    notebook: str
    command: str
    title: str
    description: str
    env: list[EnvVar]
    uses_cuda: bool
    category_guess: tuple[str, str]  # (category, why)
    disk_gb: int
    jobs: list[Job]
    timing_note: str
    output_example: str | None = None
    warnings: list[KitWarning] = field(default_factory=list)


def read_facts(worker: Worker) -> Facts:
    notebook = worker.notebook
    manifest = workerdir.Manifest.from_text(worker.files[workerdir.MANIFEST])
    exported = [(c.index, c.translated.source) for c in worker.analysis.cells if c.role in ("setup", "handler")]
    trees = [(index, _parse(source)) for index, source in exported]
    title, description = _title(worker)
    env = _env_reads(trees)
    raw = _raw_cells(worker)
    timing = {index: seconds for index, seconds in ((i, _cell_seconds(raw.get(i))) for i in raw) if seconds is not None}
    setup = [c.index for c in worker.analysis.cells if c.role == "setup"]
    jobs, timing_note = _jobs(worker, timing, setup)
    words = _words(worker, trees, title)
    return Facts(
        notebook=notebook.name,
        command=manifest.command or "kit export",
        title=title,
        description=description,
        env=env,
        uses_cuda=any(_uses_cuda(tree) for _, tree in trees),
        category_guess=_guess_category(words),
        disk_gb=_disk_gb(worker),
        jobs=jobs,
        timing_note=timing_note,
        output_example=_output_example(raw, [j.cell for j in jobs]),
    )


def _parse(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError:  # top-level await: the export checked the cell already
        return ast.Module(body=[], type_ignores=[])


# --------------------------------------------------------------------------- title, description


def _title(worker: Worker) -> tuple[str, str]:
    stem = (worker.notebook.path.stem if worker.notebook.path else worker.notebook.name).replace("_", " ").replace("-", " ")
    fallback = (stem.strip().capitalize() or "Worker", f"A RunPod serverless worker exported by the kit from {worker.notebook.name}.")
    markdown = next((c for c in worker.notebook.cells if c.kind == "markdown" and c.source.strip()), None)
    if markdown is None:
        return fallback
    lines = [line.strip() for line in markdown.source.splitlines()]
    title = ""
    for i, line in enumerate(lines):
        if line.startswith("#"):
            title = _plain(line.lstrip("#"))
            lines = lines[i + 1 :]
            break
    paragraph: list[str] = []
    for line in lines:
        if not line:
            if paragraph:
                break
            continue
        if line.startswith("#"):
            if paragraph:
                break
            continue
        paragraph.append(line)
    description = _plain(" ".join(paragraph))
    if len(description) > 300:
        description = description[:297].rsplit(" ", 1)[0] + "..."
    return (title[:80] or fallback[0], description or fallback[1])


def _plain(text: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links and images: their text
    text = re.sub(r"[*`]{1,3}|(?<!\w)_{1,3}|_{1,3}(?!\w)", "", text)  # emphasis and code marks, not snake_case
    return " ".join("".join(c for c in text if c.isprintable()).split())


# --------------------------------------------------------------------------- env vars, CUDA


def _env_reads(trees: list[tuple[int, ast.Module]]) -> list[EnvVar]:
    found: dict[str, EnvVar] = {}
    for cell, tree in trees:
        nodes = sorted((n for n in ast.walk(tree) if isinstance(n, ast.expr)), key=lambda n: (n.lineno, n.col_offset))
        for node in nodes:
            var = _env_read(node, cell)
            if var is None or var.key.startswith("RUNPOD_"):  # RunPod sets its own
                continue
            known = found.get(var.key)
            if known is None:
                found[var.key] = var
            elif var.has_default and not known.has_default:
                found[var.key] = EnvVar(var.key, known.cell, known.line, known.how, False, True, var.default)
            elif not var.required and known.required:
                found[var.key] = EnvVar(known.key, known.cell, known.line, known.how)
    return list(found.values())


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name) and node.id == "environ")


def _env_read(node: ast.AST, cell: int) -> EnvVar | None:
    key_node: ast.expr | None = None
    how = ""
    default: ast.expr | None = None
    required = False
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and _is_environ(func.value):
            how = "os.environ.get"
        elif (isinstance(func, ast.Attribute) and func.attr == "getenv") or (isinstance(func, ast.Name) and func.id == "getenv"):
            how = "os.getenv"
        else:
            return None
        if not node.args:
            return None
        key_node = node.args[0]
        default = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "default"), None)
    elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
        key_node, how, required = node.slice, "os.environ[...]", True
    elif (
        isinstance(node, ast.Compare)
        and len(node.ops) == 1
        and isinstance(node.ops[0], (ast.In, ast.NotIn))
        and _is_environ(node.comparators[0])
    ):
        key_node, how = node.left, "in os.environ"
    else:
        return None
    if not (isinstance(key_node, ast.Constant) and isinstance(key_node.value, str) and key_node.value.strip()):
        return None
    key = key_node.value
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
        return None
    var = EnvVar(key, cell, node.lineno, how, required=required)
    if default is not None:
        ok, value = _default(default)
        if ok:
            var.has_default, var.default = True, value
    return var


def _default(node: ast.expr) -> tuple[bool, Any]:
    """(is a literal, its value as the Hub takes it: numbers and booleans typed)."""
    if not isinstance(node, ast.Constant) or node.value is None:
        return False, None
    value = node.value
    if isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value)):
        return True, value
    if not isinstance(value, str):
        return False, None
    if value.strip().lower() in ("true", "false"):
        return True, value.strip().lower() == "true"
    if re.fullmatch(r"-?\d{1,15}", value.strip()):
        return True, int(value)
    if re.fullmatch(r"-?\d{1,15}\.\d{1,15}", value.strip()):
        return True, float(value)
    return True, value


def _uses_cuda(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("cuda", "is_available") and "cuda" in ast.unparse(node):
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cuda"):
            return True
        if isinstance(node, ast.keyword) and node.arg == "device_map":
            return True
    return False


# --------------------------------------------------------------------------- category


def _words(worker: Worker, trees: list[tuple[int, ast.Module]], title: str) -> list[tuple[str, str]]:
    """(word, where it comes from): the exported code's imports, the title, its function names."""
    words = [(i.dotted, f"import {i.dotted}") for i in worker.analysis.imports]
    words += [(word, f"the title {title!r}") for word in re.findall(r"\w+", title)]
    for _, tree in trees:
        words += [(n.name, f"def {n.name}") for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return words


def _guess_category(words: list[tuple[str, str]]) -> tuple[str, str]:
    scores: dict[str, list[str]] = {}
    for category, hints in CATEGORY_WORDS.items():
        for word, where in words:
            parts = re.split(r"[._]", word.lower())
            if any(h.lower() in parts or (len(h) > 3 and h.lower() in word.lower()) for h in hints):
                scores.setdefault(category, [])
                if where not in scores[category]:
                    scores[category].append(where)
    if not scores:
        return "language", "nothing in the code (no import or name suggests another)"
    best = max(CATEGORY_WORDS, key=lambda c: len(scores.get(c, [])))
    return best, ", ".join(scores[best][:3])


# --------------------------------------------------------------------------- disk


def _disk_gb(worker: Worker) -> int:
    """20 GB, or more when the requirements, as installed here, take more than a few GB
    (their installed size twice, for pip's unpacking, plus 10 GB for the worker's own files)."""
    total = 0
    for line in worker.requirements.lines:
        try:
            dist = metadata.distribution(line.name)
        except (metadata.PackageNotFoundError, ValueError):
            continue
        for path in dist.files or ():
            if path.size:
                total += int(path.size)
    return max(DISK_FLOOR_GB, math.ceil(2 * total / 1e9 + 10))


# --------------------------------------------------------------------------- jobs, times


def _raw_cells(worker: Worker) -> dict[int, dict]:
    """The notebook's cells as stored (1-based positions): metadata and outputs, which the kit's Notebook drops."""
    path = worker.notebook.path
    try:
        if path is None or path.stat().st_size > NOTEBOOK_LIMIT:
            return {}
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells")
    except (OSError, ValueError, AttributeError):
        return {}
    return {i: c for i, c in enumerate(cells if isinstance(cells, list) else [], 1) if isinstance(c, dict)}


def _cell_seconds(cell: dict | None) -> float | None:
    """The run time JupyterLab recorded for the cell (metadata.execution), if it did."""
    try:
        execution = cell["metadata"]["execution"] if cell else {}
        start = datetime.fromisoformat(execution["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(execution["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    seconds = (end - start).total_seconds()
    return seconds if 0 <= seconds < 86_400 else None


def _jobs(worker: Worker, timing: dict[int, float], setup: list[int]) -> tuple[list[Job], str]:
    failing = _expected_failures(worker)
    setup_time = sum(timing[i] for i in setup if i in timing) if all(i in timing for i in setup) else None
    jobs: list[Job] = []
    measured = 0
    for entry in worker.jobs:
        body = entry["job"]
        if not isinstance(body.get("input"), dict):
            continue
        cell, line = entry["cell"], entry["line"]
        if setup_time is not None and cell in timing:
            seconds = START_ALLOWANCE + HEADROOM * (setup_time + timing[cell])
            timeout = int(math.ceil(seconds / 10) * 10_000)
            measured += 1
        else:
            timeout = DEFAULT_TIMEOUT_MS
        reason = failing.get((cell, line))
        try:
            json.dumps(body["input"], allow_nan=False)
        except ValueError:
            reason = "its input holds NaN or infinity, which JSON cannot carry"
        same = [j for j in jobs if (j.cell, j.line) == (cell, line)]
        if len(same) == 1:
            same[0].number = 1
        jobs.append(Job(cell, line, body["input"], timeout, reason, len(same) + 1 if same else 0))
    if jobs and measured == len(jobs):
        note = (
            f"test timeouts from the run times the notebook recorded (setup cells and each job's test cell): "
            f"{START_ALLOWANCE:.0f} s + {HEADROOM:.0f} × that"
        )
    else:
        note = (
            f"test timeouts: {DEFAULT_TIMEOUT_MS // 1000} s for the jobs whose cells have no recorded run time "
            "(turn on JupyterLab's Settings → Notebook → Record cell timing, run the notebook, save, export again)"
        )
    return jobs, note


def _expected_failures(worker: Worker) -> dict[tuple[int, int], str]:
    """(cell, line) of each handler call the test code expects to fail -> why it looks so."""
    found: dict[tuple[int, int], str] = {}
    for test in parse_test_cells(worker.notebook):
        cell = test.translated.cell.index
        try:  # the facts keep no syntax tree; the export already checked that the cell parses
            tree = ast.parse(test.translated.source)
        except (SyntaxError, ValueError):
            continue
        checked = _names_checked_for_error(tree)
        for node in ast.walk(tree):
            for reason, call in _handler_calls_in(node, checked):
                found.setdefault((cell, call.lineno), reason)
    return found


def _is_handler_call(node: ast.AST) -> TypeGuard[ast.Call]:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in ("handler", "batch_handler")


def _calls(nodes: list[ast.stmt]) -> list[ast.Call]:
    return [n for stmt in nodes for n in ast.walk(stmt) if _is_handler_call(n)]


def _handler_calls_in(node: ast.AST, checked: set[str]) -> list[tuple[str, ast.Call]]:
    handlers, body = getattr(node, "handlers", None), getattr(node, "body", None)
    if type(node).__name__ in ("Try", "TryStar") and handlers and isinstance(body, list):  # try/except* from 3.11
        return [("its call is inside try/except: the notebook expects it may fail", c) for c in _calls(body)]
    if isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            expr = item.context_expr
            if isinstance(expr, ast.Call) and "raises" in ast.unparse(expr.func):
                return [
                    (f"its call is inside `with {ast.unparse(expr.func)}(...)`: the notebook expects an error", c)
                    for c in _calls(node.body)
                ]
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        name, value = node.targets[0].id, node.value
        if name in checked and _is_handler_call(value):
            return [(f'the test checks its result {name} for "error": a job that returns an error fails on RunPod', value)]
    return []


def _names_checked_for_error(tree: ast.Module) -> set[str]:
    """Names the test code reads "error" from: x["error"], "error" in x, x.get("error")."""
    names = set()
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "error":
            target = node.value
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and node.left.value == "error":
            target = node.comparators[0]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "error"
        ):
            target = node.func.value
        if isinstance(target, ast.Name):
            names.add(target.id)
    return names


def _output_example(raw: dict[int, dict], cells: list[int]) -> str | None:
    """The first text a job's test cell showed when the notebook ran (its saved output), cut short."""
    for cell in cells:
        outputs = raw.get(cell, {}).get("outputs")
        for output in outputs if isinstance(outputs, list) else []:
            if not isinstance(output, dict):
                continue
            data = output.get("data")
            data = data if isinstance(data, dict) else {}
            text = data.get("text/plain") if output.get("output_type") == "execute_result" else output.get("text")
            if isinstance(text, list):
                text = "".join(t for t in text if isinstance(t, str))
            if isinstance(text, str) and text.strip():
                text = "".join(c for c in text.strip() if c.isprintable() or c == "\n").replace("```", "'''")
                return text[:1500] + ("\n..." if len(text) > 1500 else "")
    return None
