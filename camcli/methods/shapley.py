"""ShapleyCAM (Cai 2025): Grad-CAM's weights corrected by a Hessian-vector product."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from camcli.methods.base import GradientCam, class_scores


class ShapleyCAM(GradientCam):
    """``M_c = ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij (G - 1/2 H A)_kij``, where
    ``G = dS_c/dA`` and ``H A`` is the Hessian of ``S_c`` with respect to ``A`` times ``A``.

    Cai 2025, "CAMs as Shapley Value-based Explainers", arXiv:2501.06261: the second-order
    Taylor expansion of ``S_c`` around ``A`` gives each channel's Shapley value; ``H A``
    comes from a second backward pass through the gradient graph
    (``d(G . A)/dA`` with ``A`` held fixed, ``create_graph=True`` on the first). For a
    network that is piecewise linear after the layer (ReLU, max-pooling, a linear head) the
    Hessian is zero almost everywhere and the map is Grad-CAM's; it differs where smooth
    activations (SiLU, GELU, hard-swish, softmax) follow the layer.
    """

    name = "shapleycam"

    def forward_context(self) -> contextlib.AbstractContextManager:
        # The fused attention kernels (flash, memory-efficient) have no second derivative;
        # the math kernel computes the same attention and does.
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])

    def gradients(
        self, activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        """``G - 1/2 H A`` for each target column (the quantity whose mean weighs ``A_k``)."""
        fixed = activation.detach()
        with torch.enable_grad():
            for column in range(targets.shape[1]):
                score = class_scores(logits, targets, column)
                (grads,) = torch.autograd.grad(
                    score, activation, retain_graph=True, create_graph=True
                )
                (hvp,) = torch.autograd.grad(
                    grads, activation, grad_outputs=fixed, retain_graph=True, allow_unused=True
                )
                hvp = torch.zeros_like(fixed) if hvp is None else hvp
                yield (grads - 0.5 * hvp).detach()

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True) * activation
