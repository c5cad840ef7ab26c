"""Dotted layer names -> modules; feature-map layouts; the automatic default layer; a listing.

A CAM layer's output must be read as a grid over the image. Convolutional layers give
(N, C, H, W); Swin-style layers give channels-last (N, H, W, C); ViT-style layers give tokens
(N, P + h*w, C) with P leading tokens (a class token) before the patch tokens. ``Layout``
turns each of these into a (N, C, h, w) view and back, so every method sees one shape.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops.misc import Permute

from camcli.errors import UsageError

# Modules that only pool, reorder or pass through their input: never the CAM layer themselves.
_PASS_THROUGH = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d,  # token pooling (Hugging Face Swin's pooler): (N, C, 1), not a grid
    nn.AdaptiveMaxPool1d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    Permute,
)
_MAX_PREFIX_TOKENS = 8  # a class token, a distillation token, a few register tokens


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


@dataclass(frozen=True)
class Layout:
    """Where the grid lies in a layer's output: ``nchw``, ``nhwc`` or ``tokens``.

    ``prefix`` is the number of leading non-patch tokens (``tokens`` only); ``grid`` is (h, w).
    """

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def describe(self) -> str:
        """``7x7``, ``7x7 (NHWC)``, or ``14x14 (1+196 tokens)`` with the dropped tokens first."""
        grid = f"{self.grid[0]}x{self.grid[1]}"
        if self.kind == "tokens":
            return f"{grid} ({self.prefix}+{self.grid[0] * self.grid[1]} tokens)"
        if self.kind == "nhwc":
            return f"{grid} (NHWC)"
        return grid

    def to_spatial(self, tensor: torch.Tensor) -> torch.Tensor:
        """The layer's output as (N, C, h, w): a differentiable view (or reshape) of it."""
        if self.kind == "nhwc":
            return tensor.permute(0, 3, 1, 2)
        if self.kind == "tokens":
            n, _, c = tensor.shape
            patches = tensor[:, self.prefix :]
            return patches.reshape(n, self.grid[0], self.grid[1], c).permute(0, 3, 1, 2)
        return tensor

    def from_spatial(self, spatial: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """A fresh tensor in the layer's own layout built from ``spatial`` (N', C, h, w).

        The leading tokens are taken from ``original`` (N, P + h*w, C); with N = 1 they are
        shared by all N' rows (copies of one image). Fresh memory, so in-place operations
        downstream cannot change the recorded activation.
        """
        if self.kind == "nhwc":
            return spatial.permute(0, 2, 3, 1).clone(memory_format=torch.contiguous_format)
        if self.kind == "tokens":
            tokens = spatial.flatten(2).transpose(1, 2)
            leading = original[:, : self.prefix].to(tokens.dtype)
            return torch.cat([leading.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return spatial.clone()


def _is_grid(h: int, w: int, input_hw: tuple[int, int] | None) -> bool:
    """Whether (h, w) can be the image downsampled by one stride (within a cell of rounding)."""
    if h < 1 or w < 1:
        return False
    if input_hw is None:
        return h == w
    big_h, big_w = input_hw
    return h <= big_h and w <= big_w and abs(h * big_w - w * big_h) <= max(big_h, big_w)


def token_prefix(model: nn.Module) -> int | None:
    """The leading non-patch tokens a token model declares (``num_prefix_tokens``: the class
    token plus any distillation and register tokens), else None.

    timm's ViT, DeiT, EVA and BEiT carry the attribute; camcli's Hugging Face source sets it
    from the model's config. Declared, it is exact where the shape alone is ambiguous: with 4
    register tokens, 5 + 2*2 tokens would otherwise read as a 3x3 grid.
    """
    count = getattr(model, "num_prefix_tokens", None)
    return count if isinstance(count, int) and count >= 0 else None


def spatial_layout(
    shape: tuple[int, ...] | torch.Size,
    input_hw: tuple[int, int] | None = None,
    prefix: int | None = None,
) -> Layout | None:
    """The layout of an output of this shape for an input of ``input_hw`` pixels, or None.

    4-D: (N, C, H, W) when its last two sizes form a grid, else (N, H, W, C) when its middle
    two do. 3-D (N, L, C): tokens when ``L - P`` is a square ``g*g`` with ``P`` (the fewest
    leading tokens that make it square) at most 8. With the model's declared ``prefix``
    (``token_prefix``) ``P`` is that count, or 0 (the patch embedding, before the class token
    is added), whichever leaves a square.
    """
    if len(shape) == 3 and prefix is not None:
        length = int(shape[1])
        for leading in dict.fromkeys((prefix, 0)):
            side = math.isqrt(max(length - leading, 0))
            if side >= 2 and side * side == length - leading and _is_grid(side, side, input_hw):
                return Layout("tokens", (side, side), leading)
        return None
    if len(shape) == 4:
        _, a, b, c = (int(s) for s in shape)
        if _is_grid(b, c, input_hw):
            return Layout("nchw", (b, c))
        if _is_grid(a, b, input_hw):
            return Layout("nhwc", (a, b))
        return None
    if len(shape) == 3:
        length = int(shape[1])
        side = math.isqrt(length)
        prefix = length - side * side
        if side >= 2 and prefix <= _MAX_PREFIX_TOKENS and _is_grid(side, side, input_hw):
            return Layout("tokens", (side, side), prefix)
    return None


@dataclass(frozen=True)
class LayerInfo:
    """One module as seen in a dummy forward: name, type, output shape and grid layout."""

    name: str
    type: str
    shape: tuple[int, ...] | None
    layout: Layout | None = None

    @property
    def grid(self) -> tuple[int, int] | None:
        return self.layout.grid if self.layout is not None else None


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


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def trace_layers(
    model: nn.Module, input_size: int, device: torch.device
) -> tuple[list[LayerInfo], str | None]:
    """Every module's output shape and layout from one dummy forward, and the default layer.

    The default is the last module, in execution order, whose output is a grid of more than
    one cell (any layout), skipping pooling, dropout, reshaping and identity modules; among
    modules that return the very same tensor the outermost (shortest name) wins, among those
    that return a plain tensor (a Hugging Face backbone returns an output object whose other
    fields, the pooled output, reach the head without its first tensor). Two kinds of
    late layers are passed over because their maps say nothing about the image:

    - class-score maps: as many channels as classes with no learned layer after them
      (SqueezeNet's final 1x1 convolution), where the last feature stage is wanted;
    - token layers after the last attention (ViT): with a class token, only that token reaches
      the logits from there, so the patch tokens get no gradient. The default is then the last
      token layer that feeds an attention module (the last block's first LayerNorm).
    """
    order: list[tuple[str, nn.Module, torch.Tensor | None]] = []
    wrapped: set[str] = set()  # modules whose output is a tuple, dict or output object
    attention_inputs: set[int] = set()
    parametric_after: list[int] = []  # per entry of order: learned modules run after it
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            order.append((name, module, first_tensor(output)))
            if not isinstance(output, torch.Tensor):
                wrapped.add(name)

        return hook

    def attention_pre_hook(module: nn.Module, args: tuple) -> None:
        tensor = first_tensor(args)
        if tensor is not None:
            attention_inputs.add(id(tensor))

    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
                if _is_attention(module):
                    handles.append(module.register_forward_pre_hook(attention_pre_hook))
        with torch.inference_mode():
            output = model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in training:
            module.training = flag

    input_hw = (input_size, input_size)
    prefix = token_prefix(model)
    shapes: dict[str, tuple[int, ...] | None] = {}
    for name, _module, tensor in order:
        shapes[name] = tuple(tensor.shape) if tensor is not None else None
    infos = []
    for name, module in model.named_modules():
        if not name:
            continue
        shape = shapes.get(name)
        layout = spatial_layout(shape, input_hw, prefix) if shape is not None else None
        infos.append(LayerInfo(name, type(module).__name__, shape, layout))

    logits = first_tensor(output)
    num_classes = int(logits.shape[-1]) if logits is not None and logits.ndim == 2 else None
    count = 0
    for _, module, _ in reversed(order):
        parametric_after.append(count)
        count += _has_parameters(module)
    parametric_after.reverse()
    # A container's hook fires after its children's: only modules with no learned child
    # finishing later count as "after", which the running count above gives in order.

    default = None
    default_tensor = None
    for position, (name, module, tensor) in enumerate(order):
        if isinstance(module, _PASS_THROUGH) or tensor is None or name in wrapped:
            continue
        layout = spatial_layout(tensor.shape, input_hw, prefix)
        if layout is None or layout.grid[0] * layout.grid[1] <= 1:
            continue
        channels = tensor.shape[-1] if layout.kind != "nchw" else tensor.shape[1]
        if channels == num_classes and parametric_after[position] == 0 and default is not None:
            continue
        if layout.prefix and id(tensor) not in attention_inputs:
            continue
        if tensor is default_tensor and default is not None and len(name) >= len(default):
            continue
        default, default_tensor = name, tensor
    return infos, dense_default_layer(model) or default


# torchvision's classifiers, by class: the layer ``trace_layers`` picks for them (the tests
# check the two agree on every model), so ``camcli run`` skips the tracing forward pass.
_KNOWN_DEFAULTS = {
    "ResNet": "layer4",
    "RegNet": "trunk_output",
    "ShuffleNetV2": "conv5",
    "MNASNet": "layers",
    "GoogLeNet": "inception5b",
    "Inception3": "Mixed_7c",
    "SwinTransformer": "norm",
    "MaxVit": "blocks.3",
    "VGG": "features",
    "AlexNet": "features",
    "DenseNet": "features",
    "MobileNetV2": "features",
    "MobileNetV3": "features",
    "EfficientNet": "features",
    "ConvNeXt": "features",
    "SqueezeNet": "features",
}


def dense_default_layer(model: nn.Module) -> str | None:
    """torchvision's detectors and segmentation models: the backbone's last stage (the R-CNN
    family, RetinaNet and FCOS: ``backbone.body``'s last child, before the FPN; SSD:
    ``backbone.features``' last block; segmentation: ``backbone``'s last child), else None."""
    package = type(model).__module__
    if not package.startswith(("torchvision.models.detection", "torchvision.models.segmentation")):
        return None
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return None
    for prefix, holder in (("backbone.body", getattr(backbone, "body", None)),
                           ("backbone", backbone)):  # fmt: skip
        if holder is None:
            continue
        names = [name for name, _ in holder.named_children()]
        if prefix == "backbone" and "features" in names:
            # SSD: its VGG / MobileNet trunk's last block (SSDlite runs the blocks one by one,
            # never the container).
            last = [name for name, _ in backbone.features.named_children()][-1]
            return f"backbone.features.{last}"
        if names:
            return f"{prefix}.{names[-1]}"
    return None


def _timm_feature_layer(model: nn.Module) -> str | None:
    """A timm model's last feature stage: the last module of its ``feature_info`` (what
    ``features_only`` returns), when the model has one."""
    info = getattr(model, "feature_info", None)
    try:
        name = info[-1]["module"] if info else None
    except (TypeError, KeyError, IndexError):
        return None
    if not isinstance(name, str) or name not in dict(model.named_modules()):
        return None
    return name


def known_default_layer(model: nn.Module) -> str | None:
    """The default layer without a forward pass, else None: a torchvision classifier's, or a
    timm convolutional or hierarchical model's last feature stage. Token models (timm's ViT
    family declares ``num_prefix_tokens``) are traced: their last stage feeds only the class
    token to the head."""
    declared = getattr(model, "declared_default_layer", None)  # an ONNX graph's own
    if isinstance(declared, str) and declared in dict(model.named_modules()):
        return declared
    cls = type(model)
    if cls.__module__.startswith("timm.") and token_prefix(model) is None:
        return _timm_feature_layer(model)
    if not cls.__module__.startswith("torchvision.models."):
        return None
    dense = dense_default_layer(model)
    if dense is not None:
        return dense
    if cls.__name__ == "VisionTransformer":
        name = f"encoder.layers.encoder_layer_{len(model.encoder.layers) - 1}.ln_1"
    else:
        name = _KNOWN_DEFAULTS.get(cls.__name__)
    if name is None or name not in dict(model.named_modules()):
        return None
    return name


def default_layer(model: nn.Module, input_size: int, device: torch.device) -> str | None:
    """The layer explained when none is given: known for torchvision's models, else traced."""
    return known_default_layer(model) or trace_layers(model, input_size, device)[1]
