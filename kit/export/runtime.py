"""What the exported worker runs when it is started (`python handler.py`).

`main_block` renders the code under `if __name__ == "__main__":` at the end of
handler.py; `support_files` lists files exported beside it: `worker_loop.py`,
RunPod's worker loop without its fixed 1 s / 0.1 s ticks and its import-time
CPU probe (see that file's docstring; KIT_WORKER_LOOP=stock switches back), and
for a notebook that defines `batch_handler(jobs)`, `batching.py`, which groups
the jobs the SDK holds into batches and, for a `def batch_handler`, runs it and
the cells in a child process of their own (`batch_split_header`; see its docstring).
Neither may make the worker depend on the kit: the worker directory is
self-contained.
"""

from __future__ import annotations

from kit import workerdir
from kit.percent import FOOTER
from kit.platform import TEMPLATES, WORKER_LOOP_TEMPLATE
from kit.workerdir import GENERATOR_KINDS

BATCHING_TEMPLATE = TEMPLATES / "batching.py"


def main_block(handler_kind: str, has_concurrency_modifier: bool, config_name: str | None = None, batched: bool = False) -> str:
    """`config_name`: the notebook's RUNPOD_CONFIG (start options), spread last so each of its keys wins."""
    if batched:
        return _batched_main_block(has_concurrency_modifier, config_name)
    if has_concurrency_modifier:
        modifier_def = ""
        modifier = "concurrency_modifier"
    else:
        modifier_def = (
            "\n"
            "    def _concurrency_from_env(current: int) -> int:\n"
            "        # Jobs this worker runs at once: the seed template's CONCURRENCY_MODIFIER (default 1).\n"
            '        return int(os.environ.get("CONCURRENCY_MODIFIER", "1"))\n'
        )
        modifier = "_concurrency_from_env"
    stream = '            "return_aggregate_stream": True,\n' if handler_kind in GENERATOR_KINDS else ""
    return (
        f"{FOOTER}: RunPod's worker loop (with no queue configured, the SDK runs test_input.json once)\n"
        'if __name__ == "__main__":\n'
        "    import os\n"
        "\n"
        "    # runpod.serverless.start without the stock loop's 1 s fetch tick (see worker_loop.py;\n"
        "    # KIT_WORKER_LOOP=stock runs the stock loop).\n"
        "    import worker_loop\n"
        f"{modifier_def}"
        "\n"
        "    worker_loop.start(\n"
        "        {\n"
        '            "handler": handler,\n'
        f'            "concurrency_modifier": {modifier},\n'
        f"{stream}"
        f"{_notebook_options(config_name)}"
        "        }\n"
        "    )\n"
    )


def _batched_main_block(has_concurrency_modifier: bool, config_name: str | None) -> str:
    modifier = "concurrency_modifier" if has_concurrency_modifier else "batcher.concurrency"
    return (
        f"{FOOTER}: RunPod's worker loop, batch_handler called on batches of the jobs it holds\n"
        'if __name__ == "__main__":\n'
        "    # runpod.serverless.start without the stock loop's 1 s fetch tick (see worker_loop.py;\n"
        "    # KIT_WORKER_LOOP=stock runs the stock loop). Each job the SDK holds waits in batching.py\n"
        "    # for a batch of at most MAX_BATCH_SIZE (env var or constant above), MAX_BATCH_WAIT_MS at most.\n"
        "    import batching\n"
        "    import worker_loop\n"
        "\n"
        "    # In the process batching.split started (see the header), this serves batch_handler's calls instead.\n"
        "    batcher = batching.Batcher.from_namespace(globals())\n"
        "    batching.start(\n"
        "        batcher,\n"
        "        worker_loop.start,\n"
        "        {\n"
        '            "handler": batcher.handle,\n'
        f'            "concurrency_modifier": {modifier},\n'
        f"{_notebook_options(config_name)}"
        "        },\n"
        "    )\n"
    )


def _notebook_options(config_name: str | None) -> str:
    if not config_name:
        return ""
    return f"            **{config_name},  # the notebook's options for runpod.serverless.start\n"


def batch_split_header() -> str:
    """The header lines that, for a `def batch_handler`, make `python handler.py` in a queue worker run the
    SDK's loop and start a child that runs the cells and batch_handler (see batching.py's `split`)."""
    return (
        "    # A queue worker runs the SDK's loop in this process and the cells, the model and batch_handler\n"
        "    # in a child of its own (batching.py; KIT_BATCH_PROCESS=0 runs all of handler.py here).\n"
        "    import batching  # noqa: E402\n"
        "\n"
        "    batching.split(__file__, worker_loop.start)\n"
    )


def provided_handler() -> str:
    """The module-level code that gives a notebook with only `batch_handler` its `handler(job)`."""
    return (
        "# kit: the notebook defines no handler(job), so this one runs batch_handler([job]) (see batching.py)\n"
        "import batching as _kit_batching  # noqa: E402\n"
        "\n"
        "handler = _kit_batching.single_job_handler(batch_handler)\n"
    )


def support_files(batched: bool = False) -> dict[str, str]:
    """Files written beside handler.py, by name."""
    files = {workerdir.WORKER_LOOP: WORKER_LOOP_TEMPLATE.read_text(encoding="utf-8")}
    if batched:
        files[workerdir.BATCHING] = BATCHING_TEMPLATE.read_text(encoding="utf-8")
    return files
