"""Sanity baselines: maps that carry no knowledge of the class, the floor a method must beat.

Neither is an explanation. ``camcli evaluate`` puts them in its table beside the real methods:
a method whose faithfulness scores are no better than theirs, or whose maps survive the
model-randomisation check as well as theirs do, explains nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from camcli.methods.base import CamContext, CamMethod, require_context, weighted_maps

#: The seed of RandomCAM's weights: the same inputs give the same maps on every run.
RANDOM_CAM_SEED = 0


class RandomCAM(CamMethod):
    """``M = ReLU(sum_k w_k A_k)`` with ``w_k ~ U(-1, 1)`` drawn per image, channel and target.

    A sanity baseline (after Adebayo et al. 2018, arXiv:1810.03292), pytorch-grad-cam's
    ``RandomCAM``: the layer's channels weighted at random, ignoring the
    class and the gradients. The weights come from a generator seeded with
    ``RANDOM_CAM_SEED`` on each call (on the CPU, so every device draws the same numbers): the
    maps are reproducible, and image ``i`` of a batch always gets the same weights.
    """

    name = "randomcam"
    needs_grad = False

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        n, c = activation.shape[:2]
        generator = torch.Generator().manual_seed(RANDOM_CAM_SEED)
        weights = torch.rand((n, c, targets.shape[1]), generator=generator) * 2.0 - 1.0
        eigen = context is not None and context.eigen_smooth
        return weighted_maps(weights.to(activation.device), activation, eigen)


# Sobel's kernels: x-derivative (columns) and y-derivative (rows), each smoothed across.
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


class SobelEdges(CamMethod):
    """``M = pool(sqrt(G_x^2 + G_y^2))`` of the input's gray level ``I = mean_rgb(X)``, where
    ``G_x = S * I``, ``G_y = S^T * I``, ``S`` is the 3 x 3 Sobel kernel and ``pool`` the
    average over each cell of the layer's grid.

    An edge detector (Sobel & Feldman 1968), the model-independent baseline of Adebayo et al.
    2018 (arXiv:1810.03292): it reads only the (normalised) input image, never the model's
    values, so it is the same for every class and every model. Borders are padded by
    replication, so an image's frame is not an edge. Only the layer's grid size is used, so
    that the map has the resolution of the CAM maps it is compared with.
    """

    name = "sobel"
    needs_grad = False
    supports_eigen_smooth = False

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        image = context.batch.detach().float().mean(dim=1, keepdim=True)
        kx = torch.tensor(_SOBEL_X, device=image.device)
        kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
        padded = nn.functional.pad(image, (1, 1, 1, 1), mode="replicate")
        grads = nn.functional.conv2d(padded, kernels)
        edges = grads.pow(2).sum(dim=1, keepdim=True).sqrt()  # (N, 1, H, W)
        if tuple(edges.shape[-2:]) != tuple(activation.shape[-2:]):
            edges = nn.functional.adaptive_avg_pool2d(edges, activation.shape[-2:])
        return edges.expand(-1, targets.shape[1], -1, -1).contiguous()
