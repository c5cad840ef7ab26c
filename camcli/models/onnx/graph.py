"""Reading an ONNX file: the graph, its one image input and its class-score output, its
constants and head, its labels; each thing camcli cannot use is one UsageError naming the
file and what it found."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from camcli.errors import UsageError, install_extra

#: The input size of a graph whose H and W are dynamic, without ``--input-size``.
DEFAULT_INPUT_SIZE = 224
#: metadata_props keys read for class names, in this order: a JSON list, or one name a line
#: (``labels``, ``classes``, ``class_names``); or a {index: name} mapping (``names``, as
#: Ultralytics writes it).
LABEL_KEYS = ("labels", "classes", "class_names", "names")

FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
PASS_THROUGH_OPS = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")


def is_onnx_path(name: str) -> bool:
    """Whether ``--model`` names an ONNX file (by its suffix)."""
    return name.lower().endswith(".onnx")


def runtime() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UsageError(
            f"ONNX models need the onnx and onnxruntime packages ({install_extra('onnx')})"
        ) from None
    return onnx, onnxruntime


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def type_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return f"type {elem_type}"


def value_dims(value_info: Any) -> list[int | str | None]:
    """A value's shape as ints (fixed), names (symbolic) or None (unknown)."""
    shape = value_info.type.tensor_type.shape
    dims: list[int | str | None] = []
    for dim in shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def shape_text(dims: list[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def read_model(path: Path) -> Any:
    """The ModelProto of ``path`` with its external data, or a UsageError naming the reason."""
    onnx, _ = runtime()
    if not path.is_file():
        raise UsageError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError...: the file, not camcli
        raise UsageError(
            f"{path}: not a readable ONNX model (malformed or truncated: {first_line(exc)})"
        ) from None
    if not model.graph.node or not model.graph.output:
        raise UsageError(f"{path}: not a readable ONNX model (it holds no graph)")
    from onnx.external_data_helper import uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if not (path.parent / location).is_file():
                raise UsageError(
                    f"{path}: its weights are in an external data file, {location!r}, that is "
                    f"not beside it (expected {path.parent / location})"
                )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read its external data ({first_line(exc)})") from None
    return model


@dataclass(frozen=True)
class GraphInput:
    """The one image input: name, layout (``nchw``/``nhwc``), fixed batch (None: dynamic),
    fixed height and width (None: dynamic)."""

    name: str
    layout: str
    batch: int | None
    height: int | None
    width: int | None


def graph_input(model: Any, path: Path) -> GraphInput:
    """The graph's image input, or a UsageError saying what it has instead."""
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        found = ", ".join(f"{i.name!r} {shape_text(value_dims(i))}" for i in inputs) or "none"
        raise UsageError(
            f"{path}: has {len(inputs)} inputs ({found}); camcli needs one image input (N, 3, H, W)"
        )
    value = inputs[0]
    elem = value.type.tensor_type.elem_type
    dims = value_dims(value)
    where = f"{path}: input {value.name!r} {shape_text(dims)}"
    if elem != 1:
        raise UsageError(f"{where} is {type_name(elem)}; camcli feeds float32 images")
    if len(dims) == 3 and 3 in (dims[0], dims[2]):
        raise UsageError(f"{where} has no batch dimension; export it with one (N, 3, H, W)")
    if len(dims) != 4:
        raise UsageError(f"{where} is not an image batch (N, 3, H, W) or (N, H, W, 3)")
    if dims[1] == 3:
        layout, height, width = "nchw", dims[2], dims[3]
    elif dims[3] == 3:
        layout, height, width = "nhwc", dims[1], dims[2]
    else:
        raise UsageError(f"{where} has no axis of 3 colour channels (N, 3, H, W) or (N, H, W, 3)")
    batch = dims[0] if isinstance(dims[0], int) else None
    if batch is not None and batch != 1:
        raise UsageError(
            f"{where} takes a fixed batch of {batch}; export it with a dynamic batch axis "
            "(or a batch of 1)"
        )
    return GraphInput(
        value.name,
        layout,
        batch,
        height if isinstance(height, int) else None,
        width if isinstance(width, int) else None,
    )


def graph_output(model: Any, path: Path) -> str:
    """The name of the class scores: the first output, a float (N, K) tensor."""
    value = model.graph.output[0]
    elem = value.type.tensor_type.elem_type
    dims = value_dims(value)
    where = f"{path}: output {value.name!r} {shape_text(dims)}"
    if elem not in FLOAT_TYPES:
        raise UsageError(
            f"{where} is {type_name(elem)}, not float class scores; camcli explains the "
            "scores (logits) of the first output"
        )
    if dims and len(dims) != 2:
        raise UsageError(f"{where} is not (N, classes) scores; camcli explains classifiers")
    return value.name


def opset(model: Any) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def session_error(path: Path, model: Any, exc: BaseException) -> UsageError:
    import onnxruntime

    text = str(exc)
    supported = re.search(r"is till opset (\d+)", text)
    if supported or "opset" in text.lower():
        most = f" (it supports up to {supported.group(1)})" if supported else ""
        return UsageError(
            f"{path}: uses opset {opset(model)}, which ONNX Runtime {onnxruntime.__version__} "
            f"does not support{most}; export with an older opset or upgrade onnxruntime"
        )
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", first_line(exc))
    return UsageError(f"{path}: ONNX Runtime cannot load it ({reason})")


def providers(device: torch.device) -> list[Any]:
    import onnxruntime

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise UsageError(
                f"--device {device}: this onnxruntime has no CUDA provider; install "
                "onnxruntime-gpu in place of onnxruntime, or use --device cpu"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise UsageError(f"--device {device}: ONNX models run on cpu or cuda")


def constant(model: Any, name: str) -> np.ndarray | None:
    """The value of an initialiser or a Constant node's output, else None."""
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
    return None


def attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def pooled_axes(model: Any, node: Any) -> tuple[int, ...] | None:
    """The spatial axes a node averages over all of, for a 4-D input; None if it does not."""
    if node.op_type in ("GlobalAveragePool",):
        return (2, 3)
    if node.op_type == "ReduceMean":
        axes = attribute(node, "axes", None)
        if axes is None and len(node.input) > 1:
            value = constant(model, node.input[1])
            axes = None if value is None else value.tolist()
        if axes is None:
            return None
        return tuple(sorted(int(a) % 4 for a in axes))
    return None


def torch_module_paths(model: Any, taps: Mapping[str, nn.Module]) -> dict[str, str]:
    """torch module paths -> the tensor each module gave last, from the name scopes that
    ``torch.onnx.export`` records on each node (``layer4`` -> ``relu_16``), so that a layer
    named for the torch model names the same tensor of its export. Empty for other graphs."""
    paths: dict[str, str] = {}
    for node in model.graph.node:
        scopes = next(
            (p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None
        )
        outputs = [name for name in node.output if name in taps]
        if scopes is None or not outputs:
            continue
        try:
            names = ast.literal_eval(scopes)  # a list of strings: literals only, no code
        except (ValueError, SyntaxError):
            continue
        if isinstance(names, list):
            for path in names[1:-1]:  # '' (the model), the modules, the operator
                if isinstance(path, str) and path and path not in taps:
                    paths[path] = outputs[0]
    return paths


def metadata_labels(model: Any) -> list[str] | None:
    props = {p.key: p.value for p in model.metadata_props}
    for key in LABEL_KEYS:
        text = props.get(key)
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            try:
                value = ast.literal_eval(text)  # {0: 'person', ...}: literals only, no code
            except (ValueError, SyntaxError):
                value = [line.strip() for line in text.splitlines() if line.strip()]
        if isinstance(value, dict):
            try:
                value = [value[k] for k in sorted(value, key=int)]
            except (TypeError, ValueError):
                continue
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return None
