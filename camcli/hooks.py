"""A context manager that records layer activations during one forward pass.

Hooks are registered per call and removed in ``finally``; each module's ``training`` flag is
restored on exit, even after an exception. For gradient methods the forward below the first
hooked layer runs without autograd: the hook starts recording the graph at that layer, so the
only tensors that can be differentiated are the activations themselves (no parameter ever
receives a ``.grad``, and frozen or ``requires_grad=False`` models work).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module produced: itself, the first of a tuple/list, or a dict's first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    if isinstance(output, Mapping):
        for item in output.values():
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def _replace_first_tensor(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, (tuple, list)) and output:
        items = list(output)
        for i, item in enumerate(items):
            if first_tensor(item) is not None:
                items[i] = _replace_first_tensor(item, new)
                break
        return type(output)(items) if isinstance(output, list) else tuple(items)
    return output


class ActivationRecorder:
    """Record the outputs of ``layers`` (name -> module) during the forward passes in the block.

    With ``grad=True`` call the model under ``torch.no_grad()``: the first hooked layer's output
    becomes a leaf that requires grad and switches autograd on for the rest of the forward
    (``no_grad``'s exit restores the caller's mode). Later hooked layers are recorded as they
    are, already part of that graph. Downstream modules receive a copy, so an in-place op after
    the layer (DenseNet's ``relu(inplace=True)``) cannot change what was recorded.

    With ``dtype`` (float32 under bf16/fp16 autocast) a floating activation is recorded in that
    dtype and the rest of the forward runs from the recorded copy (autocast casts it down again
    at the next matmul or convolution), so maps and gradients are computed in full precision.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, nn.Module],
        grad: bool,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.layers = dict(layers)
        self.grad = grad
        self.dtype = dtype
        self.activations: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._training: list[tuple[nn.Module, bool]] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            tensor = first_tensor(output)
            if tensor is None:
                raise TypeError(f"layer {name!r} produced no tensor ({type(output).__name__})")
            if self.dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            if not self.grad:
                self.activations[name] = tensor
                return None
            if tensor.requires_grad:
                recorded = tensor
            else:
                recorded = tensor.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            self.activations[name] = recorded
            return _replace_first_tensor(output, recorded.clone())

        return hook

    def __enter__(self) -> ActivationRecorder:
        self._training = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            for name, module in self.layers.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._restore()
            raise
        return self

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, training in self._training:
            module.training = training
        self._training.clear()

    def __exit__(self, *exc_info: object) -> None:
        self._restore()
