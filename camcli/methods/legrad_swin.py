"""LeGrad on torchvision's Swin (V1 and V2): windowed attention maps, back on the token grid.

torchvision's ``ShiftedWindowAttention`` calls the functional ``shifted_window_attention``,
so no module returns its attention probabilities. For one call the module's forward runs
under a ``TorchFunctionMode`` that keeps the output of its (only) ``softmax``: the
probabilities ``P`` (N * windows, heads, queries, keys) on the path to the logits, so that the
class score can be differentiated w.r.t. them without recomputing the attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformer


class _KeepSoftmax(TorchFunctionMode):
    """Records every ``softmax`` output computed while active (nested calls are not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[torch.Tensor] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in (nn.functional.softmax, torch.softmax, torch.Tensor.softmax):
            self.outputs.append(out)
        return out


def swin_block(model: nn.Module, layer: str) -> nn.Module | None:
    """The Swin block (a module with a ``ShiftedWindowAttention[V2]`` ``attn``) at or above
    ``layer``; for the model's final ``norm`` (camcli's default Swin layer) the last block.
    None when ``model`` is not a torchvision ``SwinTransformer`` or no block is found."""
    if not isinstance(model, SwinTransformer):
        return None
    modules = dict(model.named_modules())
    if layer == "norm":
        blocks = [
            m
            for m in model.modules()
            if isinstance(getattr(m, "attn", None), ShiftedWindowAttention)
        ]
        return blocks[-1] if blocks else None
    parts = layer.split(".")
    for end in range(len(parts), -1, -1):
        module = modules.get(".".join(parts[:end]))
        if isinstance(getattr(module, "attn", None), ShiftedWindowAttention):
            return module
    return None


@contextlib.contextmanager
def recorded_window_attention(block: nn.Module) -> Iterator[dict[str, Any]]:
    """Within the block, ``block``'s forward records its windowed attention probabilities
    (``"attention"``, (N * windows, heads, T, T), T the window's token count), the
    attention's input shape (``"grid"``, (N, H, W)) and the block's output tokens
    (``"tokens"``, (N, H, W, C))."""
    attention: ShiftedWindowAttention = block.attn
    store: dict[str, Any] = {}
    forward = attention.forward

    def keep_probabilities(x: torch.Tensor) -> torch.Tensor:
        mode = _KeepSoftmax()
        with mode:
            out = forward(x)
        if len(mode.outputs) != 1:
            raise RuntimeError(
                f"expected one softmax in {type(attention).__name__}, got {len(mode.outputs)}"
            )
        store["attention"] = mode.outputs[0]
        store["grid"] = tuple(x.shape[:3])
        return out

    def keep_tokens(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        store["tokens"] = output

    # An instance attribute, so the class is untouched; one set before (a wrapper) comes back.
    previous = attention.__dict__.get("forward")
    attention.forward = keep_probabilities
    handle = block.register_forward_hook(keep_tokens)
    try:
        yield store
    finally:
        handle.remove()
        if previous is None:
            del attention.forward
        else:
            attention.forward = previous


def windows_to_grid(
    relevance: torch.Tensor, grid: tuple[int, int, int], attention: ShiftedWindowAttention
) -> torch.Tensor:
    """Per-window key relevance (N * windows, T) back to the token grid (N, H, W).

    Undoes ``shifted_window_attention``'s layout: the grid is padded at the bottom / right to
    whole windows, rolled by ``-shift`` (no shift along a side one window covers), cut into
    windows row by row; so the windows are put back in place, rolled by ``+shift`` and cropped.
    """
    n, h, w = grid
    wh, ww = attention.window_size
    padded_h, padded_w = h + (wh - h % wh) % wh, w + (ww - w % ww) % ww
    shift = [
        0 if wh >= padded_h else attention.shift_size[0],
        0 if ww >= padded_w else attention.shift_size[1],
    ]
    tiles = relevance.reshape(n, padded_h // wh, padded_w // ww, wh, ww)
    full = tiles.permute(0, 1, 3, 2, 4).reshape(n, padded_h, padded_w)
    if sum(shift) > 0:
        full = torch.roll(full, shifts=(shift[0], shift[1]), dims=(1, 2))
    return full[:, :h, :w]


def swin_scores(model: SwinTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """``S^l = head(avgpool(norm(z^l)))``: the model's own head read from block tokens
    ``z^l`` (N, H, W, C)."""
    return model.head(model.flatten(model.avgpool(model.permute(model.norm(tokens)))))


def last_stage_channels(model: SwinTransformer) -> int:
    """The channel count the final ``norm`` and ``head`` take (the last stage's)."""
    return int(model.norm.normalized_shape[0])
