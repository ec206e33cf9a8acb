"""Way A's files on the pod's network volume: the exported worker and its requirements.

Layout under the volume's mount (`/workspace` on the pod, `/runpod-volume` on the endpoint):

    .kit/workers/<name>/<revision>/   the worker (handler.py ...), one folder per content
    .kit/site/<key>/                  its requirements (pip --target), one folder per set of pins

Which requirements go onto the volume: the endpoint runs the pod's own image, so what the
image brought is there already (torch's CUDA build, the SDK of a kit image); what was
installed in the pod after its container started (`pip install` in a notebook) is not.
Each distribution the worker needs (its requirements and theirs, as installed here) counts
as the image's when its metadata is older than the container's first process; the others
are installed onto the volume, at the versions the pod runs, without dependency resolution
(the pod's environment is the resolution). The same pins reuse the same folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kit import workerdir
from kit.deploy.plan import KIT_FOLDER
from kit.errors import KitEnvironmentError, KitError

KEEP_REVISIONS = 3  # a worker still starting on the previous revision finds its files


@dataclass(frozen=True)
class Pin:
    name: str  # as installed (its metadata's Name)
    version: str
    in_image: bool


def image_started() -> float | None:
    """When this container's first process started (the image's files are older); None off Linux."""
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        stat = Path("/proc/1/stat").read_text()
        ticks = float(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def _metadata_time(dist: importlib.metadata.Distribution) -> float | None:
    # PathDistribution keeps its .dist-info folder in _path (no public accessor): its mtime is the install's.
    where = getattr(dist, "_path", None)
    try:
        return os.stat(where).st_mtime if where is not None else None
    except OSError:
        return None


def _requirement_lines(text: str) -> list[str]:
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def resolve(requirements: str, *, image_time: float | None) -> list[Pin]:
    """The distributions the worker needs, as installed here, each marked as the image's or not."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    queue: list[tuple[Requirement, str]] = []
    for line in _requirement_lines(requirements):
        try:
            queue.append((Requirement(line), "requirements.txt"))
        except InvalidRequirement:
            raise KitError(
                f"requirements.txt: {line!r} is not a requirement kit deploy can install on the volume", "give it as NAME==VERSION"
            ) from None
    pins: dict[str, Pin] = {}
    while queue:
        req, needed_by = queue.pop()
        key = canonicalize_name(req.name)
        if key in pins:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise KitError(
                f"the worker needs {req} ({needed_by}), which is not installed where kit deploy runs",
                f"pip install it here (the pod runs what the worker will: `{sys.executable} -m pip install '{req}'`) and deploy again",
            ) from None
        version = dist.version
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise KitError(
                f"{needed_by} asks for {req} but {dist.metadata['Name']} {version} is installed here", "export the notebook again"
            )
        installed = _metadata_time(dist)
        pins[key] = Pin(dist.metadata["Name"], version, image_time is not None and installed is not None and installed < image_time)
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = [""] + sorted(req.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in extras):
                queue.append((sub, f"{dist.metadata['Name']} {version}"))
    return sorted(pins.values(), key=lambda pin: pin.name.lower())


def site_key(pins: Iterable[Pin]) -> str:
    """One folder per set of pins, per Python and machine (a wheel with compiled code fits only its own)."""
    lines = sorted(f"{p.name.lower()}=={p.version}" for p in pins if not p.in_image)
    lines.append(f"python={sys.implementation.cache_tag} machine={platform.machine()}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def kit_dir(mount_path: str) -> Path:
    return Path(mount_path) / KIT_FOLDER


@dataclass(frozen=True)
class Install:
    site_dir: Path | None  # None: the image has every requirement
    pins: list[Pin]
    installed: bool  # False: the folder was there from an earlier deploy (or nothing to install)
    seconds: float
    size: int  # bytes in the folder


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def largest(site: Path, count: int = 3) -> list[tuple[str, int]]:
    """The biggest top-level entries of an install folder (packages, mostly), to say where the size went."""
    sizes = [(p.name, folder_size(p) if p.is_dir() else p.stat().st_size) for p in site.iterdir() if not p.name.endswith(".dist-info")]
    return sorted(sizes, key=lambda item: -item[1])[:count]


def install_requirements(
    pins: list[Pin], mount_path: str, *, python: str = sys.executable, dry_run: bool = False, say: Callable[[str], None] = print
) -> Install:
    """pip install the pins that are not the image's into .kit/site/<key> on the volume, once per set."""
    missing = [p for p in pins if not p.in_image]
    if not missing:
        return Install(None, pins, False, 0.0, 0)
    site = kit_dir(mount_path) / "site" / site_key(pins)
    if (site / ".complete").is_file() or dry_run:
        return Install(site, pins, False, 0.0, 0)
    site.parent.mkdir(parents=True, exist_ok=True)
    staging = site.parent / f"{site.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    say(f"installing {len(missing)} distributions into {site} (the image has the other {len(pins) - len(missing)})")
    started = time.monotonic()
    command = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input", "--disable-pip-version-check"]
    command += ["--progress-bar", "off", "--target", str(staging), *(f"{p.name}=={p.version}" for p in missing)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        reason = next((line[7:] for line in result.stderr.splitlines() if line.startswith("ERROR: ")), f"pip exited {result.returncode}")
        raise KitEnvironmentError(
            f"installing the worker's requirements onto the volume failed: {reason}", "fix the cause and run kit deploy again"
        )
    (staging / ".complete").write_text("\n".join(f"{p.name}=={p.version}" for p in missing) + "\n")
    try:
        staging.rename(site)
    except OSError:  # another deploy finished the same set first
        shutil.rmtree(staging, ignore_errors=True)
    return Install(site, pins, True, time.monotonic() - started, folder_size(site))


def revision_of(worker: Path) -> str:
    """The worker's content: its files, with the folder's own path (named in the regenerate command) left out."""
    digest = hashlib.sha256()
    own = str(worker).encode()
    for path in sorted(p for p in worker.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(worker).as_posix().encode() + b"\0" + path.read_bytes().replace(own, b"") + b"\0")
    return digest.hexdigest()[:12]


def place_worker(worker: Path, name: str, mount_path: str, *, dry_run: bool = False) -> tuple[Path, str]:
    """Copy the worker onto the volume under its revision (kept if already there); older revisions are pruned."""
    revision = revision_of(worker)
    folder = kit_dir(mount_path) / "workers" / name
    target = folder / revision
    if dry_run or target.is_dir():
        return target, revision
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{revision}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(worker, staging, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(folder, keep=target)
    return target, revision


def _prune(folder: Path, keep: Path) -> None:
    revisions = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / workerdir.HANDLER).is_file()]
    revisions.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in revisions if p != keep][KEEP_REVISIONS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
