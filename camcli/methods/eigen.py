"""Eigen-CAM and Eigen-Grad-CAM: the first principal component of the (weighted) activations."""

from __future__ import annotations

import torch

from camcli.methods.base import CamContext, CamMethod, GradientCam, principal_projection


class EigenCAM(CamMethod):
    """``M = ReLU((A - mean_ij A) v_1)``: ``A`` (HW positions x C channels) projected on
    its first right-singular vector ``v_1``, the same map for every class.

    Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal Components",
    arXiv:2008.00299. Class-agnostic. The singular vector's sign is fixed so that the map
    correlates positively with ``sum_k A_k`` (pytorch-grad-cam leaves it to the SVD).
    """

    name = "eigencam"
    needs_grad = False
    supports_eigen_smooth = False

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        projection = torch.relu(principal_projection(activation))
        return projection[:, None].expand(-1, targets.shape[1], -1, -1).float().contiguous()


class EigenGradCAM(GradientCam):
    """``M_c = ReLU((W - mean_ij W) v_1)`` with ``W = G * A``: Eigen-CAM of the
    gradient-weighted activations, so it depends on the class.

    pytorch-grad-cam's Eigen-Grad-CAM (after Muhammad & Yeasin 2020, arXiv:2008.00299).
    """

    name = "eigengradcam"
    supports_eigen_smooth = False
    eigen = True

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads * activation
