"""``--model path/to/model.onnx``: an ONNX graph run by ONNX Runtime, as a torch module.

``OnnxModel`` wraps an ``onnxruntime.InferenceSession`` so that the whole engine (batching,
targets, outputs, ``check``, ``evaluate``, Ray) runs it unchanged:

- every intermediate float tensor of the graph is a *tap*, a parameter-free child module named
  by the tensor's own name (``camcli layers model.onnx`` lists them; ``--layer NAME`` takes
  the graph's name as it is). ``forward`` asks the session for the logits plus the tensors
  whose taps carry hooks (exposed as extra graph outputs; one session per set of them) and
  calls each such tap on its tensor, so ``ActivationRecorder``'s hooks fire as on a torch
  layer. When a hook *replaces* a tap's output (Ablation-CAM, DFF go through
  ``camcli.hooks.substituted``), the rest of the graph runs from the replacement: a tail
  session whose one input is that tensor.
- a head that is global average pooling (+ Flatten/Reshape) + one Gemm or MatMul (+ Add) is
  also an ``nn.Linear`` child built from the graph's initialisers, so ``cam`` finds it.
- there is no autograd: ``differentiable = False``, and the explainer refuses a method that
  needs gradients in one line naming those that work.

The graph's input gives the layout (NCHW, or NHWC: transposed here), the input size (fixed H
and W) and the batch (dynamic, or a fixed 1: batches run one image at a time). Everything
camcli cannot use is refused in one line that names the file and what it found.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from camcli.config import ModelSpec
from camcli.errors import UsageError, install_extra
from camcli.images import Preprocess
from camcli.models.devices import resolve_device
from camcli.models.labels import read_labels
from camcli.models.loaded import LoadedModel

#: The input size of a graph whose H and W are dynamic, without ``--input-size``.
DEFAULT_INPUT_SIZE = 224
#: metadata_props keys read for class names, in this order: a JSON list, or one name a line
#: (``labels``, ``classes``, ``class_names``); or a {index: name} mapping (``names``, as
#: Ultralytics writes it).
LABEL_KEYS = ("labels", "classes", "class_names", "names")

_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
_PASS_THROUGH_OPS = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout")


def is_onnx_path(name: str) -> bool:
    """Whether ``--model`` names an ONNX file (by its suffix)."""
    return name.lower().endswith(".onnx")


def _runtime() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UsageError(
            f"ONNX models need the onnx and onnxruntime packages ({install_extra('onnx')})"
        ) from None
    return onnx, onnxruntime


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _type_name(elem_type: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return f"type {elem_type}"


def _dims(value_info: Any) -> list[int | str | None]:
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


def _shape_text(dims: list[int | str | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def read_model(path: Path) -> Any:
    """The ModelProto of ``path`` with its external data, or a UsageError naming the reason."""
    onnx, _ = _runtime()
    if not path.is_file():
        raise UsageError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError...: the file, not camcli
        raise UsageError(
            f"{path}: not a readable ONNX model (malformed or truncated: {_first_line(exc)})"
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
        raise UsageError(f"{path}: cannot read its external data ({_first_line(exc)})") from None
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
        found = ", ".join(f"{i.name!r} {_shape_text(_dims(i))}" for i in inputs) or "none"
        raise UsageError(
            f"{path}: has {len(inputs)} inputs ({found}); camcli needs one image input (N, 3, H, W)"
        )
    value = inputs[0]
    elem = value.type.tensor_type.elem_type
    dims = _dims(value)
    where = f"{path}: input {value.name!r} {_shape_text(dims)}"
    if elem != 1:
        raise UsageError(f"{where} is {_type_name(elem)}; camcli feeds float32 images")
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
    dims = _dims(value)
    where = f"{path}: output {value.name!r} {_shape_text(dims)}"
    if elem not in _FLOAT_TYPES:
        raise UsageError(
            f"{where} is {_type_name(elem)}, not float class scores; camcli explains the "
            "scores (logits) of the first output"
        )
    if dims and len(dims) != 2:
        raise UsageError(f"{where} is not (N, classes) scores; camcli explains classifiers")
    return value.name


def _opset(model: Any) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _session_error(path: Path, model: Any, exc: BaseException) -> UsageError:
    import onnxruntime

    text = str(exc)
    supported = re.search(r"is till opset (\d+)", text)
    if supported or "opset" in text.lower():
        most = f" (it supports up to {supported.group(1)})" if supported else ""
        return UsageError(
            f"{path}: uses opset {_opset(model)}, which ONNX Runtime {onnxruntime.__version__} "
            f"does not support{most}; export with an older opset or upgrade onnxruntime"
        )
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", _first_line(exc))
    return UsageError(f"{path}: ONNX Runtime cannot load it ({reason})")


def _providers(device: torch.device) -> list[Any]:
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


def _constant(model: Any, name: str) -> np.ndarray | None:
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


def _attribute(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _pooled_axes(model: Any, node: Any) -> tuple[int, ...] | None:
    """The spatial axes a node averages over all of, for a 4-D input; None if it does not."""
    if node.op_type in ("GlobalAveragePool",):
        return (2, 3)
    if node.op_type == "ReduceMean":
        axes = _attribute(node, "axes", None)
        if axes is None and len(node.input) > 1:
            value = _constant(model, node.input[1])
            axes = None if value is None else value.tolist()
        if axes is None:
            return None
        return tuple(sorted(int(a) % 4 for a in axes))
    return None


class OnnxTensor(nn.Module):
    """One intermediate tensor of the graph: called by ``OnnxModel.forward`` on the tensor's
    value so that forward hooks see it (and may replace it). Subclassed per operator type,
    so ``camcli layers`` shows the producing operator as the layer's type."""

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


