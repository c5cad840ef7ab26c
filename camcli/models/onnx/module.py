"""``OnnxModel``: an ONNX Runtime session behind ``nn.Module``'s interface, with one tap
module per intermediate tensor (see the package's docstring)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from camcli.errors import UsageError
from camcli.models.onnx.graph import (
    FLOAT_TYPES,
    PASS_THROUGH_OPS,
    attribute,
    constant,
    first_line,
    graph_input,
    graph_output,
    pooled_axes,
    providers,
    session_error,
    torch_module_paths,
    value_dims,
)


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
                if name and name != self.output and elem in FLOAT_TYPES:
                    self._taps[name] = _tap_class(node.op_type)()
        self.layer_aliases = torch_module_paths(model, self._taps)
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
            dims = value_dims(self._types[node.input[0]]) if node.input[0] in self._types else []
            if len(dims) != 4:
                continue
            axes = pooled_axes(model, node)
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
            if len(after) != 1 or after[0].op_type not in PASS_THROUGH_OPS:
                break
            tensor = after[0].output[0]
        after = consumers.get(tensor, [])
        if len(after) != 1:
            return default, None
        node = after[0]
        weight = bias = None
        if node.op_type == "Gemm" and len(node.input) >= 2:
            b = constant(model, node.input[1])
            if b is None or b.ndim != 2 or attribute(node, "transA", 0):
                return default, None
            weight = (b if attribute(node, "transB", 0) else b.T) * attribute(node, "alpha", 1.0)
            c = constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if c is not None:
                bias = np.broadcast_to(c, (weight.shape[0],)) * attribute(node, "beta", 1.0)
            out = node.output[0]
        elif node.op_type == "MatMul":
            b = constant(model, node.input[1])
            if b is None or b.ndim != 2:
                return default, None
            weight, out = b.T, node.output[0]
            adds = consumers.get(out, [])
            if len(adds) == 1 and adds[0].op_type == "Add":
                other = [i for i in adds[0].input if i != out]
                c = constant(model, other[0]) if other else None
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
                model.SerializeToString(), options, providers=providers(self.device)
            )
        except UsageError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail, InvalidGraph...
            raise session_error(self.path, self.proto, exc) from None

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
            [f"d{i}" for i in range(len(value_dims(info)))] if info is not None else None,
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
            raise RuntimeError(f"{self.path}: ONNX Runtime failed: {first_line(exc)}") from None

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
