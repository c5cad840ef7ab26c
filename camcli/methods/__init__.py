"""The CAM methods. This registry is torch-free so that listing methods stays instant."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from camcli.errors import UsageError


@dataclass(frozen=True)
class MethodInfo:
    name: str
    target: str  # "module:Class"
    needs_grad: bool
    summary: str
    paper: str


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "cam",
            "camcli.methods.cam:CAM",
            False,
            "Class activation map: the head's linear weights x the last feature map (GAP heads)",
            "Zhou et al. 2016, arXiv:1512.04150",
        ),
        MethodInfo(
            "gradcam",
            "camcli.methods.gradcam:GradCAM",
            True,
            "ReLU of the feature map weighted by the spatial mean of the class gradients",
            "Selvaraju et al. 2017, arXiv:1610.02391",
        ),
    )
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method_class(name: str) -> type:
    info = METHODS.get(name.lower())
    if info is None:
        import difflib

        close = difflib.get_close_matches(name.lower(), list(METHODS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(
            f"unknown method {name!r}{hint} (available: {', '.join(METHODS)}; see `camcli methods`)"
        )
    module_name, class_name = info.target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
