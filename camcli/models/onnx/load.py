"""``load_model`` for an ONNX file."""

from __future__ import annotations

from pathlib import Path

import torch

from camcli.config import ModelSpec
from camcli.errors import UsageError
from camcli.images import Preprocess
from camcli.models.devices import resolve_device
from camcli.models.labels import read_labels
from camcli.models.loaded import LoadedModel
from camcli.models.onnx.graph import DEFAULT_INPUT_SIZE, metadata_labels, read_model, value_dims
from camcli.models.onnx.module import OnnxModel


def load_onnx(spec: ModelSpec, progress: bool = True) -> LoadedModel:
    """``load_model`` for an ONNX file: the graph as an ``OnnxModel`` with its preprocessing
    (the graph's fixed size, else ``--input-size``, else 224; ImageNet mean and std unless
    the spec says otherwise) and labels (``--labels``, else the model's metadata)."""
    path = Path(spec.model).expanduser()
    if spec.checkpoint is not None:
        raise UsageError(f"--checkpoint with {path}: an ONNX file carries its own weights")
    if spec.weights is not None and spec.weights.lower() not in ("none", "default"):
        raise UsageError(f"--weights {spec.weights}: an ONNX file carries its own weights")
    if spec.num_classes is not None:
        raise UsageError(f"--num-classes with {path}: the graph's output gives the classes")
    proto = read_model(path)
    device = resolve_device(spec.device)
    if device.type == "mps" and spec.device == "auto":
        device = torch.device("cpu")
    if device.type == "cuda" and spec.device == "auto":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            device = torch.device("cpu")
    model = OnnxModel(proto, path, device, max(1, torch.get_num_threads()))
    model.eval()
    model.to(device)
    fixed = model.input.height
    if fixed is not None and model.input.width != fixed:
        raise UsageError(
            f"{path}: takes {fixed}x{model.input.width} px inputs; camcli feeds square ones"
        )
    size = fixed or spec.input_size or DEFAULT_INPUT_SIZE
    if fixed is not None and spec.input_size is not None and spec.input_size != fixed:
        raise UsageError(
            f"--input-size {spec.input_size}: {path} takes {fixed} px inputs only (fixed in "
            "the graph); leave --input-size out"
        )
    preprocess = Preprocess().with_input_size(size).with_fit(spec.fit)
    dims = value_dims(proto.graph.output[0])
    classes = dims[1] if len(dims) == 2 and isinstance(dims[1], int) else None
    if classes is None:
        probe = torch.zeros(1, 3, size, size, device=device)
        with torch.inference_mode():
            classes = int(model(probe).shape[1])
    labels = metadata_labels(proto)
    if spec.labels is not None:
        labels = read_labels(spec.labels)
        if len(labels) != classes:
            raise UsageError(
                f"{spec.labels}: has {len(labels)} labels but the model has {classes} classes"
            )
    elif labels is not None and len(labels) != classes:
        labels = None
    return LoadedModel(
        model=model,
        name=str(path),
        weights=None,
        preprocess=preprocess,
        labels=labels,
        device=device,
        num_classes=classes,
    )
