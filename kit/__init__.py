"""The kit: write a RunPod serverless worker in a notebook, export it, prove it.

Public entry points (each front end — the `kit` CLI, the nbconvert exporter,
the notebook panel — calls these):

- ``export_notebook(path, out_dir)``: notebook -> worker directory.
- ``infer_requirements(notebook)``: the worker's pinned requirements.
- ``panel()``: the notebook panel (ipywidgets).

Imports are lazy so that ``import kit`` stays cheap in a kernel and on the CLI.
"""

__version__ = "0.1.0"

__all__ = ["export_notebook", "build_worker", "infer_requirements", "panel", "KitError"]


def __getattr__(name):
    if name in ("export_notebook", "build_worker"):
        from kit.export import export

        return getattr(export, name)
    if name == "infer_requirements":
        from kit.export.deps import infer_requirements

        return infer_requirements
    if name == "KitError":
        from kit.errors import KitError

        return KitError
    if name == "panel":
        from kit.ui.panel import panel

        return panel
    raise AttributeError(f"module 'kit' has no attribute {name!r}")