@functools.cache
def _tap_class(op_type: str) -> type[OnnxTensor]:
    safe = re.sub(r"\W", "_", op_type) or "Tensor"
    return type(safe, (OnnxTensor,), {"__module__": __name__})


class OnnxModel(nn.Module):
    """An ONNX graph behind ``nn.Module``'s interface: (N, 3, H, W) float -> (N, K) logits."""

    #: No autograd through ONNX Runtime: gradient methods are refused (``camcli.explain``).
    differentiable = False

    def __init__(self, model: Any, path: Path, device: torch.device, threads: int) -> None:
        super().__init__()
        import onnx

        self.path = path
        self.proto = model
        self.input = graph_input(model, path)
        self.output = graph_output(model, path)
        self.device = device
        self._threads = threads
        self._sessions: dict[tuple[str, ...], Any] = {}
        self._tails: dict[str, Any] = {}
        inferred = onnx.shape_inference.infer_shapes(model)
        self._types = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
        producers = {out: node for node in model.graph.node for out in node.output}
        self._producers = producers
        constants = {t.name for t in model.graph.initializer}
        self._taps: dict[str, OnnxTensor] = {}
        for node in model.graph.node:
            if node.op_type == "Constant" or all(i in constants for i in node.input if i):
                constants.update(node.output)
                continue
            for name in node.output:
                info = self._types.get(name)
                elem = info.type.tensor_type.elem_type if info is not None else 0
                if name and name != self.output and elem in _FLOAT_TYPES:
                    self._taps[name] = _tap_class(node.op_type)()
        for index, tap in enumerate(self._taps.values()):
            self.add_module(f"tap{index}", tap)  # registered for .to(), .eval(); named below
        self.declared_default_layer, head = self._find_head()
        self.head_name = None
        if head is not None:
            self.head_name, linear = head
            self.add_module("head", linear)
        self._session(())  # fails here, with the file's reason, if ONNX Runtime cannot load it

    # The graph's own tensor names are the layer names (``--layer relu_16``).
    def named_modules(
        self, memo: set[nn.Module] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        yield prefix, self
        dot = f"{prefix}." if prefix else ""
        for name, tap in self._taps.items():
            yield dot + name, tap
        if self.head_name is not None:
            yield dot + self.head_name, self.head

    def _find_head(self) -> tuple[str | None, tuple[str, nn.Linear] | None]:
        """The default layer (the 4-D input of the global pooling before the output) and the
        pooling + one linear head as an ``nn.Linear`` (None where the head is something else)."""
        model = self.proto
        consumers: dict[str, list[Any]] = {}
        for node in model.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        pool = None
        for node in model.graph.node:
            if not node.input or node.input[0] not in self._taps:
                continue
            dims = _dims(self._types[node.input[0]]) if node.input[0] in self._types else []
            if len(dims) != 4:
                continue
            axes = _pooled_axes(model, node)
            wanted = (2, 3) if self.input.layout == "nchw" else (1, 2)
            if axes == wanted or (node.op_type == "GlobalAveragePool"):
                pool = node
        if pool is None:
            return None, None
        default = pool.input[0]
        # Follow flatten/reshape to one Gemm, or MatMul (+ Add), that gives the output.
        tensor = pool.output[0]
        while True:
            after = consumers.get(tensor, [])
            if len(after) != 1 or after[0].op_type not in _PASS_THROUGH_OPS:
                break
            tensor = after[0].output[0]
        after = consumers.get(tensor, [])
        if len(after) != 1:
            return default, None
        node = after[0]
        weight = bias = None
        if node.op_type == "Gemm" and len(node.input) >= 2:
            b = _constant(model, node.input[1])
            if b is None or b.ndim != 2 or _attribute(node, "transA", 0):
                return default, None
            weight = (b if _attribute(node, "transB", 0) else b.T) * _attribute(node, "alpha", 1.0)
            c = _constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if c is not None:
                bias = np.broadcast_to(c, (weight.shape[0],)) * _attribute(node, "beta", 1.0)
            out = node.output[0]
        elif node.op_type == "MatMul":
            b = _constant(model, node.input[1])
            if b is None or b.ndim != 2:
                return default, None
            weight, out = b.T, node.output[0]
            adds = consumers.get(out, [])
            if len(adds) == 1 and adds[0].op_type == "Add":
                other = [i for i in adds[0].input if i != out]
                c = _constant(model, other[0]) if other else None
                if c is not None and c.size == weight.shape[0]:
                    bias, out = c.reshape(-1), adds[0].output[0]
        else:
            return default, None
        if out != self.output:
            return default, None
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, np.float32)))
            if bias is not None:
                linear.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, np.float32)))
        linear.requires_grad_(False)
        return default, (node.name or f"{out}.linear", linear)

    def _new_session(self, model: Any) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            return onnxruntime.InferenceSession(
                model.SerializeToString(), options, providers=_providers(self.device)
            )
        except UsageError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail, InvalidGraph...
            raise _session_error(self.path, self.proto, exc) from None

    def _session(self, extra: tuple[str, ...]) -> Any:
        """A session that also returns the tensors ``extra`` (cached per set)."""
        session = self._sessions.get(extra)
        if session is None:
            import onnx

            model = self.proto
            if extra:
                model = onnx.ModelProto()
                model.CopyFrom(self.proto)
                for name in extra:
                    info = self._types.get(name)
                    value = onnx.ValueInfoProto(name=name)
                    if info is not None:
                        value.type.tensor_type.elem_type = info.type.tensor_type.elem_type
                    model.graph.output.append(value)
            session = self._sessions[extra] = self._new_session(model)
        return session

    def _tail(self, name: str) -> Any:
        """A session from the tensor ``name`` to the logits: the graph after that tensor."""
        session = self._tails.get(name)
        if session is not None:
            return session
        import onnx

        graph = self.proto.graph
        known = {t.name for t in graph.initializer} | {name}
        needed, nodes, seen = [self.output], [], set()
        while needed:
            tensor = needed.pop()
            if tensor in known or tensor in seen or not tensor:
                continue
            seen.add(tensor)
            node = self._producers.get(tensor)
            if node is None:  # the graph's input: the tail cannot start from ``name`` alone
                raise UsageError(
                    f"{self.path}: the graph after {name!r} also reads the input {tensor!r}, "
                    f"so a changed {name!r} cannot be fed back alone; pick a later layer"
                )
            if node not in nodes:
                nodes.append(node)
            needed.extend(node.input)
        order = [n for n in graph.node if n in nodes]
        used = {i for n in order for i in n.input}
        info = self._types.get(name)
        value = onnx.helper.make_tensor_value_info(
            name,
            info.type.tensor_type.elem_type if info is not None else 1,
            [f"d{i}" for i in range(len(_dims(info)))] if info is not None else None,
        )
        tail = onnx.helper.make_graph(
            order,
            "tail",
            [value],
            [graph.output[0]],
            [t for t in graph.initializer if t.name in used],
        )
        model = onnx.helper.make_model(
            tail, opset_imports=self.proto.opset_import, ir_version=self.proto.ir_version
        )
        session = self._tails[name] = self._new_session(model)
        return session

    def _run(self, session: Any, names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        try:
            return session.run(names, feed)
        except Exception as exc:  # onnxruntime's own errors: a shape the graph rejects...
            raise RuntimeError(f"{self.path}: ONNX Runtime failed: {_first_line(exc)}") from None

    def _rows(self, session: Any, names: list[str], name: str, array: np.ndarray) -> list[Any]:
        """Run a batch, one row at a time where the graph takes a batch of 1 only."""
        if self.input.batch is None or array.shape[0] == 1:
            return self._run(session, names, {name: array})
        parts = [self._run(session, names, {name: array[i : i + 1]}) for i in range(len(array))]
        return [np.concatenate(column) for column in zip(*parts, strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hooked = tuple(
            name for name, tap in self._taps.items() if tap._forward_hooks or tap._forward_pre_hooks
        )
        fixed = (self.input.height, self.input.width)
        if None not in fixed and tuple(x.shape[-2:]) != fixed:
            raise RuntimeError(
                f"{self.path} takes {fixed[0]}x{fixed[1]} px inputs only (fixed in the graph), "
                f"got {x.shape[-2]}x{x.shape[-1]} (--aug-smooth rescales: leave it out)"
            )
        pixels = x.detach().float()
        if self.input.layout == "nhwc":
            pixels = pixels.permute(0, 2, 3, 1)
        array = np.ascontiguousarray(pixels.cpu().numpy())
        values = self._rows(self._session(hooked), [self.output, *hooked], self.input.name, array)
        logits = torch.from_numpy(values[0]).to(x.device)
        for name, value in zip(hooked, values[1:], strict=True):
            tensor = torch.from_numpy(value).to(x.device)
            result = self._taps[name](tensor)
            replaced = result.shape != tensor.shape or not torch.equal(result, tensor)
            if replaced:  # a hook put another tensor in its place: run the graph on from it
                feed = np.ascontiguousarray(result.detach().to(tensor.dtype).cpu().numpy())
                tail = self._tail(name)
                logits = torch.from_numpy(self._rows(tail, [self.output], name, feed)[0])
                logits = logits.to(x.device)
        return logits


def _metadata_labels(model: Any) -> list[str] | None:
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
    dims = _dims(proto.graph.output[0])
    classes = dims[1] if len(dims) == 2 and isinstance(dims[1], int) else None
    if classes is None:
        probe = torch.zeros(1, 3, size, size, device=device)
        with torch.inference_mode():
            classes = int(model(probe).shape[1])
    labels = _metadata_labels(proto)
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
