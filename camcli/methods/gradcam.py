"""Grad-CAM and the methods that only change how ``A`` and ``G = dS_c/dA`` are combined.

``S_c`` is the class logit (before softmax); ``A`` (N, C, H, W) the layer's activation and
``G`` its gradient, from ``torch.autograd.grad`` with respect to the activation only.
"""

from __future__ import annotations

import torch

from camcli.methods.base import GradientCam


class GradCAM(GradientCam):
    """``M_c = ReLU(sum_k a_k^c A_k)`` with ``a_k^c = mean_ij dS_c / dA_k(i, j)``.

    Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", arXiv:1610.02391. On a GAP + linear head this equals
    ``ReLU(CAM) / (H W)``.
    """

    name = "gradcam"

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(2, 3), keepdim=True) * activation


class GradCAMPlusPlus(GradientCam):
    """``M_c = ReLU(sum_k w_k A_k)``, ``w_k = sum_ij alpha_kij ReLU(G_kij)`` with
    ``alpha_kij = G^2 / (2 G^2 + sum_ab A_kab G^3) = 1 / (2 + G_kij sum_ab A_kab)``.

    Chattopadhyay et al. 2018, "Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks", arXiv:1710.11063, eq. 19 (higher derivatives of ``exp(S_c)``
    written with powers of the first). ``alpha = 0`` where ``G = 0`` or the denominator
    vanishes; no epsilon is added (pytorch-grad-cam adds 1e-6, which is not negligible
    when gradients are small).
    """

    name = "gradcam++"

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        total = activation.sum(dim=(2, 3), keepdim=True)
        g2 = grads.pow(2)
        denominator = 2 * g2 + total * g2 * grads
        valid = (grads != 0) & (denominator != 0)
        alpha = torch.where(valid, g2 / torch.where(valid, denominator, 1.0), 0.0)
        weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
        return weights * activation


class XGradCAM(GradientCam):
    """``M_c = ReLU(sum_k w_k A_k)`` with ``w_k = sum_ij G_kij A_kij / sum_ij A_kij``.

    Fu et al. 2020, "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation
    of CNNs", arXiv:2008.02312. A channel whose activations sum to zero gets weight zero.
    """

    name = "xgradcam"

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        total = activation.sum(dim=(2, 3), keepdim=True)
        numerator = (grads * activation).sum(dim=(2, 3), keepdim=True)
        weights = torch.where(total != 0, numerator / torch.where(total != 0, total, 1.0), 0.0)
        return weights * activation


class HiResCAM(GradientCam):
    """``M_c = ReLU(sum_k G_k * A_k)``: the gradient multiplies each position, no averaging.

    Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", arXiv:2011.08891.
    """

    name = "hirescam"

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads * activation


class GradCAMElementWise(GradientCam):
    """``M_c = ReLU(sum_k ReLU(G_k * A_k))``: HiResCAM with the ReLU inside the sum.

    pytorch-grad-cam's element-wise Grad-CAM (Gildenblat et al., no paper of its own; a
    variant of Draelos & Carin 2020, arXiv:2011.08891).
    """

    name = "gradcam-elementwise"

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return torch.relu(grads * activation)


class LayerCAM(GradientCam):
    """``M_c = ReLU(sum_k ReLU(G_k) * A_k)``: positive gradients weigh each position.

    Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 30:5875. Meant for shallow layers as much as deep ones.
    """

    name = "layercam"

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return torch.relu(grads) * activation
