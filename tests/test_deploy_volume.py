"""Way A's files on the network volume (kit/deploy/volume.py) and the pure rules of kit/deploy/plan.py."""

from __future__ import annotations

import importlib.metadata
import time

import pytest
from conftest import HELLO_CELLS, build_notebook

from kit.deploy import plan, volume
from kit.errors import KitError
from kit.export.export import export_notebook

RUNPOD = importlib.metadata.version("runpod")


def test_resolve_follows_the_installed_dependencies_and_marks_what_the_image_has():
    later = volume.resolve(f"runpod=={RUNPOD}  # the worker loop\n", image_time=time.time() + 60)
    names = {p.name.lower() for p in later}
    assert "runpod" in names and "requests" in names and "aiohttp" in names  # the SDK's own needs, as installed
    assert all(p.in_image for p in later)
    before = volume.resolve(f"runpod=={RUNPOD}\n", image_time=0.0)
    assert not any(p.in_image for p in before)
    assert volume.site_key(later) != volume.site_key(before)


def test_resolve_refuses_a_requirement_that_is_not_installed_here():
    with pytest.raises(KitError, match="not installed where kit deploy runs.*pip install"):
        volume.resolve("surely-not-a-distribution-kit==1.0\n", image_time=None)
    with pytest.raises(KitError, match="export the notebook again"):
        volume.resolve("runpod==0.0.1\n", image_time=None)


@pytest.mark.process
def test_install_puts_the_missing_pins_on_the_volume_once(tmp_path):
    pins = [volume.Pin("six", importlib.metadata.version("six"), False)]
    first = volume.install_requirements(pins, str(tmp_path), say=lambda _: None)
    assert first.installed and first.site_dir is not None and (first.site_dir / "six.py").is_file()
    assert first.site_dir.parent == tmp_path / ".kit" / "site" and first.size > 0
    again = volume.install_requirements(pins, str(tmp_path), say=lambda _: None)
    assert not again.installed and again.site_dir == first.site_dir
    nothing = volume.install_requirements([volume.Pin("six", "1", True)], str(tmp_path))
    assert nothing.site_dir is None


@pytest.mark.process
def test_install_failure_is_one_line_and_leaves_no_partial_folder(tmp_path):
    with pytest.raises(KitError, match="onto the volume failed"):
        volume.install_requirements([volume.Pin("surely-not-a-distribution-kit", "1.0", False)], str(tmp_path), say=lambda _: None)
    assert list((tmp_path / ".kit" / "site").iterdir()) == []


def test_the_worker_revision_is_its_content_and_old_revisions_are_pruned(tmp_path):
    notebook = build_notebook(tmp_path / "w.ipynb", HELLO_CELLS)
    a = export_notebook(notebook, tmp_path / "a").out_dir
    b = export_notebook(notebook, tmp_path / "b").out_dir
    assert volume.revision_of(a) == volume.revision_of(b)  # the folder's own path is not content
    mount = tmp_path / "mount"
    placed, revision = volume.place_worker(a, "w", str(mount))
    assert placed == mount / ".kit" / "workers" / "w" / revision and (placed / "handler.py").is_file()
    for version in range(5):
        build_notebook(notebook, [*HELLO_CELLS[:2], ("handler", f"def handler(job):\n    return {version}")])
        volume.place_worker(export_notebook(notebook, tmp_path / f"v{version}").out_dir, "w", str(mount))
    assert len(list((mount / ".kit" / "workers" / "w").iterdir())) == volume.KEEP_REVISIONS


def test_plan_without_changes_writes_nothing(tmp_path):
    worker = export_notebook(build_notebook(tmp_path / "w.ipynb", HELLO_CELLS), tmp_path / "w").out_dir
    placed, _ = volume.place_worker(worker, "w", str(tmp_path / "mount"), dry_run=True)
    assert not placed.exists() and not (tmp_path / "mount").exists()


# --- plan.py ------------------------------------------------------------------


def test_paths_on_the_pods_volume_as_endpoint_workers_see_them():
    assert plan.on_endpoint("/workspace/.cache/hf", "/workspace") == "/runpod-volume/.cache/hf"
    assert plan.on_endpoint("/workspace", "/workspace/") == "/runpod-volume"
    assert plan.on_endpoint("/workspace2/x", "/workspace") is None
    env, notes = plan.cache_env({"HF_HOME": "/root/.cache/huggingface", "TORCH_HOME": "/workspace/torch"}, "/workspace")
    assert env == {"TORCH_HOME": "/runpod-volume/torch", "HF_HOME": "/runpod-volume/.cache/huggingface"}
    assert len(notes) == 1 and "HF_HOME=/root/.cache/huggingface is not on the network volume" in notes[0]


def test_a_pod_answer_without_volume_or_with_junk_is_one_line():
    with pytest.raises(KitError, match="no network volume.*--image"):
        plan.pod_from_answer("p", {"id": "p", "image": "x"})
    with pytest.raises(KitError, match="not a pod"):
        plan.pod_from_answer("p", ["junk"])
    pod = plan.pod_from_answer("p", {"image": "x", "networkVolume": {"id": "v", "dataCenterId": "US-TX-3"}, "gpu": {"count": "2"}})
    assert pod.mount_path == "/workspace" and pod.gpu_count is None and pod.data_center == "US-TX-3"


def test_default_names_and_an_update_sends_only_what_flags_set():
    assert plan.default_name("My Notebook (v2)") == "My-Notebook-v2"
    assert plan.default_name("///") == "worker"
    pod = plan.Pod("p", "img", "vol", "EU-RO-1", "/workspace", "NVIDIA A40", 2, None, {})
    create = plan.endpoint_body(plan.Settings(name="n"), "t", pod=pod, create=True)
    assert create["gpuTypeIds"] == ["NVIDIA A40"] and create["gpuCount"] == 2 and create["name"] == "n"
    update = plan.endpoint_body(plan.Settings(name="n", workers_max=2), "t", pod=pod, create=False)
    assert update == {"templateId": "t", "networkVolumeId": "vol", "dataCenterIds": ["EU-RO-1"], "workersMax": 2}
