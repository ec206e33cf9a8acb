"""`kit`: the command line front end.

Thin on purpose: each command parses its arguments and calls one library
function. Heavy modules (nbconvert, runpod, torch) are imported only by the
command that needs them, so `kit export` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kit.errors import KitError


def _cmd_export(args) -> int:
    from kit.export.export import export_notebook

    result = export_notebook(
        args.notebook,
        args.output,
        extra=args.extra,
        exclude=args.exclude,
        include=args.include,
        include_secrets=args.include_secrets,
        repo=args.repo,
        category=args.category,
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"exported {result.notebook} -> {result.out_dir}/")
    for name in result.files:
        why = result.copied.get(name)
        print(f"  {name}" + (f"  (copied: {why})" if why else ""))
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _cmd_deps(args) -> int:
    from kit.export.deps import format_requirements_report, infer_requirements
    from kit.export.notebook import read_notebook

    notebook = read_notebook(args.notebook)
    reqs = infer_requirements(notebook, extra=args.extra, exclude=args.exclude, include_secrets=args.include_secrets)
    if args.json:
        import json

        print(json.dumps(reqs.to_json(), indent=2))
    else:
        print(format_requirements_report(reqs), end="")
    return 0


def _cmd_test(args) -> int:
    from kit.test.run import run_tests

    return run_tests(args.target, out_dir=args.output, json_path=args.json, timeout=args.timeout)


def _cmd_serve(args) -> int:
    from kit.serve.serve import serve

    return serve(
        args.target,
        host=args.host,
        port=args.port,
        workers=args.workers,
        api_key=args.api_key,
        execution_timeout=args.execution_timeout,
        watch=args.watch,
    )


def _cmd_bench(args) -> int:
    from kit.serve.bench import bench

    return bench(
        args.target,
        jobs=args.jobs,
        concurrency=args.concurrency,
        job_input=args.input,
        workers=args.workers,
        json_out=args.json,
        loop=args.loop,
        openai=args.openai,
        job_timeout=args.job_timeout,
    )


def _cmd_deploy(args) -> int:
    from kit.deploy.deploy import deploy
    from kit.deploy.plan import Settings, check_name, default_name, parse_env

    stem = Path(args.target).resolve().stem if Path(args.target).is_file() else Path(args.target).resolve().name
    settings = Settings(
        name=check_name(args.name) if args.name is not None else default_name(stem),
        image=args.image,
        registry_auth=args.registry_auth,
        gpus=tuple(args.gpu),
        gpu_count=args.gpu_count,
        cpus=tuple(args.cpu),
        workers_min=args.workers_min,
        workers_max=args.workers_max,
        idle_timeout=args.idle_timeout,
        execution_timeout=args.execution_timeout,
        flashboot=args.flashboot,
        env=parse_env(args.env),
        container_disk=args.container_disk,
        min_cuda=args.min_cuda,
    )
    if settings.gpus and settings.cpus:
        raise KitError("--gpu and --cpu both given", "an endpoint runs on GPUs or on CPUs: give one of them")
    if settings.workers_min is not None and settings.workers_max is not None and settings.workers_min > settings.workers_max:
        raise KitError(f"--workers-min {settings.workers_min} is above --workers-max {settings.workers_max}", "lower --workers-min")
    if settings.registry_auth and not settings.image:
        raise KitError("--registry-auth is for an image in a private registry", "give --image REF with it")
    return deploy(args.target, settings, plan_only=args.plan, as_json=args.json)


def _cmd_new(args) -> int:
    from kit.new import new_notebook_file

    path = new_notebook_file(args.name, kind=args.kind, model=args.model)
    print(f"wrote {path.name}: open it in JupyterLab, Run All, then `kit test {path.name}`")
    return 0


def _add_requirement_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="REQ",
        help="an extra requirement line to add (repeatable), e.g. --extra 'hf_transfer>=0.1'",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NAME",
        help="a distribution or module the base image already provides (repeatable), e.g. --exclude torch",
    )
    parser.add_argument(
        "--include-secrets",
        action="store_true",
        help="also copy secret-looking files (.env, *.pem, *.key, credentials...) in local packages and data folders, left out by default",
    )


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line, `error: ...`, exit 2, like every other user mistake."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} — see {self.prog} --help\n")


def _count(text: str) -> int:
    """A whole number of at least 1 (--workers, --jobs, --concurrency)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: give 1-65535 (0 picks a free one)")
    return value


