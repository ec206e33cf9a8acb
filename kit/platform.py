"""RunPod's platform facts the kit relies on: one home for each (RunPod's docs, docs.runpod.io, state them).

- Payload limits and the one check of a result against them (`check_payload`),
  used by `kit test`'s harness, the notebook panel and the local endpoint.
- The SDK's error contract: what a worker posts when a handler raises, parsed
  once (`parse_sdk_error`).
- The environment a worker process is started with, offline and local
  (`worker_env`), for `kit test`'s harness and `kit serve`'s worker pool.
- The name of the switch between the fast and the stock worker loop
  (`LOOP_ENV`), read from the worker_loop.py template that defines it.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Payload limits, in decimal megabytes as RunPod's docs state them ("/run 10 MB, /runsync 20 MB").
# The SDK enforces none of them: a larger result fails at job-done and is lost.
MB = 1_000_000
RUN_LIMIT = 10 * MB
RUNSYNC_LIMIT = 20 * MB

TEMPLATES = Path(__file__).resolve().parent / "worker"  # the files copied into every worker directory
WORKER_LOOP_TEMPLATE = TEMPLATES / "worker_loop.py"


def format_size(size: int) -> str:
    """Bytes in the unit RunPod's limits use (decimal kB and MB)."""
    if size >= MB:
        return f"{size / MB:.1f} MB"
    if size >= 1000:
        return f"{size / 1000:.1f} kB"
    return f"{size} B"


def _limit(size: int) -> str:
    return f"{size // MB} MB"


@dataclass
class PayloadCheck:
    """A result measured as the JSON the worker posts, against RunPod's limits."""

    size: int | None  # bytes; None when the value is not JSON
    level: str  # "ok", "warn" (over /run's limit, fits /runsync) or "fail"
    message: str
    hint: str | None = None


HINT_JSON = "return only dicts, lists, strings, numbers, booleans and None: RunPod carries results as JSON"
HINT_SIZE = "upload large results (a bucket, the network volume) and return their URL or path instead"


def check_payload(output: object) -> PayloadCheck:
    """How a job's result fares on RunPod, measured as the body the worker posts (`{"output": ...}`)."""
    try:
        text = json.dumps({"output": output}, ensure_ascii=False)  # as the SDK's rp_http serialises it
    except (TypeError, ValueError, RecursionError) as error:
        path, bad = first_non_json(output, "output")
        if bad is None:
            return PayloadCheck(None, "fail", f"the result is not JSON: {error}", HINT_JSON)
        kind = f"{type(bad).__module__}.{type(bad).__qualname__}".removeprefix("builtins.")
        return PayloadCheck(None, "fail", f"the result is not JSON: {path} is a {kind}", json_hint(bad))
    size = len(text.encode("utf-8"))
    limits = f"/run {_limit(RUN_LIMIT)}, /runsync {_limit(RUNSYNC_LIMIT)}"
    if size > RUNSYNC_LIMIT:
        return PayloadCheck(
            size,
            "fail",
            f"the result is {format_size(size)}, over RunPod's {_limit(RUNSYNC_LIMIT)} limit (/runsync): "
            "the platform drops it and the client gets the job without output",
            HINT_SIZE,
        )
    if size > RUN_LIMIT:
        return PayloadCheck(
            size,
            "warn",
            f"the result is {format_size(size)}, over RunPod's {_limit(RUN_LIMIT)} limit for /run: clients must call /runsync",
            HINT_SIZE,
        )
    return PayloadCheck(size, "ok", f"{format_size(size)} as JSON: within RunPod's limits ({limits})")


def json_hint(value: object) -> str:
    module = type(value).__module__.split(".")[0]
    if module in ("numpy", "torch", "tensorflow", "jax", "jaxlib", "cupy"):
        return "convert it with .tolist() (a tensor: .cpu().tolist(); a scalar: .item())"
    if isinstance(value, (bytes, bytearray)):
        return "encode bytes as text, e.g. base64.b64encode(data).decode()"
    if isinstance(value, (set, frozenset)):
        return "return a list instead: sorted(...) or list(...)"
    if hasattr(value, "isoformat"):
        return "return value.isoformat()"
    return HINT_JSON


def first_non_json(value: object, path: str) -> tuple[str, object]:
    """The first value inside `value` that json.dumps cannot write, with its path (iterative: any depth)."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if item is None or isinstance(item, (str, int, float, bool)):
            continue
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return f"a key of {where}", key
            stack.extend(reversed([(v, f"{where}[{k!r}]") for k, v in item.items()]))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(v, f"{where}[{i}]") for i, v in enumerate(item)]))
        else:
            return where, item
    return path, None


def is_finite(value: object) -> bool:
    """False when `value` holds NaN or Infinity, which json.dumps writes but most clients reject."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True


# --------------------------------------------------------------------------- the SDK's error contract


@dataclass
class SdkError:
    """A handler's exception as the SDK reports it in a job's `error`."""

    type: str  # e.g. "ValueError"
    message: str
    traceback: str | None = None


