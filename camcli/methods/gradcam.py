"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks")."""

from __future__ import annotations

import torch

from camcli.methods.base import CamMethod, class_scores


class GradCAM(CamMethod):
    """``M_c = ReLU(sum_k a_k^c A_k)`` with ``a_k^c = mean_ij dS_c / dA_k(i, j)``.

    ``S_c`` is the class logit (before softmax). Gradients come from ``torch.autograd.grad``
    with respect to the recorded activation only. On a GAP + linear head this equals
    ``ReLU(CAM) / (H W)``.
    """

    name = "gradcam"
    needs_grad = True

    def channel_weights(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True)

    def compute(
        self, activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        maps = []
        count = targets.shape[1]
        for column in range(count):
            (grads,) = torch.autograd.grad(
                class_scores(logits, targets, column), activation, retain_graph=column < count - 1
            )
            weights = self.channel_weights(activation, grads)
            maps.append(torch.relu((weights * activation).sum(dim=1)))
        return torch.stack(maps, dim=1).float()
