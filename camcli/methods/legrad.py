"""LeGrad (Bousselham et al. 2024): gradients of each block's class score w.r.t. its attention."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer

from camcli.errors import UsageError
from camcli.methods.base import CamContext, CamMethod, class_scores, require_context
from camcli.methods.legrad_swin import (
    last_stage_channels,
    recorded_window_attention,
    swin_block,
    swin_scores,
    windows_to_grid,
)


def attention_block(model: nn.Module, layer: str) -> nn.Module | None:
    """The layer itself or the closest module above it with a ``self_attention``
    ``nn.MultiheadAttention`` (a torchvision ViT ``EncoderBlock``), or None."""
    modules = dict(model.named_modules())
    parts = layer.split(".")
    for end in range(len(parts), -1, -1):
        module = modules.get(".".join(parts[:end]))
        if isinstance(getattr(module, "self_attention", None), nn.MultiheadAttention):
            return module
    return None


@contextlib.contextmanager
def recorded_attention(block: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``block``'s forward records its per-head attention probabilities
    (``"attention"``, (N, heads, queries, keys)) and its output tokens (``"tokens"``).

    ``nn.MultiheadAttention`` is asked for unaveraged weights, and its output is recomputed
    from them (``out_proj(P V)``, the same numbers) so that the recorded probabilities lie on
    the path to the logits and can be differentiated.
    """
    attention: nn.MultiheadAttention = block.self_attention
    store: dict[str, torch.Tensor] = {}

    def ask_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def replay(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
        probabilities = output[1]  # (N, heads, L, S)
        value = args[2] if len(args) > 2 else kwargs["value"]
        n, s, e = value.shape
        heads = module.num_heads
        bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * e :]
        v = nn.functional.linear(value, module.in_proj_weight[2 * e :], bias)
        v = v.reshape(n, s, heads, e // heads).transpose(1, 2)
        mixed = (probabilities @ v).transpose(1, 2).reshape(n, probabilities.shape[2], e)
        store["attention"] = probabilities
        return module.out_proj(mixed), None

    def keep_tokens(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        store["tokens"] = output

    handles = [
        attention.register_forward_pre_hook(ask_weights, with_kwargs=True),
        attention.register_forward_hook(replay, with_kwargs=True),
        block.register_forward_hook(keep_tokens),
    ]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class LeGrad(CamMethod):
    """``M_c^l = mean_{h,q} ReLU(dS_c^l / dP^l_hq)`` over the patch keys, ``P^l`` block ``l``'s
    post-softmax attention (heads h, queries q) and ``S^l = head(norm(mean_tokens(z^l)))`` the
    class scores read from block ``l``'s output tokens ``z^l``.

    Bousselham et al. 2024, "LeGrad: An Explainability Method for Vision Transformers via
    Feature Formation Sensitivity", arXiv:2404.03214; as torchcam 0.5.0's ``LeGrad``: the
    attention values are not multiplied in, the leading (class) keys are dropped. Several
    layers (blocks, or a module inside one such as the default ``ln_1``) are averaged. For
    torchvision's ``VisionTransformer`` (``encoder.ln`` and ``heads`` give ``S^l``); one extra
    forward with gradients per layer.

    torchvision's ``SwinTransformer`` (V1 and V2): ``P^l`` is block ``l``'s windowed attention
    (N * windows, heads, T, T) and ``S^l = head(avgpool(norm(z^l)))``. Each key's relevance is
    averaged over the heads and the T queries of its window (the only queries that attend to
    it), and the windows are put back on the token grid (shift undone, padding cropped). The
    default layer ``norm`` means the last block; only blocks of the last stage can be read by
    ``norm`` and ``head``.
    """

    name = "legrad"
    needs_grad = True
    runtime_split = False  # reads more of the model than the layer's output
    supports_eigen_smooth = False

    def check(self, layer: str, activation: torch.Tensor, logits: torch.Tensor) -> None:
        swin = swin_block(self.model, layer)
        if swin is not None:
            if swin.attn.qkv.in_features != last_stage_channels(self.model):
                raise UsageError(
                    f"legrad reads a Swin block's tokens with the model's norm and head, so the "
                    f"block at or above layer {layer!r} must be in the last stage, e.g. norm or "
                    f"features.{len(self.model.features) - 1}"
                )
            return
        if isinstance(self.model, SwinTransformer):
            raise UsageError(
                f"legrad on a Swin needs a block (a module with a windowed attn) at or above "
                f"layer {layer!r}, e.g. norm or features.{len(self.model.features) - 1}.0"
            )
        encoder = getattr(self.model, "encoder", None)
        heads = getattr(self.model, "heads", None)
        if attention_block(self.model, layer) is None or heads is None or encoder is None:
            raise UsageError(
                f"legrad needs a torchvision VisionTransformer and a transformer block (a "
                f"module with a self_attention) at or above layer {layer!r}, e.g. "
                "encoder.layers.encoder_layer_11, or a torchvision SwinTransformer; for other "
                "models use --method gradcam"
            )

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        if swin_block(self.model, context.layer) is not None:
            return self._compute_swin(activation, targets, context)
        block = attention_block(self.model, context.layer)
        assert block is not None
        n, _, h, w = activation.shape
        image = context.batch.detach().clone().requires_grad_(True)
        with recorded_attention(block) as store, torch.enable_grad():
            context.forward(image)
            tokens = store["tokens"]
            scores = self.model.heads(self.model.encoder.ln(tokens.mean(dim=1))).float()
            attention = store["attention"]
            prefix = attention.shape[-1] - h * w
            maps = []
            for t in range(targets.shape[1]):
                (grads,) = torch.autograd.grad(
                    class_scores(scores, targets, t), attention,
                    retain_graph=t < targets.shape[1] - 1,
                )  # fmt: skip
                relevance = torch.relu(grads.float()).mean(dim=(1, 2))[:, prefix:]
                maps.append(relevance.reshape(n, h, w))
        return torch.stack(maps, dim=1).detach()

    def _compute_swin(
        self, activation: torch.Tensor, targets: torch.Tensor, context: CamContext
    ) -> torch.Tensor:
        block = swin_block(self.model, context.layer)
        assert block is not None
        image = context.batch.detach().clone().requires_grad_(True)
        with recorded_window_attention(block) as store, torch.enable_grad():
            context.forward(image)
            scores = swin_scores(self.model, store["tokens"]).float()
            attention = store["attention"]
            maps = []
            for t in range(targets.shape[1]):
                (grads,) = torch.autograd.grad(
                    class_scores(scores, targets, t), attention,
                    retain_graph=t < targets.shape[1] - 1,
                )  # fmt: skip
                relevance = torch.relu(grads.float()).mean(dim=(1, 2))  # (N * windows, T)
                maps.append(windows_to_grid(relevance, store["grid"], block.attn))
        out = torch.stack(maps, dim=1).detach()
        assert out.shape[-2:] == activation.shape[-2:], (out.shape, activation.shape)
        return out
