"""`kit new NAME`: a starter notebook that exports and passes `kit test` as written.

The notebook is built here with nbformat, so it ships inside the kit itself (no
file from the repository checkout is needed). Each kind of handler gets its own
handler and test cells; the setup cell either defines a small text function or,
with `--model PATH`, loads a `transformers` model from that folder once.
The file is created, never replaced: an existing NAME.ipynb is an error.
"""

from __future__ import annotations

import os
import re
import tempfile
from enum import Enum
from pathlib import Path

from kit.errors import KitEnvironmentError, KitError
from kit.workerdir import HandlerKind

# A notebook name: a letter, then letters, digits, '_' or '-' (no path, no dots, no spaces).
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


class StarterKind(str, Enum):
    """The handler a starter notebook defines (`kit new --kind`)."""

    PLAIN = "plain"
    ASYNC = "async"
    GENERATOR = "generator"
    BATCH = "batch"

    @property
    def handler_kind(self) -> HandlerKind:
        """The kind of the exported worker's `handler` (batch: the kit wraps batch_handler in a plain handler)."""
        return {
            StarterKind.PLAIN: HandlerKind.FUNCTION,
            StarterKind.ASYNC: HandlerKind.ASYNC,
            StarterKind.GENERATOR: HandlerKind.GENERATOR,
            StarterKind.BATCH: HandlerKind.FUNCTION,
        }[self]


KINDS = tuple(kind.value for kind in StarterKind)


def notebook_path(name: str, folder: Path) -> Path:
    """folder/NAME.ipynb, or a KitError when NAME is not a plain notebook name."""
    stem = name[: -len(".ipynb")] if name.endswith(".ipynb") else name
    if "/" in stem or "\\" in stem or os.sep in stem:
        raise KitError(f"{name!r} is a path: kit new takes a name and writes NAME.ipynb in the current folder (cd there first)")
    if not NAME_PATTERN.fullmatch(stem):
        raise KitError(
            f"{name!r} is not a notebook name: use a letter, then letters, digits, '_' or '-' (at most 64), e.g. kit new my_worker"
        )
    return folder / f"{stem}.ipynb"


def model_dir(path: str) -> Path:
    """The absolute model folder, or a KitError naming what is missing."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise KitError(f"--model {path}: no such folder (give the folder that holds the model's config.json)")
    if not (folder / "config.json").is_file():
        raise KitError(f"--model {path}: {folder / 'config.json'} does not exist (a transformers model folder has one)")
    return folder.resolve()


INTRO = """\
# {title}

A RunPod serverless worker written as a notebook. Run All, then use the panel (or `kit test {file}`)
to prove it the way RunPod will run it.

How the kit reads this notebook (the tag of a cell is under *View → Cell Toolbar → Tags*, or the
**Tags** button of the cell toolbar):

- **setup** cells run once, when the worker starts: imports, settings, loading a model.
- **handler** cells define {handler_what}. Keep them cheap: everything slow belongs in setup.
- **test** cells call the handler on example jobs and `assert` what should come back. `kit test`
  runs them in a fresh Python, then runs the first job through the real `runpod` SDK.
- Untagged cells (like the panel below) are scratch: never exported.

A job is `{{"id": ..., "input": {{...}}}}`; `job["input"]` is what the caller sent. Return a dict
(anything JSON can carry); return `{{"error": "..."}}` to fail the job with a message.
{kind_note}
Export: `kit export {file}` writes `build/{stem}/` (handler.py, pinned requirements.txt, tests).
Serve it locally: `kit serve {file}`.
"""

KIND_NOTES = {
    StarterKind.PLAIN: "",
    StarterKind.ASYNC: (
        "\nThe handler is `async def`: the worker can hold several jobs at once while each awaits I/O.\n"
        "Blocking work (a model, a big computation) goes to a thread with `asyncio.to_thread`.\n"
    ),
    StarterKind.GENERATOR: (
        "\nThe handler is a generator: each `yield` is a chunk the caller reads from `/stream/<job id>`\n"
        "while the job runs; `/runsync` returns the list of all chunks.\n"
    ),
    StarterKind.BATCH: (
        "\nThe handler cell defines `batch_handler(jobs)`: the worker groups the jobs it holds into batches\n"
        "of at most `MAX_BATCH_SIZE`, waiting at most `MAX_BATCH_WAIT_MS` for a batch that is not full, and\n"
        'returns one result per job, in order (an element `{"error": ...}` fails that job alone).\n'
        "The exported worker also gets `handler(job)`, a batch of one.\n"
    ),
}

HANDLER_WHAT = {
    StarterKind.PLAIN: "`handler(job)`",
    StarterKind.ASYNC: "`async def handler(job)`",
    StarterKind.GENERATOR: "`handler(job)`, a generator",
    StarterKind.BATCH: "`batch_handler(jobs)`",
}

PANEL = """\
# The kit's panel: try the handler on a job, export the worker, run `kit test`. Untagged: never exported.
import kit

