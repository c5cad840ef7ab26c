"""An ONNX Runtime or OpenVINO session behind one call: a float32 batch in, tensors out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from camcli.errors import UsageError, install_extra

#: The runtimes beside PyTorch, each with the module it imports and camcli's extra for it.
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s package can be imported (without importing it)."""
    module, _ = PACKAGES[runtime]
    return importlib.util.find_spec(module) is not None


def require(runtime: str) -> None:
    """UsageError with the install command unless ``runtime``'s package is installed."""
    module, extra = PACKAGES[runtime]
    if not installed(runtime):
        raise UsageError(f"--runtime {runtime} needs the {module} package: {install_extra(extra)}")


class Session:
    """``session(batch)`` -> the graph's outputs as CPU float32 tensors, in graph order."""

    runtime: str

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        return [torch.from_numpy(np.asarray(out, dtype=np.float32)) for out in self._run(array)]

    def _run(self, array: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class OrtSession(Session):
    """ONNX Runtime on the CPU, all graph optimisations on, ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings about unused initialisers are not ours
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def _run(self, array: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input: array})


#: ``--precision`` -> OpenVINO's inference precision on the CPU. OpenVINO picks bf16 by
#: itself on CPUs that have it; camcli asks for f32 unless told otherwise.
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OvSession(Session):
    """OpenVINO on the CPU at ``precision`` (``OPENVINO_PRECISION``), ``threads`` streams'
    threads; one compiled model per batch size (static shapes run faster than a dynamic one).
    """

    runtime = "openvino"
    #: Compiled batch sizes kept at once (a run uses its batch and a last, smaller one).
    SHAPES = 4

    def __init__(self, path: Path, threads: int, precision: str = "fp32") -> None:
        import openvino

        self._core = openvino.Core()
        self._model = self._core.read_model(str(path))
        self._config = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision],
            "INFERENCE_NUM_THREADS": max(1, threads),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled: dict[tuple[int, ...], object] = {}
        #: The graph's output names, in the order ``__call__`` returns them.
        self.output_names = [output.get_any_name() for output in self._model.outputs]

    def _request(self, shape: tuple[int, ...]):
        request = self._compiled.get(shape)
        if request is None:
            if len(self._compiled) >= self.SHAPES:  # each holds its own compiled graph
                self._compiled.pop(next(iter(self._compiled)))
            model = self._model.clone()
            model.reshape({model.inputs[0].any_name: list(shape)})
            compiled = self._core.compile_model(model, "CPU", self._config)
            request = self._compiled[shape] = compiled.create_infer_request()
        return request

    def _run(self, array: np.ndarray) -> list[np.ndarray]:
        request = self._request(tuple(array.shape))
        request.infer({0: array})
        return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]


def open_session(runtime: str, path: Path, precision: str = "fp32") -> Session:
    """A session of ``runtime`` on the ONNX file ``path``, as many threads as torch uses."""
    threads = torch.get_num_threads()
    if runtime == "onnxruntime":
        return OrtSession(path, threads)
    return OvSession(path, threads, precision)
