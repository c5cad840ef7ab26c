"""RefineCAM: the product of several layers' normalised maps (multi-layer refinement)."""

from __future__ import annotations

import torch
from torch import nn

from camcli.methods.base import CamContext, CamMethod, GradientCam
from camcli.methods.gradcam import GradCAMPlusPlus


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each (h, w) map of (N, T, h, w) stretched to [0, 1]; a constant map becomes 0."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    span = maps.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), 0.0)


class RefineCAM(CamMethod):
    """``R_c = prod_l U(N(M_c^l))``: each layer's Grad-CAM++ map ``M_c^l`` min-max
    normalised (``N``) at its own resolution, upsampled bilinearly (``U``) to the largest
    layer grid, and multiplied position by position.

    The multi-layer refinement of pytorch-grad-cam's and torchcam's ``RefineCAM`` ("How to
    Evaluate and Refine your CAM", cited there as arXiv:2605.14641): the deep layers' coarse
    map gates the early layers' sharp but noisy ones. Needs two layers or more (``--layer``
    repeated); the raw map is in [0, 1], at the largest layer's resolution. The base method
    is camcli's Grad-CAM++ (the paper's formula; ``base`` can be any gradient method).
    """

    name = "refinecam"
    needs_grad = True
    min_layers = 2

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.base: GradientCam = GradCAMPlusPlus(model)

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        return min_max(self.base.compute(activation, logits, targets, context))

    def fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        height = max(m.shape[-2] for m in maps)
        width = max(m.shape[-1] for m in maps)
        product = torch.ones_like(maps[0][:, :, :1, :1]).expand(-1, -1, height, width)
        for m in maps:
            product = product * nn.functional.interpolate(
                m, size=(height, width), mode="bilinear", align_corners=False
            )
        return product
