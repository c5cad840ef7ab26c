"""Model name, weights, checkpoint and device -> an eval-mode model, its preprocessing, its labels.

One ``load_model`` in front of the model sources (torchvision today, a user's factory); the
pieces it uses live in the modules of this package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.models import get_model_weights

from camcli.config import DEFAULT_MODEL, ModelSpec
from camcli.errors import UsageError
from camcli.models import torchvision as tv
from camcli.models.checkpoints import load_checkpoint_into, read_checkpoint
from camcli.models.custom import custom_factory
from camcli.models.detection import detection_models, load_detection
from camcli.models.devices import resolve_device
from camcli.models.labels import read_labels
from camcli.models.loaded import LoadedModel, head_layer, out_features
from camcli.models.memory import (
    available_memory,
    check_memory,
    input_too_small,
    is_out_of_memory,
)
from camcli.models.normalize import normalized
from camcli.models.onnx import is_onnx_path, load_onnx
from camcli.models.segmentation import load_segmentation, segmentation_models
from camcli.models.sources import find_source, load_source_model, source_models
from camcli.models.speed import fold_batchnorms, use_channels_last
from camcli.models.torchvision import classification_models, resolve_model_name

__all__ = [
    "LoadedModel",
    "available_memory",
    "classification_models",
    "custom_factory",
    "dense_source",
    "detection_models",
    "fold_batchnorms",
    "head_layer",
    "input_too_small",
    "is_out_of_memory",
    "load_model",
    "out_features",
    "read_checkpoint",
    "read_labels",
    "resolve_device",
    "resolve_model_name",
    "segmentation_models",
    "source_models",
    "use_channels_last",
]


def dense_source(name: str) -> Callable[..., LoadedModel] | None:
    """The loader of a torchvision detector or segmentation model called ``name``, else None."""
    if name in detection_models():
        return load_detection
    if name in segmentation_models():
        return load_segmentation
    return None


def load_model(
    model: str | ModelSpec = DEFAULT_MODEL, *, progress: bool = True, **options: Any
) -> LoadedModel:
    """Build a classifier in eval mode, with preprocessing and class labels: a torchvision
    name, a user's ``file.py:factory``, or a source's ``timm:NAME`` / ``hf:ID_OR_DIR``
    (``camcli.models.sources``).

    Preprocessing comes from the weights' own transforms; with ``weights="none"`` or a
    checkpoint, from the model's default weights' transforms (sizes only, nothing downloads).

    ``model`` is a ModelSpec, or its ``model`` with the other fields as keywords
    (``load_model("resnet18", weights="none")``). The spec's ``head`` and ``max_pixels`` are
    for the caller (``camcli.targets.apply_head``, the image reader); the model keeps its spec.
    """
    spec = model if isinstance(model, ModelSpec) else ModelSpec(model=model, **options)
    if isinstance(model, ModelSpec) and options:
        raise TypeError("load_model: a ModelSpec or keywords, not both")
    loaded = _load(spec, progress)
    loaded.preprocess = normalized(loaded.preprocess, spec)  # --normalize, --mean, --std
    loaded.spec = spec
    return loaded


def _load(spec: ModelSpec, progress: bool) -> LoadedModel:
    name, weights, checkpoint = spec.model, spec.weights, spec.checkpoint
    num_classes, labels, input_size, fit = spec.num_classes, spec.labels, spec.input_size, spec.fit
    device = spec.device
    if fit not in ("crop", "stretch"):
        raise UsageError(f"unknown fit {fit!r} (use crop or stretch)")
    if num_classes is not None and num_classes < 1:
        raise UsageError("--num-classes must be at least 1")
    if input_size is not None and input_size < 16:
        raise UsageError("--input-size must be at least 16")
    named = weights is not None and weights.lower() not in ("none", "default")
    if checkpoint is not None and named:
        raise UsageError(
            f"--weights {weights} and --checkpoint conflict: the checkpoint replaces the "
            "weights; leave --weights out"
        )
    if is_onnx_path(name):  # model.onnx, run by ONNX Runtime
        return load_onnx(spec, progress)
    source = find_source(name)  # timm:NAME, hf:ID_OR_DIR
    if source is not None:
        return load_source_model(*source, spec, progress)
    dense = dense_source(name)  # torchvision's detectors and segmentation models
    if dense is not None:
        return dense(spec, progress)
    name = resolve_model_name(name)
    dev = resolve_device(device)
    check_memory(name, num_classes, input_size, dev)
    try:
        if checkpoint is not None:
            chosen = None
            state = read_checkpoint(checkpoint)
            model = load_checkpoint_into(name, state, num_classes, Path(checkpoint))
        elif custom_factory(name) is not None:
            if named:
                raise UsageError(f"--weights {weights}: a custom --model has no named weights")
            chosen = None
            model = tv.seeded_build(name, num_classes)
        else:
            chosen = tv.resolve_weights(name, weights)
            if chosen is not None:
                if num_classes is not None and num_classes != len(chosen.meta["categories"]):
                    raise UsageError(
                        f"--num-classes {num_classes} does not fit pretrained weights "
                        f"{chosen.name} ({len(chosen.meta['categories'])} classes); "
                        "use --checkpoint"
                    )
                model = tv.load_pretrained(name, chosen, progress)
            else:
                model = tv.seeded_build(name, num_classes)
        model.eval().to(dev)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        classes = f" with {num_classes} classes" if num_classes is not None else ""
        raise UsageError(
            f"not enough memory to build {name}{classes} on {dev} "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        ) from None
    channels_last = use_channels_last(model, dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    default_weights = None if custom_factory(name) else get_model_weights(name).DEFAULT
    preprocess = tv.transforms_preprocess(chosen or default_weights).with_fit(fit)
    # Models with learned position embeddings (ViT) take one size only, and that is the
    # built model's own: vit_h_14's DEFAULT weights are 518 px but weights=None builds 224.
    fixed = getattr(model, "image_size", None)
    if isinstance(fixed, int) and fixed != preprocess.crop_size:
        preprocess = preprocess.with_input_size(fixed)
    if input_size is not None:
        if isinstance(fixed, int) and input_size != fixed:
            raise UsageError(
                f"--input-size {input_size}: {name} takes {fixed} px inputs only "
                "(its position embeddings are fixed); leave --input-size out"
            )
        preprocess = preprocess.with_input_size(input_size)

    head = head_layer(model)
    n_classes = out_features(head[1]) if head is not None else (num_classes or 1000)
    label_list: list[str] | None
    if labels is not None:
        label_list = read_labels(labels)
        if len(label_list) != n_classes:
            raise UsageError(
                f"{labels}: has {len(label_list)} labels but the model has {n_classes} classes"
            )
    elif chosen is not None:
        label_list = list(chosen.meta["categories"])
    elif (
        checkpoint is None
        and default_weights is not None
        and n_classes == len(default_weights.meta["categories"])
    ):
        label_list = list(default_weights.meta["categories"])
    else:
        label_list = None
    return LoadedModel(
        model=model,
        name=name,
        weights=chosen.name if chosen is not None else None,
        preprocess=preprocess,
        labels=label_list,
        device=dev,
        num_classes=n_classes,
        channels_last=channels_last,
        owned=True,
    )
