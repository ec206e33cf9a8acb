"""What the test cells' own calls of `handler(job)` (and `batch_handler(jobs)`) gave, and a job judged against it.

`kit test` runs each job literal of the test cells again through the SDK. A job
must give there what calling the handler directly in the notebook gave: the
same output, or the same error. A test that sends a bad job and asserts the
error is an error path working as intended, not a failure of the worker; the
same holds for a job whose element of a `batch_handler` call's result is
`{"error": ...}`.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import json
import reprlib
from collections.abc import Callable
from typing import Any

from kit import platform
from kit.test.events import Failure, Problem, what_it_gave
from kit.workerdir import HandlerKind

_preview = reprlib.Repr()
_preview.maxstring = 80
_preview.maxother = 80
_preview.maxlist = _preview.maxtuple = _preview.maxdict = 4
_preview.maxlevel = 3


def preview(value, limit: int = 160) -> str:
    text = _preview.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DirectCalls:
    """What the test cells' own calls of `handler(job)` gave, by job.

    The SDK run of a job literal must give what calling the handler directly
    gave in the notebook: the same output, or the same error. A test that sends
    a bad job and asserts the error is an error path working as intended, not a
    failure of the worker.

    Each call is a job, as in the worker: `after_call` runs when one ends (the
    harness clears the SDK's per-job state there, as its worker loop does after
    each job).
    """

    def __init__(self, after_call: Callable[[], None] = lambda: None):
        self.by_job: dict[str, dict] = {}
        self.cell: int | None = None
        self.after_call = after_call

    def expected(self, job) -> dict | None:
        key = _job_key(job)
        return self.by_job.get(key) if key else None

    def forget(self, cell: int | None, returned_errors_only: bool = False) -> None:
        def kept(outcome: dict) -> bool:
            if outcome["cell"] != cell:
                return True
            return returned_errors_only and outcome.get("type") != "returned error"

        self.by_job = {key: outcome for key, outcome in self.by_job.items() if kept(outcome)}

    def _record(self, job, outcome: dict) -> None:
        key = _job_key(job)
        if key and key not in self.by_job:
            self.by_job[key] = {"cell": self.cell, **outcome}

    def _returned(self, job, value) -> None:
        self.after_call()
        try:
            value = copy.deepcopy(value)  # the test may change the result after the call
        except Exception:
            return
        if isinstance(value, dict) and value.get("error"):
            returned = platform.parse_sdk_error(value["error"])  # as job_error reads the SDK's copy of it
            self._record(job, {"kind": "error", "type": returned.type, "message": returned.message})
            return
        self._record(job, {"kind": "output", "value": value})

    def _raised(self, job, error: BaseException) -> None:
        self.after_call()
        if isinstance(error, Exception):  # what the SDK turns into a failed job
            self._record(job, {"kind": "error", "type": type(error).__name__, "message": str(error)})

    def wrap(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler`, recording each call's outcome; of the same kind (sync, async, generator...)."""
        kind = HandlerKind.of(handler)
        recorded: Callable[..., Any]  # of the handler's kind: one variant per branch
        if kind is HandlerKind.ASYNC_GENERATOR:

            async def recorded(job, *args, **kwargs):
                chunks = []
                try:
                    async for chunk in handler(job, *args, **kwargs):
                        chunks.append(chunk)
                        yield chunk
                except Exception as error:
                    self._raised(job, error)
                    raise
                self._returned(job, chunks)

        elif kind is HandlerKind.GENERATOR:

            def recorded(job, *args, **kwargs):
                chunks = []
                try:
                    for chunk in handler(job, *args, **kwargs):
                        chunks.append(chunk)
                        yield chunk
                except Exception as error:
                    self._raised(job, error)
                    raise
                self._returned(job, chunks)

        else:
            return _recording(handler, kind.is_async, self._returned, self._raised)

        return functools.wraps(handler)(recorded)

    def _batch_returned(self, jobs, results) -> None:
        """Each job of a batch gets the element of the result at its position (an `{"error": ...}` fails it alone)."""
        if batching_problem(results, jobs) is None:
            for job, result in zip(jobs, results):
                self._returned(job, result)

    def _batch_raised(self, jobs, error: BaseException) -> None:
        if isinstance(jobs, (list, tuple)):
            for job in jobs:  # an exception fails every job of the batch with it
                self._raised(job, error)

    def wrap_batch(self, batch_handler: Callable[..., Any]) -> Callable[..., Any]:
        """`batch_handler`, recording each job's outcome; sync or async as it is."""
        return _recording(batch_handler, HandlerKind.of(batch_handler).is_async, self._batch_returned, self._batch_raised)