kit.panel()"""

SETUP_TEXT = """\
import os

# Read once, when the worker starts (set env vars on the endpoint to change them).
GREETING = os.environ.get("GREETING", "Hello")


def compute(texts: list[str]) -> list[dict]:
    \"\"\"The work itself, on a list of texts at once: replace it with yours.\"\"\"
    return [{"greeting": f"{GREETING}, {text}!", "words": len(text.split())} for text in texts]"""

SETUP_MODEL = """\
import os

import torch
from transformers import AutoModel, AutoTokenizer

# Loaded once, when the worker starts: never inside the handler.
# MODEL_DIR (an env var on the endpoint) points elsewhere, e.g. at a network volume.
MODEL_DIR = os.environ.get("MODEL_DIR") or {model_dir}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
model = AutoModel.from_pretrained(MODEL_DIR).to(DEVICE).eval()


def compute(texts: list[str]) -> list[dict]:
    \"\"\"One forward pass for all texts: a mean-pooled vector per text. Replace it with your model's task.\"\"\"
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(DEVICE)
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    # Plain lists: RunPod carries results as JSON, and a tensor is not JSON.
    return [{"dimensions": len(vector), "embedding": vector} for vector in pooled.cpu().tolist()]"""

TEXT_OF = '''\
def text_of(job) -> str | None:
    """The job's input.text, or None when it has none."""
    text = job.get("input", {}).get("text")
    return text if isinstance(text, str) and text.strip() else None

'''

MISSING = '{"error": "input.text must be a non-empty string"}'

HANDLERS = {
    StarterKind.PLAIN: TEXT_OF
    + f'''
def handler(job):
    """One job in, one result out."""
    text = text_of(job)
    if text is None:
        return {MISSING}
    return compute([text])[0]''',
    StarterKind.ASYNC: "import asyncio\n\n\n"
    + TEXT_OF
    + f'''
async def handler(job):
    """One job in, one result out; the work runs in a thread, so the worker keeps serving."""
    text = text_of(job)
    if text is None:
        return {MISSING}
    results = await asyncio.to_thread(compute, [text])
    return results[0]''',
    StarterKind.GENERATOR: TEXT_OF
    + '''
def handler(job):
    """One chunk per line of input.text, yielded as soon as it is ready."""
    text = text_of(job)
    if text is None:
        # Raised, not yielded: the job fails with this message (chunks already sent stay sent).
        raise ValueError("input.text must be a non-empty string")
    for line in text.splitlines():
        if line.strip():
            yield compute([line])[0]''',
    StarterKind.BATCH: TEXT_OF
    + f'''
MAX_BATCH_SIZE = 8  # jobs per batch (the env var MAX_BATCH_SIZE overrides it)
MAX_BATCH_WAIT_MS = 10  # how long a batch that is not full waits for more jobs (env var: MAX_BATCH_WAIT_MS)


