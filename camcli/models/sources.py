"""Model sources named by a prefix (``timm:NAME``, ``hf:ID_OR_DIR``) behind ``load_model``.

A source is a module with two functions:

- ``names(pattern) -> list[str]``: its model names matching a glob, with no network;
- ``build(name, *, weights, checkpoint, num_classes, input_size, progress) -> Built``: the
  model (pretrained through the library's own loading, cache first; random from a fixed seed
  for ``weights="none"``; or the user's checkpoint), its preprocessing and its labels.

Each source imports its library only when used, so that camcli runs without the optional
extras; a missing one is a ``UsageError`` naming the install command (exit 2).
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from camcli.config import ModelSpec
from camcli.errors import UsageError
from camcli.images import Preprocess
from camcli.models.devices import resolve_device
from camcli.models.labels import read_labels
from camcli.models.loaded import LoadedModel, head_layer, out_features
from camcli.models.memory import is_out_of_memory
from camcli.models.speed import use_channels_last

# prefix -> the module that implements it (imported on first use)
SOURCES = {"timm": "camcli.models.timm", "hf": "camcli.models.hf"}


@dataclass
class Built:
    """What a source's ``build`` returns: the model (not yet on its device), the preprocessing
    at the model's input size, its labels, and the name of the weights loaded (None for
    random or checkpoint weights)."""

    model: nn.Module
    preprocess: Preprocess
    labels: list[str] | None
    weights: str | None


def find_source(name: str) -> tuple[ModuleType, str] | None:
    """``timm:resnet18`` -> (camcli.models.timm, ``resnet18``); None for names without a
    source prefix (torchvision names, ``file.py:factory``)."""
    prefix, sep, rest = name.partition(":")
    if not sep or prefix not in SOURCES:
        return None
    if not rest:
        raise UsageError(f"--model {name}: give a model after {prefix}: ({prefix}:NAME)")
    return importlib.import_module(SOURCES[prefix]), rest


def source_models(pattern: str) -> list[str] | None:
    """``timm:*vit*`` -> the prefixed names matching the glob (a plain word matches as a
    substring); None when ``pattern`` names no source."""
    prefix, sep, rest = pattern.partition(":")
    if not sep or prefix not in SOURCES:
        return None
    if not any(c in rest for c in "*?["):
        rest = f"*{rest}*"
    module = importlib.import_module(SOURCES[prefix])
    return [f"{prefix}:{n}" for n in module.names(rest) if fnmatch.fnmatch(n, rest)]


def load_source_model(
    source: ModuleType,
    name: str,
    spec: ModelSpec,
    progress: bool,
) -> LoadedModel:
    """``load_model`` for a source (``name`` without its prefix): build, then place on the
    device with the labels."""
    dev = resolve_device(spec.device)
    num_classes, labels = spec.num_classes, spec.labels
    built = source.build(
        name,
        weights=spec.weights,
        checkpoint=spec.checkpoint,
        num_classes=num_classes,
        input_size=spec.input_size,
        progress=progress,
    )
    model = built.model
    try:
        model.eval().to(dev)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise UsageError(f"not enough memory to put {source.PREFIX}{name} on {dev}") from None
    channels_last = use_channels_last(model, dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    head = head_layer(model)
    n_classes = out_features(head[1]) if head is not None else (num_classes or 1000)
    label_list = built.labels
    if labels is not None:
        label_list = read_labels(labels)
        if len(label_list) != n_classes:
            raise UsageError(
                f"{labels}: has {len(label_list)} labels but the model has {n_classes} classes"
            )
    elif label_list is not None and len(label_list) != n_classes:
        label_list = None
    return LoadedModel(
        model=model,
        name=f"{source.PREFIX}{name}",
        weights=built.weights,
        preprocess=built.preprocess.with_fit(spec.fit),
        labels=label_list,
        device=dev,
        num_classes=n_classes,
        channels_last=channels_last,
        owned=True,
    )
