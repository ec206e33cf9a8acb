"""The `runpod` nbconvert exporter: a notebook -> a zip of its worker files.

Registered through the `nbconvert.exporters` entry point, so one class serves
`jupyter nbconvert --to runpod NB.ipynb` (writes NB.zip) and JupyterLab's
File → Save and Export Notebook As → Runpod (JupyterLab 4 names the
entry after the entry point; downloads NB.zip). It
calls `kit.export.export.build_worker`, the function behind `kit export`, and only
packs the result.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

from nbconvert.exporters import Exporter
from traitlets import List, Unicode

from kit.errors import KitError
from kit.export.export import Worker, build_worker
from kit.export.files import unsafe_name
from kit.export.notebook import notebook_from_dict

# A fixed timestamp makes the zip of an unchanged notebook byte-for-byte the same.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class RunpodExporter(Exporter):
    """Export a notebook's tagged cells as a RunPod worker (a zip of handler.py and friends)."""

    export_from_notebook = "RunPod worker"
    output_mimetype = "application/zip"
    include = List(
        Unicode(),
        help="globs of more files to copy from the notebook's folder, as `kit export --include`: "
        "jupyter nbconvert --to runpod --RunpodExporter.include='prompts/*.txt' NB.ipynb",
    ).tag(config=True)

    def _file_extension_default(self):
        return ".zip"

    def from_notebook_node(self, nb, resources=None, **kw):
        nb_copy, resources = super().from_notebook_node(nb, resources, **kw)
        metadata = resources.get("metadata", {})
        stem = metadata.get("name") or "notebook"
        directory = metadata.get("path") or ""
        name = os.path.join(directory, f"{stem}.ipynb") if directory else f"{stem}.ipynb"
        notebook = notebook_from_dict(nb_copy, name=name, path=Path(directory or ".").resolve() / f"{stem}.ipynb")
        try:
            worker = build_worker(notebook, include=self.include)
        except KitError as error:
            _fail(error)
        for warning in worker.warnings:
            self.log.warning("%s", warning)
        return zip_worker(worker), resources


def zip_worker(worker: Worker) -> bytes:
    """The worker's files (and the local modules and data files it copies) as zip bytes, at the archive's top level.

    The copy rule (kit.export.files) already leaves out names a Windows unzip tool would read
    differently (a backslash is a folder separator there: `..\\..\\evil.py` would climb out);
    checked again here, as nothing else stands between such a name and the archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(worker.files):
            _add(archive, name, worker.files[name].encode("utf-8"))
        for name, source in sorted(worker.copied_files.items()):
            _add(archive, name, source.read_bytes())
    return buffer.getvalue()


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    why = unsafe_name(name)
    if why or name.startswith("/") or ".." in name.split("/"):
        raise KitError(f"refusing to zip {name!r}: {why or 'it would unpack outside the folder'}", "rename the file")
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def _fail(error: KitError):
    """Report a user mistake as the kit does.

    Under `jupyter nbconvert` the message is printed as one line and the
    command exits 2, like `kit export`; nbconvert would otherwise print a
    traceback. Anywhere else (the Jupyter server's export menu, library
    callers) the KitError propagates: the server answers with its message.
    """
    from nbconvert.nbconvertapp import NbConvertApp

    if NbConvertApp.initialized():
        import sys

        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    raise error