def batch_handler(jobs):
    """All the jobs' texts in one compute() call; one result per job, in order."""
    texts = [text_of(job) for job in jobs]
    done = iter(compute([text for text in texts if text is not None]))
    return [next(done) if text is not None else {MISSING} for text in texts]''',
}


def _check(kind: StarterKind, model: bool) -> str:
    """What the test cell asserts about one result."""
    return 'result["dimensions"] > 0' if model else 'result["greeting"].endswith("world!")'


def test_source(kind: StarterKind, model: bool) -> str:
    check = _check(kind, model)
    job = '{"input": {"text": "hello world"}}'
    if kind is StarterKind.PLAIN:
        return f'result = handler({job})\nprint(result)\nassert {check}\n\n# A job without text fails with a message, not a crash.\nassert "error" in handler({{"input": {{}}}})'
    if kind is StarterKind.ASYNC:
        return f'# Test cells may `await` at the top level.\nresult = await handler({job})\nprint(result)\nassert {check}\n\nassert "error" in await handler({{"input": {{}}}})'
    if kind is StarterKind.GENERATOR:
        return (
            'chunks = list(handler({"input": {"text": "hello world\\nhello again"}}))\n'
            "print(chunks)\nassert len(chunks) == 2\n"
            f"result = chunks[0]\nassert {check}\n\n"
            "\n# A job without text fails with a message, not a crash.\n"
            "try:\n"
            '    list(handler({"input": {}}))\n'
            "except ValueError as error:\n"
            '    print("a job without text fails:", error)\n'
            "else:\n"
            '    raise AssertionError("a job without text must fail")'
        )
    return (
        'jobs = [{"id": "a", "input": {"text": "hello world"}}, {"id": "b", "input": {"text": "hi"}}]\n'
        "results = batch_handler(jobs)\nprint(results)\n"
        "assert len(results) == len(jobs)\n"
        f"result = results[0]\nassert {check}\n\n"
        "# A bad job fails alone; the others in its batch still get their results.\n"
        'bad = dict(id="bad", input={})\n'
        "mixed = batch_handler([jobs[0], bad])\n"
        'assert "error" in mixed[1] and "error" not in mixed[0]'
    )


def starter_notebook(stem: str, kind: StarterKind, model: Path | None = None):
    """The starter notebook (an nbformat NotebookNode) for `kit new`."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    file = f"{stem}.ipynb"
    intro = INTRO.format(title=stem, file=file, stem=stem, handler_what=HANDLER_WHAT[kind], kind_note=KIND_NOTES[kind])
    setup = SETUP_MODEL.replace("{model_dir}", repr(str(model))) if model is not None else SETUP_TEXT

    def tagged(source: str, tag: str):
        cell = new_code_cell(source)
        cell.metadata["tags"] = [tag]
        return cell

    cells = [
        new_markdown_cell(intro),
        new_code_cell(PANEL),
        new_markdown_cell(
            "## Setup\n\nRuns once per worker."
            + (f" Loads the `transformers` model from `{model}` (the env var `MODEL_DIR` overrides it)." if model else "")
        ),
        tagged(setup, "setup"),
        new_markdown_cell("## Handler\n\nRuns for every job."),
        tagged(HANDLERS[kind], "handler"),
        new_markdown_cell("## Test\n\nExample jobs and what must come back. The first job is also `kit test`'s job for the SDK."),
        tagged(test_source(kind, model is not None), "test"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def new_notebook_file(name: str, kind: str = "plain", model: str | None = None, folder: Path | None = None) -> Path:
    """Write NAME.ipynb in `folder` (default: the current one); never replaces a file."""
    import nbformat

    try:
        starter = StarterKind(kind)
    except ValueError:
        raise KitError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}") from None
    target = notebook_path(name, folder or Path.cwd())
    if target.exists() or target.is_symlink():
        raise KitError(f"{target.name} already exists: kit new never replaces a file (choose another name, or delete it first)")
    model_folder = model_dir(model) if model is not None else None
    text = nbformat.writes(starter_notebook(target.stem, starter, model_folder))
    # Written beside the target, then linked into place: the link fails if a file
    # appeared meanwhile, and no half-written notebook is ever visible.
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise KitEnvironmentError(f"cannot write in {target.parent}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, 0o644)
        try:
            os.link(temp, target)
        except FileExistsError:
            raise KitError(f"{target.name} already exists: kit new never replaces a file") from None
        except OSError:  # a filesystem without hard links: exclusive create instead
            try:
                with open(target, "x", encoding="utf-8") as out:
                    out.write(text)
            except FileExistsError:
                raise KitError(f"{target.name} already exists: kit new never replaces a file") from None
    finally:
        os.unlink(temp)
    return target
