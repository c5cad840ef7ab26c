"""The shared engine's contract: one small class per method."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class CamMethod:
    """Turn one layer's activations (and, for gradient methods, the logits) into maps.

    ``compute`` gets the activation ``A`` of shape (N, C, H, W) recorded by the hooks, the
    logits (N, K) and the target class indices (N, T), and returns raw maps (N, T, H, W) in
    float32: the method's formula, after its ReLU, before any normalisation.
    """

    name: ClassVar[str]
    needs_grad: ClassVar[bool]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def check(self, layer: str, activation: torch.Tensor, logits: torch.Tensor) -> None:
        """Validate at setup, on a probe batch, that the method applies to this model/layer."""

    def compute(
        self, activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


def class_scores(logits: torch.Tensor, targets: torch.Tensor, column: int) -> torch.Tensor:
    """The sum over the batch of each image's logit for its ``column``-th target class.

    Images are independent in eval mode, so the gradient of this sum with respect to the batch
    of activations holds every image's own gradient.
    """
    return logits.gather(1, targets[:, column : column + 1]).sum()
