"""The worker directory's names and manifest, as export writes them and the other steps read them."""

from __future__ import annotations

import json

from conftest import HELLO_CELLS

from kit import workerdir
from kit.export.export import export_notebook


def test_the_manifest_records_what_the_export_found_and_wrote(make_notebook, tmp_path):
    out = tmp_path / "out"
    export_notebook(make_notebook(HELLO_CELLS), out, exclude=["torch"])
    manifest = workerdir.Manifest.read(out)
    assert manifest.handler_kind == "function" and manifest.setup_cells == [2] and manifest.handler_cells == [3]
    assert manifest.jobs[0]["job"] == {"input": {"name": "ada"}}
    assert sorted(p.name for p in out.iterdir()) == manifest.files
    assert set(manifest.files) == set(workerdir.GENERATED) - {workerdir.BATCHING}  # no batch_handler here
    assert manifest.command.endswith(f"-o {out} --exclude torch")


def test_a_missing_or_broken_manifest_reads_as_none(tmp_path):
    assert workerdir.Manifest.read(tmp_path) is None
    (tmp_path / workerdir.MANIFEST).write_text("[1, 2]")
    assert workerdir.Manifest.read(tmp_path) is None
    (tmp_path / workerdir.MANIFEST).write_text(json.dumps({"notebook": "x.ipynb", "handler_kind": "async", "later": 1}))
    assert workerdir.Manifest.read(tmp_path).handler_kind == "async"  # unknown keys from a newer kit are ignored


def test_a_hand_written_worker_is_tested_on_its_test_input(tmp_path):
    (tmp_path / workerdir.HANDLER).write_text("def handler(job):\n    return 1\n")
    assert workerdir.jobs_to_test(tmp_path) == []
    (tmp_path / workerdir.TEST_INPUT).write_text('{"input": {"a": 1}}')
    assert workerdir.jobs_to_test(tmp_path) == [{"cell": None, "line": None, "job": {"input": {"a": 1}}}]
    assert workerdir.example_job(tmp_path) == {"input": {"a": 1}}


def _worker_loop_handler_kind():
    """worker_loop.py's own copy of the classification, read from the template without importing it
    (importing it imports runpod)."""
    import ast

    from kit.export.runtime import WORKER_LOOP_TEMPLATE

    tree = ast.parse(WORKER_LOOP_TEMPLATE.read_text(encoding="utf-8"))
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "handler_kind"]
    namespace: dict = {"inspect": __import__("inspect")}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "worker_loop.py", "exec"), namespace)
    return namespace["handler_kind"]


def test_worker_loops_copy_of_the_handler_kind_agrees_with_the_kits():
    import functools

    def plain(job):
        return job

    async def coroutine(job):
        return job

    def generator(job):
        yield job

    async def async_generator(job):
        yield job

    def batch_handler(jobs):
        return jobs

    async def async_batch_handler(jobs):
        return jobs

    cases = {
        plain: "function",
        coroutine: "async",
        generator: "generator",
        async_generator: "async_generator",
        batch_handler: "function",
        async_batch_handler: "async",
        functools.partial(plain): "function",
        functools.wraps(generator)(lambda job: generator(job)): "function",  # what it is, not what it wraps
    }
    copy = _worker_loop_handler_kind()
    for handler, kind in cases.items():
        assert workerdir.HandlerKind.of(handler) == kind and copy(handler) == kind, handler
    assert {copy(h) for h in cases} == set(workerdir.HANDLER_KINDS)
