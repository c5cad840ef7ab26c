"""Dotted layer names -> modules; the automatic default layer; a listing of every layer."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from camcli.errors import UsageError
from camcli.hooks import first_tensor

_POOLING = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.Identity,
)


@dataclass(frozen=True)
class LayerInfo:
    """One module as seen in a dummy forward: its dotted name, type and output shape."""

    name: str
    type: str
    shape: tuple[int, ...] | None


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module at a dotted path (``layer4``, ``features.28``), or a UsageError with hints."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    if not close:
        close = [n for n in names if n.startswith(name.split(".")[0])][:5]
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UsageError(f"unknown layer {name!r}{hint} (`camcli layers MODEL` lists them)")


def trace_layers(
    model: nn.Module, input_size: int, device: torch.device
) -> tuple[list[LayerInfo], str | None]:
    """Every module's output shape from one dummy forward, and the default CAM layer.

    The default is the last module, in execution order, whose output is a feature map
    (N, C, H, W) with more than one spatial cell, skipping pooling, dropout and identity
    modules; among modules that return the very same tensor the outermost (shortest name) wins.
    """
    order: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            order.append((name, module, first_tensor(output)))

        return hook

    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training:
            module.training = flag

    shapes: dict[str, tuple[int, ...] | None] = {}
    for name, _module, tensor in order:
        shapes[name] = tuple(tensor.shape) if tensor is not None else None
    infos = [
        LayerInfo(name, type(module).__name__, shapes.get(name))
        for name, module in model.named_modules()
        if name
    ]

    default = None
    default_tensor = None
    for name, module, tensor in order:
        if isinstance(module, _POOLING) or tensor is None or tensor.ndim != 4:
            continue
        if tensor.shape[2] * tensor.shape[3] <= 1:
            continue
        if tensor is default_tensor and default is not None and len(name) >= len(default):
            continue
        default, default_tensor = name, tensor
    return infos, default
