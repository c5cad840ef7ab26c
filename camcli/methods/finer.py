"""Finer-CAM (Zhang et al. 2025): Grad-CAM of the target's score minus its look-alikes'."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from camcli.errors import UsageError
from camcli.methods.base import GradientCam


def reference_classes(logits: torch.Tensor, targets: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` classes whose logits are closest to each target's, the target excluded:
    (N, T) target indices -> (N, T, count)."""
    scores = logits.detach()
    target_scores = scores.gather(1, targets)  # (N, T)
    distance = (scores[:, None, :] - target_scores[:, :, None]).abs()  # (N, T, K)
    distance.scatter_(2, targets[:, :, None], float("inf"))
    return distance.topk(min(count, scores.shape[1] - 1), dim=2, largest=False).indices


class FinerCAM(GradientCam):
    """Grad-CAM of the contrastive score ``S = y_c - gamma * mean_m y_{d_m}``:
    ``M_c = ReLU(sum_k a_k A_k)``, ``a_k = mean_ij dS/dA_k(i, j)``.

    Zhang et al. 2025, "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
    Explanation", arXiv:2501.11309. ``d_1..d_M`` are the ``M = 3`` classes whose logits are
    closest to ``y_c`` (the target excluded), ``gamma = 0.6`` (torchcam's defaults): the map
    keeps what tells class c apart from the classes the model confuses it with. One backward
    pass per target, through the logits' weighted combination.
    """

    name = "finercam"
    gamma: float = 0.6
    references: int = 3

    def check(self, layer: str, activation: torch.Tensor, logits: torch.Tensor) -> None:
        if logits.shape[1] < 2:
            raise UsageError("finercam compares the target with other classes: the model has one")

    def gradients(
        self, activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        others = reference_classes(logits, targets, self.references)  # (N, T, M)
        count = targets.shape[1]
        # Row t of ``coefficients`` is dS_t/dlogits: +1 at the target, -gamma/M at each reference.
        coefficients = torch.zeros((count, *logits.shape), dtype=logits.dtype, device=logits.device)
        coefficients.scatter_(2, targets.t()[:, :, None], 1.0)
        share = torch.full(others.shape, -self.gamma / others.shape[2], dtype=logits.dtype,
                           device=logits.device).permute(1, 0, 2)  # fmt: skip
        coefficients.scatter_add_(2, others.permute(1, 0, 2), share)
        with torch.enable_grad():
            for t in range(count):
                (grads,) = torch.autograd.grad(
                    logits, activation, grad_outputs=coefficients[t], retain_graph=True
                )
                yield grads

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True) * activation
