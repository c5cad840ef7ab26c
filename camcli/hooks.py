"""A context manager that records layer activations during one forward pass.

Hooks are registered per call and removed in ``finally``; each module's ``training`` flag is
restored on exit, even after an exception. For gradient methods the forward below the first
hooked layer runs without autograd: the hook starts recording the graph at that layer, so the
only tensors that can be differentiated are the activations themselves (no parameter ever
receives a ``.grad``, and frozen or ``requires_grad=False`` models work).

Each recorded activation is handed out as a (N, C, h, w) feature map whatever the layer's own
layout (channels-last, or tokens with a class token; see ``camcli.layers.Layout``). The rest of
the network always runs from a fresh tensor rebuilt from that map (``with_spatial``), so the
map is the layer's output exactly as the layer returned it: an in-place operation downstream
(DenseNet's ``relu(inplace=True)``, a residual ``+=``) cannot change it. For gradient methods
the map is itself on the path to the logits, so ``torch.autograd.grad(score, activation)`` is
the gradient on the grid. Methods that feed a changed map back into the network (Ablation-CAM)
go through ``substituted``, which puts it back into the layer's own layout the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from camcli.layers import Layout, first_tensor, spatial_layout, token_prefix

__all__ = ["ActivationRecorder", "first_tensor", "substituted", "with_spatial"]


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


def with_spatial(output: Any, layout: Layout | None, spatial: torch.Tensor) -> Any:
    """``output`` with its tensor replaced by a fresh one built from ``spatial`` (N', C, h, w)
    in ``layout``, the layer's own (channels-last, tokens with the layer's leading tokens).

    ``N'`` may differ from the layer's batch (one image's ablated copies); with no grid layout
    ``spatial`` is the replacement as it is, copied. The one way a map goes back into a network.
    """
    if layout is None:
        return _replace_first_tensor(output, spatial.clone())
    return _replace_first_tensor(output, layout.from_spatial(spatial, first_tensor(output)))


@contextlib.contextmanager
def substituted(
    module: nn.Module,
    spatial: torch.Tensor,
    input_hw: tuple[int, int],
    prefix: int | None = None,
) -> Iterator[None]:
    """Within the block ``module``'s output is replaced by ``spatial`` (N', C, h, w) put back
    into the output's own layout for an input of ``input_hw`` pixels (``with_spatial``);
    ``prefix`` is the model's declared leading-token count (``camcli.layers.token_prefix``)."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        tensor = first_tensor(output)
        if tensor is None:
            raise TypeError(f"{type(module).__name__} produced no tensor to replace")
        return with_spatial(output, spatial_layout(tensor.shape, input_hw, prefix), spatial)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class ActivationRecorder:
    """Record the outputs of ``layers`` (name -> module) during the forward passes in the block.

    ``activations[name]`` is the layer's output as (N, C, h, w) when it has a grid layout, else
    the output as it is. With ``grad=True`` call the model under ``torch.no_grad()``: the first
    hooked layer's map becomes a leaf that requires grad and switches autograd on for the rest
    of the forward (``no_grad``'s exit restores the caller's mode). Later hooked layers are
    recorded inside that graph. With or without gradients, downstream modules receive a fresh
    tensor built from the map, so an in-place op after the layer (DenseNet's
    ``relu(inplace=True)``) cannot change what was recorded.

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
        self.prefix = token_prefix(model)
        self.activations: dict[str, torch.Tensor] = {}
        self._input_hw: tuple[int, int] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._training: list[tuple[nn.Module, bool]] = []

    def _input_hook(self, module: nn.Module, args: Any) -> None:
        tensor = first_tensor(args)
        if tensor is not None and tensor.ndim == 4:
            self._input_hw = (int(tensor.shape[-2]), int(tensor.shape[-1]))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            tensor = first_tensor(output)
            if tensor is None:
                raise TypeError(f"layer {name!r} produced no tensor ({type(output).__name__})")
            if self.dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(self.dtype)
            layout = spatial_layout(tensor.shape, self._input_hw, self.prefix)
            # Not a grid: recorded as it is, for the caller to reject with a clear message.
            spatial = tensor if layout is None else layout.to_spatial(tensor)
            if self.grad and not tensor.requires_grad:
                spatial = spatial.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            self.activations[name] = spatial
            return with_spatial(output, layout, spatial)

        return hook

    def __enter__(self) -> ActivationRecorder:
        self._training = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            self._handles.append(self.model.register_forward_pre_hook(self._input_hook))
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