def parse_sdk_error(error: object) -> SdkError:
    """Read a job's `error` as the SDK wrote it.

    An exception in a plain or async handler is a JSON string with
    error_type/error_message/error_traceback (rp_job.run_job); one in a
    generator is "handler: <message>\\ntraceback: <text>" (run_job_generator);
    anything else is what the handler returned as `{"error": ...}`.
    """
    if isinstance(error, str):
        try:
            info = json.loads(error)
        except (ValueError, RecursionError):
            info = None
        if isinstance(info, dict) and "error_type" in info:
            kind = re.sub(r"^<class '(?:builtins\.)?(.+)'>$", r"\1", str(info.get("error_type", "Exception")))
            trace = info.get("error_traceback")
            return SdkError(kind.rsplit(".", 1)[-1], str(info.get("error_message", "")), trace if isinstance(trace, str) else None)
        if error.startswith("handler: ") and "\ntraceback: " in error:
            message, _, trace = error[len("handler: ") :].partition("\ntraceback: ")
            lines = trace.strip().splitlines()
            kind = lines[-1].split(":", 1)[0] if lines else "Exception"
            return SdkError(kind, message.strip(), trace)
        return SdkError("returned error", error)
    return SdkError("returned error", _short_repr(error))


PRESTART_FAILED = "prestart_failed"  # the `event` of runpod 2.0's prestart-failure payload


def prestart_failure(error: object) -> str | None:
    """ "Type: message" when a job-done error is runpod 2.0's prestart failure (the worker's setup raised), else None.

    The SDK sends it as `{"error": "<json: event, error_type, error_message, ...>"}`
    (rp_scale.JobScaler._fail_job); a handler's exception has no `event`.
    """
    if not isinstance(error, str):
        return None
    try:
        info = json.loads(error)
    except (ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or info.get("event") != PRESTART_FAILED:
        return None
    parsed = parse_sdk_error(error)
    return f"{parsed.type}: {parsed.message}"


def _short_repr(value: object, limit: int = 300) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_summary(error: object) -> str:
    """One line for a job's error: the exception's type and message, or what the handler returned."""
    parsed = parse_sdk_error(error)
    if parsed.type == "returned error":
        first = parsed.message.splitlines()[0] if parsed.message else "(empty)"
        return first
    return f"{parsed.type}: {parsed.message}"


# --------------------------------------------------------------------------- the worker's environment

# The SDK reads its RUNPOD_* variables at import. A local worker never dials out: no fitness
# checks (they dial 8.8.8.8), no GPU check, and no queue unless the caller gives one.
OFFLINE_ENV = {
    "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
    "RUNPOD_SKIP_GPU_CHECK": "true",
    "PYTHONUNBUFFERED": "1",
}
# Variables that would point a worker at a real queue, or change the SDK's mode, if inherited.
QUEUE_ENV = (
    "RUNPOD_WEBHOOK_GET_JOB",
    "RUNPOD_WEBHOOK_POST_OUTPUT",
    "RUNPOD_WEBHOOK_POST_STREAM",
    "RUNPOD_WEBHOOK_PING",
    "RUNPOD_AI_API_KEY",
    "RUNPOD_REALTIME_PORT",
    "RUNPOD_ENDPOINT_ID",
    "RUNPOD_POD_ID",
    "RUNPOD_DEBUG_LEVEL",
)


def worker_env(overrides: dict[str, str] | None = None, *, log_level: str = "INFO", base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a local worker process: this one's, minus any real queue, plus `overrides`."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in QUEUE_ENV}
    env.update(OFFLINE_ENV)
    env["RUNPOD_LOG_LEVEL"] = log_level
    env.update(overrides or {})
    return env


@cache
def template_constant(name: str, template: Path = WORKER_LOOP_TEMPLATE) -> str:
    """A string constant of a worker template, read without importing it (it imports runpod)."""
    tree = ast.parse(template.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, str):
                return value
    raise LookupError(f"{template.name} defines no {name}")


# The fast/stock switch the exported worker_loop.py reads; its home is that file.
LOOP_ENV = template_constant("LOOP_ENV")


# --------------------------------------------------------------------------- RunPod's queue policy
# What RunPod's managed queue does with a job, in seconds (RunPod states milliseconds), as the
# local endpoint (kit.serve.queue, kit.serve.routes, kit.serve.emulator) plays it. Each line says
# what RunPod's serverless docs (docs.runpod.io: endpoints, send requests, job operations) state.

# policy.executionTimeout: default 600000 ms, allowed 5 s to 7 days; the job then ends TIMED_OUT.
EXECUTION_TIMEOUT = 600.0
EXECUTION_TIMEOUT_RANGE = (5.0, 7 * 24 * 3600.0)
# policy.ttl: default 24 h, "a hard limit" from submission whatever the job's state (then /status
# answers 404). RunPod's docs state no range: the kit allows 10 s to 7 days, executionTimeout's ceiling.
TTL = 24 * 3600.0
TTL_RANGE = (10.0, 7 * 24 * 3600.0)
# "Results kept 30 min after /run, 1 min after /runsync."
RETENTION_RUN = 30 * 60.0
RETENTION_RUNSYNC = 60.0
# /runsync and /status-sync: `?wait=ms` must lie in 1000-300000 ("/runsync?wait=ms: 1000–300000,
# else 400"). Without it /runsync answers with the job's current status after RUNSYNC_WAIT: RunPod's
# docs state no default; 90 s is the kit's choice (the runpod SDK's own HTTP timeout for /runsync).
RUNSYNC_WAIT = 90.0
RUNSYNC_WAIT_RANGE_MS = (1000, 300000)
# Webhooks: "on a final status RunPod POSTs the /status body ... with 2 retries 10 s apart".
WEBHOOK_RETRIES = 2
WEBHOOK_RETRY_DELAY = 10.0
