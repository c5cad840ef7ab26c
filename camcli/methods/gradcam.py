"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks")."""

from __future__ import annotations

import warnings

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
        grads = target_gradients(activation, logits, targets)
        activation = activation.detach().float()
        maps = [
            torch.relu((self.channel_weights(activation, g.float()) * activation).sum(dim=1))
            for g in grads
        ]
        return torch.stack(maps, dim=1).float()


def target_gradients(
    activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``dS_c / dA`` for each of the T target columns: (T, N, C, H, W), in one backward pass.

    The T backward passes are batched with ``vmap`` (``is_grads_batched``): one-hot rows of the
    logits' gradient select each image's class. An op without a batching rule falls back to one
    backward per target.
    """
    count = targets.shape[1]
    if count > 1:
        onehot = torch.zeros((count, *logits.shape), dtype=logits.dtype, device=logits.device)
        onehot.scatter_(2, targets.t().unsqueeze(2), 1.0)
        try:
            with warnings.catch_warnings():
                # vmap's "performance drop" notice for ops without a batching rule: still right.
                warnings.simplefilter("ignore", UserWarning)
                (grads,) = torch.autograd.grad(
                    logits, activation, grad_outputs=onehot, is_grads_batched=True,
                    retain_graph=True,
                )  # fmt: skip
            return grads
        except RuntimeError:
            pass
    return torch.stack(
        [
            torch.autograd.grad(
                class_scores(logits, targets, column), activation, retain_graph=column < count - 1
            )[0]
            for column in range(count)
        ]
    )
