"""`kit new`: starter notebooks that export and pass `kit test` as written, and never replace a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from conftest import run_kit

from kit.errors import KitError
from kit.new import KINDS, StarterKind, new_notebook_file

# --- the notebook written ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_kit_new_writes_a_tagged_notebook_with_setup_handler_test_and_panel_cells(tmp_path, kind):
    path = new_notebook_file("my_worker", kind=kind, folder=tmp_path)
    assert path == tmp_path / "my_worker.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    tags = [tuple(cell.metadata.get("tags", ())) for cell in nb.cells if cell.cell_type == "code"]
    assert tags == [(), ("setup",), ("handler",), ("test",)]
    panel = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "kit.panel()" in panel.source
    intro = nb.cells[0].source
    for convention in ("**setup**", "**handler**", "**test**", "Untagged", "kit test my_worker.ipynb"):
        assert convention in intro
    handler = next(cell.source for cell in nb.cells if "handler" in cell.metadata.get("tags", ()))
    expected = {"plain": "\ndef handler(job)", "async": "async def handler(job)", "generator": "yield", "batch": "def batch_handler(jobs)"}
    assert expected[kind] in handler


@pytest.mark.process
def test_kit_new_cli_writes_the_notebook_in_the_current_folder(tmp_path):
    result = run_kit("new", "hello-worker", "--kind", "async", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote hello-worker.ipynb" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["hello-worker.ipynb"]


@pytest.mark.process
def test_kit_new_never_replaces_a_file(tmp_path):
    existing = tmp_path / "mine.ipynb"
    existing.write_text("my work")
    before = existing.stat()
    result = run_kit("new", "mine", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: mine.ipynb already exists: kit new never replaces a file (choose another name, or delete it first)"]
    assert existing.read_text() == "my work" and existing.stat().st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.ipynb"]  # no temporary file left


def test_kit_new_refuses_to_write_through_a_dangling_symlink(tmp_path):
    (tmp_path / "link.ipynb").symlink_to(tmp_path / "elsewhere.ipynb")
    with pytest.raises(KitError, match="already exists"):
        new_notebook_file("link", folder=tmp_path)
    assert not (tmp_path / "elsewhere.ipynb").exists()


BAD_NAMES = ["../evil", "sub/dir", "a\\b", "/tmp/x", "", "1worker", "my worker", "a.b", "-rf", "x" * 65, "ünïcode", "name\n", ".ipynb"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_kit_new_bad_names_are_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(KitError) as error:
        new_notebook_file(name, folder=tmp_path)
    assert "\n" not in str(error.value).replace(repr(name), "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
def test_kit_new_bad_names_get_one_line_and_exit_2(tmp_path):
    for name in ["../evil", "my worker"]:
        result = run_kit("new", name, cwd=tmp_path)
        assert result.returncode == 2, result.stdout
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: "), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_kit_new_accepts_the_ipynb_suffix(tmp_path):
    assert new_notebook_file("w.ipynb", folder=tmp_path).name == "w.ipynb"


@pytest.mark.process
def test_kit_new_bad_kind_and_missing_model_are_one_line_errors(tmp_path):
    result = run_kit("new", "w", "--kind", "stream", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = run_kit("new", "w", "--model", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert result.returncode == 2 and "no such folder" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    result = run_kit("new", "w", "--model", "empty", cwd=tmp_path)
    assert result.returncode == 2 and "config.json" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# --- they export and pass kit test as written ---------------------------------


@pytest.mark.process
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_exports_and_passes_kit_test_as_written(tmp_path, kind):
    assert run_kit("new", "starter", "--kind", kind, cwd=tmp_path).returncode == 0
    result = run_kit("test", "starter.ipynb", "-o", "out", "--json", "report.json", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True
    manifest = json.loads((tmp_path / "out" / "kit.json").read_text())
    assert manifest["handler_kind"] == StarterKind(kind).handler_kind.value
    if kind == "batch":
        assert manifest["batch_handler_kind"] == "function"
    else:  # the test cell's first job is the job kit test sends through the SDK
        assert json.loads((tmp_path / "out" / "test_input.json").read_text())["input"]["text"]


def tiny_model(folder: Path) -> Path:
    """A BERT of a few thousand weights from a config and a vocabulary written here: nothing downloaded."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "again", "hi"]) + "\n")
    transformers.BertTokenizer(str(vocab)).save_pretrained(folder)
    config = transformers.BertConfig(
        vocab_size=9, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.process
@pytest.mark.parametrize("kind", ["plain", "batch"])
def test_model_starter_loads_the_model_once_and_passes_kit_test(tmp_path, kind):
    model = tiny_model(tmp_path / "my model's folder")  # a space and a quote: the path is written as a literal
    assert run_kit("new", "embed", "--kind", kind, "--model", str(model), cwd=tmp_path).returncode == 0
    setup = next(c.source for c in nbformat.read(tmp_path / "embed.ipynb", as_version=4).cells if "setup" in c.metadata.get("tags", ()))
    assert "AutoModel.from_pretrained(MODEL_DIR)" in setup and repr(str(model)) in setup
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = run_kit("test", "embed.ipynb", "-o", "out", cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    requirements = (tmp_path / "out" / "requirements.txt").read_text()
    assert "transformers==" in requirements and "torch==" in requirements
    # MODEL_DIR on the endpoint points the worker elsewhere: a missing folder fails its start.
    env_elsewhere = {**env, "MODEL_DIR": os.fspath(tmp_path / "not-there")}
    failed = run_kit("test", "out", cwd=tmp_path, env=env_elsewhere, timeout=600)
    assert failed.returncode != 0
