"""camcli: class activation maps for image classifiers, from the command line.

The small public Python API (imported lazily so that ``camcli --help`` stays quick)::

    from camcli import load_model, explain
    loaded = load_model("resnet18", weights="none")
    result = explain(loaded, batch, method="gradcam", targets=["top1"])

    from camcli import explain_images  # paths, PIL images or arrays, preprocessed for the model
    result = explain_images("resnet18", ["cat.jpg"], method="gradcam")
"""

from __future__ import annotations

from camcli.startup import enable_huge_pages

# Before torch is imported, by any way in (the commands, the Python API, a Ray worker that
# unpickles camcli's objects): PyTorch reads the setting at its first CPU allocation. This is
# the one thing importing camcli does (camcli.startup).
enable_huge_pages()

__version__ = "0.1.0"

__all__ = ["__version__", "explain", "explain_images", "load_model"]


def __getattr__(name: str):
    if name == "load_model":
        from camcli.models import load_model

        return load_model
    if name == "explain":
        from camcli.explain import explain

        return explain
    if name == "explain_images":
        from camcli.api import explain_images

        return explain_images
    raise AttributeError(f"module 'camcli' has no attribute {name!r}")