def _natural(text: str) -> int:
    """A whole number of at least 0 (--workers-min, --workers-max)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kit",
        description="Write a RunPod serverless worker in a notebook; export, test and serve it locally.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from kit.new import KINDS

    p = sub.add_parser("new", help="write NAME.ipynb here: a tagged starter notebook that exports and passes kit test")
    p.add_argument("name", help="the notebook's name (letters, digits, '_' or '-'); never replaces a file")
    p.add_argument("--kind", choices=KINDS, default="plain", help="the handler: plain (default), async, generator or batch")
    p.add_argument("--model", default=None, metavar="PATH", help="the setup cell loads a transformers model from this folder")
    p.set_defaults(func=_cmd_new)

    p = sub.add_parser("export", help="notebook -> worker directory (handler.py, requirements.txt, test_input.json, tests.py)")
    p.add_argument("notebook", help="the .ipynb file")
    p.add_argument(
        "-o", "--output", default=None, metavar="DIR", help="worker directory (default: build/<notebook stem> in the notebook's folder)"
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="also copy the files this glob names, relative to the notebook's folder (repeatable), e.g. --include 'prompts/*.txt'",
    )
    _add_requirement_options(p)
    p.add_argument(
        "--repo",
        action="store_true",
        help="also write a repository RunPod builds by itself (GitHub integration, the Hub): "
        "Dockerfile, .dockerignore, README.md, .runpod/hub.json and .runpod/tests.json",
    )
    p.add_argument(
        "--category",
        choices=("audio", "embedding", "language", "video", "image"),
        default=None,
        help="the Hub category of --repo's hub.json (default: guessed from the code, and said so)",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("deps", help="print the worker's inferred requirements and why, writing nothing")
    p.add_argument("notebook", help="the .ipynb file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_requirement_options(p)
    p.set_defaults(func=_cmd_deps)

    p = sub.add_parser("test", help="export, then prove the worker in a fresh interpreter through the real SDK")
    p.add_argument("target", help="a notebook or an exported worker directory")
    p.add_argument("-o", "--output", default=None, metavar="DIR", help="export here instead of a temporary directory")
    p.add_argument("--json", default=None, metavar="FILE", help="also write a machine-readable report ('-' for stdout)")
    p.add_argument(
        "--timeout", type=_seconds, default=None, metavar="SECONDS", help="stop the worker process after this long (default 1800)"
    )
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("serve", help="a local RunPod endpoint running the exported worker through the real SDK loop")
    p.add_argument("target", help="a notebook or an exported worker directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument("--workers", type=_count, default=1, help="worker processes (default 1)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' from clients")
    p.add_argument(
        "--execution-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="end a job TIMED_OUT after this long unless its policy.executionTimeout says otherwise (default 600, RunPod's)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="re-export on every save of the notebook: handler-only changes reload warm (setup kept), others restart",
    )
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("bench", help="serve the worker and measure cold start, throughput and latency")
    p.add_argument("target", help="a notebook or an exported worker directory")
    p.add_argument("--jobs", type=_count, default=100, help="jobs to submit (default 100)")
    p.add_argument("--concurrency", type=_count, default=4, help="jobs kept in flight (default 4)")
    p.add_argument("--input", default=None, metavar="JSON", help="job input (default: the notebook's test job)")
    p.add_argument("--workers", type=_count, default=1, help="worker processes (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument(
        "--job-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="a job not finished this long after it was sent is cancelled and counted lost (default 300)",
    )
    p.add_argument(
        "--loop",
        choices=("fast", "stock", "both"),
        default="fast",
        help="worker loop: the exported fast loop (default), the SDK's stock loop, or both side by side",
    )
    p.add_argument(
        "--openai",
        action="store_true",
        help="send the load through /openai/v1/... (the request body: --input, or the notebook's openai_route test job); "
        "reports tokens/s and, for streaming requests, time to the first chunk",
    )
    p.set_defaults(func=_cmd_bench)

    _add_deploy_parser(sub)
    return parser


def _add_deploy_parser(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="create or update a RunPod serverless endpoint: from this pod's network volume (no build), or --image REF",
        description="Way A (in a pod, RUNPOD_POD_ID set): the worker and its requirements go onto the pod's network volume and "
        "the endpoint runs them with the pod's image. Way B (--image REF): an image you built and pushed. "
        "A second run with the same --name updates the template and endpoint it made. "
        "Key: RUNPOD_API_KEY, else ~/.runpod/config.toml (`runpod config`).",
    )
    p.add_argument("target", help="a notebook or an exported worker directory")
    p.add_argument("--name", default=None, help="the endpoint's and template's name (default: the notebook's stem)")
    p.add_argument("--image", default=None, metavar="REF", help="way B: an image you pushed (the kit's Dockerfile with WORKER=...)")
    p.add_argument("--registry-auth", default=None, metavar="ID", help="containerRegistryAuthId, for --image in a private registry")
    p.add_argument("--gpu", action="append", default=[], metavar="ID", help="a GPU type id (repeatable; default: the pod's)")
    p.add_argument("--gpu-count", type=_count, default=None, metavar="N", help="GPUs per worker (default: the pod's)")
    p.add_argument("--cpu", action="append", default=[], metavar="FLAVOR", help="a CPU endpoint of this flavor, e.g. cpu3c (repeatable)")
    p.add_argument("--workers-min", type=_natural, default=None, metavar="N", help="workers kept warm (RunPod's default 0)")
    p.add_argument("--workers-max", type=_natural, default=None, metavar="N", help="most workers at once")
    p.add_argument("--idle-timeout", type=_count, default=None, metavar="S", help="seconds a worker waits for a job before it stops")
    p.add_argument("--execution-timeout", type=_seconds, default=None, metavar="S", help="longest a job may run, in seconds")
    p.add_argument("--flashboot", action=argparse.BooleanOptionalAction, default=None, help="RunPod's FlashBoot (faster cold starts)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="an env var for the workers (repeatable)")
    p.add_argument("--container-disk", type=_count, default=None, metavar="GB", help="the workers' container disk (default 50)")
    p.add_argument("--min-cuda", default=None, metavar="VERSION", help="the oldest CUDA version a worker's machine may have, e.g. 12.4")
    p.add_argument("--plan", action="store_true", help="print the requests it would send (key masked) and change nothing")
    p.add_argument("--json", action="store_true", help='print {"endpoint_id", "template_id", "created", "url"} on stdout')
    p.set_defaults(func=_cmd_deploy)


def _version() -> str:
    from kit import __version__

    return f"kit {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KitError as error:  # a KitEnvironmentError exits 3, a mistake in the notebook or input 2
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output went away (`kit ... | head`): stop quietly,
        # and keep the interpreter's final flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
