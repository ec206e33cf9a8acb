"""The test-job finder: job literals the test cells pass to handler(...) and batch_handler([...])."""

from __future__ import annotations

import ast

from kit.export.facts import job_sites
from kit.export.jobs import find_jobs


def test_job_literals_directly_or_through_a_variable_in_order():
    tree = ast.parse(
        "job = {'input': {'a': 1}}\nhandler(job)\nhandler({'input': 2})\nhandler(other)\nx.handler({'input': 3})\nhandler({'no': 'input'})"
    )
    jobs = find_jobs([(7, job_sites(tree))])
    assert [(j["cell"], j["line"], j["job"]) for j in jobs] == [(7, 2, {"input": {"a": 1}}), (7, 3, {"input": 2}), (7, 5, {"input": 3})]


def test_batch_jobs_from_a_list_literal_or_a_name_and_jobs_named_in_an_earlier_cell():
    first = ast.parse("a = {'input': 1}\nbatch = [{'input': 5}, {'input': 2}]")
    second = ast.parse("batch_handler(batch)\nbatch_handler([a, {'input': 3}, {'no': 1}])\nbatch_handler(make())")
    jobs = find_jobs([(1, job_sites(first)), (2, job_sites(second))])
    assert [(j["cell"], j["line"], j["job"]) for j in jobs] == [
        (2, 1, {"input": 5}),
        (2, 1, {"input": 2}),
        (2, 2, {"input": 1}),
        (2, 2, {"input": 3}),
    ]