def _recording(
    function: Callable[..., Any], is_async: bool, returned: Callable[[Any, Any], None], raised: Callable[[Any, BaseException], None]
) -> Callable[..., Any]:
    """`function` (a plain or async handler or batch_handler), telling `returned` or `raised` how each call
    on its first argument ended. A plain function that returns an awaitable is left to whoever awaits it."""
    recorded: Callable[..., Any]
    if is_async:

        async def recorded(arg, *args, **kwargs):
            try:
                value = await function(arg, *args, **kwargs)
            except Exception as error:
                raised(arg, error)
                raise
            returned(arg, value)
            return value

    else:

        def recorded(arg, *args, **kwargs):
            try:
                value = function(arg, *args, **kwargs)
            except Exception as error:
                raised(arg, error)
                raise
            if not inspect.isawaitable(value):
                returned(arg, value)
            return value

    return functools.wraps(function)(recorded)


def batching_problem(results, jobs) -> str | None:
    """Why `results` is not one result per job of `jobs` (as batching.py judges a batch), or None."""
    if not isinstance(jobs, (list, tuple)):
        return "not a list of jobs"
    if not isinstance(results, (list, tuple)) or len(results) != len(jobs):
        return "not one result per job"
    return None


def asserts(source: str) -> bool:
    """Whether a test cell checks anything: a returned {"error": ...} is expected only then.

    (A raised exception is expected when the cell passed: something caught it.)
    """
    try:
        tree = compile(source, "<test>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(node, ast.Assert) for node in ast.walk(tree))


def _job_key(job) -> str | None:
    if not isinstance(job, dict):
        return None
    try:
        return json.dumps(job, sort_keys=True)
    except (TypeError, ValueError):
        return None


def as_the_sdk_returns(value):
    """A handler's return value as the SDK's run_job passes it on (`error` and `refresh_worker` taken out)."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in ("error", "refresh_worker")}
        return value or None
    return value


def compare_with_direct(expected: dict | None, body: dict, error: Failure | None) -> tuple[Failure | None, list[Problem], bool]:
    """(error, problems, expected_error) for a job, judged against what its direct call gave.

    Without a direct call (the job literal's call did not run), a job must succeed.
    """
    if expected is None:
        return error, [], False
    where = f"the direct call in cell {expected['cell']}"
    if expected["kind"] == "error":
        said = f"{where} {what_it_gave(expected['type'], expected['message'])}"
        if error is None:
            return Failure("not the expected error", f"{said}, but through the SDK the job succeeded"), [], False
        same_type = expected["type"] == error.type.rsplit(".", 1)[-1]
        if same_type and str(expected["message"]).strip() == str(error.message).strip():
            return error, [], True
        return error, [Problem("fail", f"{said}; through the SDK the job failed with another error")], False
    if error is not None:
        return error, [Problem("fail", f"{where} returned a result: the job fails only through the SDK")], False
    direct = as_the_sdk_returns(expected["value"])
    try:
        same = bool(direct == body.get("output"))
    except Exception:
        return None, [], False
    if same:
        return None, [], False
    return (
        None,
        [
            Problem(
                "warn",
                f"the result differs from what {where} returned ({preview(direct, 80)}); a handler that samples or reads the clock differs on every call",
            )
        ],
        False,
    )
