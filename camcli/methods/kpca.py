"""KPCA-CAM (Karmani et al. 2024): the first kernel principal component of the activations."""

from __future__ import annotations

from collections.abc import Callable

import torch

from camcli.methods.base import CamContext, CamMethod


def _sigmoid(x: torch.Tensor, gamma: float) -> torch.Tensor:
    return torch.tanh(gamma * x @ x.transpose(1, 2) + 1.0)


def _rbf(x: torch.Tensor, gamma: float) -> torch.Tensor:
    return torch.exp(-gamma * torch.cdist(x, x).pow(2))


def _linear(x: torch.Tensor, gamma: float) -> torch.Tensor:
    return x @ x.transpose(1, 2)


#: ``k(x, y)`` for batches of samples (N, P, C) -> (N, P, P), as scikit-learn defines them
#: (``coef0 = 1`` for the sigmoid kernel).
KERNELS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "rbf": _rbf,
    "linear": _linear,
}


def kernel_projection(
    activation: torch.Tensor, kernel: str = "sigmoid", gamma: float | None = None
) -> torch.Tensor:
    """First kernel principal component of each image's positions: (N, C, H, W) -> (N, H, W).

    The H*W positions are the samples and the C channels the features. The samples are
    centred, ``K_ij = k(x_i, x_j)`` is centred in feature space (``K - 1K - K1 + 1K1`` with
    ``1 = 1/P``), and each position is projected on the top eigenvector ``v`` (eigenvalue
    ``l``): ``z = sqrt(l) v`` (scikit-learn's ``KernelPCA.fit_transform``). ``gamma``
    defaults to ``1 / C``. Computed in float64. The sign of ``v`` is arbitrary; it is
    oriented to correlate positively with the channel sum, as for Eigen-CAM.
    """
    n, c, h, w = activation.shape
    samples = torch.nan_to_num(activation.double()).reshape(n, c, h * w).transpose(1, 2)
    samples = samples - samples.mean(dim=1, keepdim=True)
    gram = KERNELS[kernel](samples, 1.0 / c if gamma is None else gamma)
    gram = gram - gram.mean(dim=1, keepdim=True)
    gram = gram - gram.mean(dim=2, keepdim=True)
    values, vectors = torch.linalg.eigh(gram)
    projection = vectors[:, :, -1] * values[:, -1:].clamp(min=0).sqrt()
    plain = activation.double().reshape(n, c, h * w).sum(dim=1)
    centred = projection - projection.mean(dim=1, keepdim=True)
    sign = torch.where((centred * plain).sum(dim=1) < 0, -1.0, 1.0).to(projection.dtype)
    return (projection * sign[:, None]).reshape(n, h, w).float()


class KPCACAM(CamMethod):
    """``M = ReLU(z)``, ``z`` the first kernel principal component of ``A`` (H*W positions x
    C channels) with the sigmoid kernel ``k(x, y) = tanh(x.y / C + 1)``: Eigen-CAM with a
    kernel; the same map for every class.

    Karmani et al. 2024, "KPCA-CAM: Visual Explainability of Deep Computer
    Vision Models using Kernel PCA", arXiv:2410.00267; see ``kernel_projection``. The
    kernel's size is (H*W)^2 per image: meant for the last layers.
    """

    name = "kpcacam"
    needs_grad = False
    supports_eigen_smooth = False
    kernel: str = "sigmoid"
    gamma: float | None = None

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        projection = torch.relu(kernel_projection(activation, self.kernel, self.gamma))
        return projection[:, None].expand(-1, targets.shape[1], -1, -1).contiguous()
