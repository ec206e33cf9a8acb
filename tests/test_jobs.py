"""The test-job finder: job literals the test cells pass to handler(...) and batch_handler([...])."""

from __future__ import annotations

import ast

from kit.export.jobs import find_jobs


def test_job_literals_directly_or_through_a_variable_in_order():
    tree = ast.parse(
        "job = {'input': {'a': 1}}\nhandler(job)\nhandler({'input': 2})\nhandler(other)\nx.handler({'input': 3})\nhandler({'no': 'input'})"
    )
    jobs = find_jobs([(7, tree)])
    assert [(j["cell"], j["line"], j["job"]) for j in jobs] == [(7, 2, {"input": {"a": 1}}), (7, 3, {"input": 2}), (7, 5, {"input": 3})]
