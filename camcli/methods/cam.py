"""CAM (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization")."""

from __future__ import annotations

import torch
from torch import nn

from camcli.errors import UsageError
from camcli.methods.base import CamContext, CamMethod, combine


class CAM(CamMethod):
    """``M_c = sum_k w_k^c A_k``: the head's linear weights for class c times the feature maps.

    Zhou et al. 2016, "Learning Deep Features for Discriminative Localization",
    arXiv:1512.04150.

    Needs a head that is global average pooling followed by one linear layer (dropout and
    flatten in between are fine), so that ``logits = W mean_hw(A) + b``. For all classes at
    once this is a 1x1 convolution of ``A`` with ``W``; no gradient is needed. The raw map has
    no ReLU (it is the formula itself); negative evidence is clipped only when rendering.
    """

    name = "cam"
    needs_grad = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.linear: nn.Linear | None = None

    def check(self, layer: str, activation: torch.Tensor, logits: torch.Tensor) -> None:
        if activation.ndim != 4:
            raise UsageError(
                f"cam needs a (N, C, H, W) feature map but layer {layer!r} gives "
                f"{tuple(activation.shape)}; use --method gradcam"
            )
        channels = activation.shape[1]
        candidates = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.Linear)
            and m.in_features == channels
            and m.out_features == logits.shape[1]
        ]
        pooled = activation.float().mean(dim=(2, 3))
        for linear in reversed(candidates):
            predicted = nn.functional.linear(
                pooled, linear.weight.float(), None if linear.bias is None else linear.bias.float()
            )
            tolerance = 1e-3 * max(1.0, float(logits.abs().max()))
            if torch.allclose(predicted, logits.float(), atol=tolerance, rtol=1e-3):
                self.linear = linear
                return
        raise UsageError(
            f"cam needs layer {layer!r} to feed global average pooling and one linear layer "
            "straight into the logits, and this model's head is different; "
            "use --method gradcam (it works on any layer)"
        )

    def all_class_maps(self, activation: torch.Tensor) -> torch.Tensor:
        """Maps for every class at once: one 1x1 convolution, (N, K, H, W)."""
        assert self.linear is not None, "check() must run first"
        weight = self.linear.weight.to(activation.dtype)
        return nn.functional.conv2d(activation, weight[:, :, None, None]).float()

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        assert self.linear is not None, "check() must run first"
        weight = self.linear.weight[targets].to(activation.dtype)  # (N, T, C)
        if context is not None and context.eigen_smooth:
            maps = [
                combine(weight[:, t, :, None, None] * activation, eigen_smooth=True)
                for t in range(targets.shape[1])
            ]
            return torch.stack(maps, dim=1).float()
        return torch.einsum("ntc,nchw->nthw", weight, activation).float()
