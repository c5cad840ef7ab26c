"""FEM (Fuad et al. 2020): channels weighted by how often they fire far above their mean."""

from __future__ import annotations

import torch

from camcli.methods.base import CamContext, CamMethod


class FEM(CamMethod):
    """``M = ReLU(sum_k w_k A_k)`` with ``w_k = mean_ij [A_k(i, j) > mu_k + K sigma_k]``.

    Fuad, Martin, Giot, Bourqui, Benois-Pineau & Zemmari 2020, "Features understanding in 3D
    CNNs for actions recognition in video" (Feature Explanation Method), IPTA 2020,
    hal-02963298. ``mu_k`` and ``sigma_k`` are the mean and (population) standard deviation
    of channel ``k`` over its positions, ``K = 2`` (the k-sigma rule): a channel's weight is
    the fraction of positions where it is an outlier. Gradient-free and class-agnostic (the
    same map for every target).
    """

    name = "fem"
    needs_grad = False
    supports_eigen_smooth = False
    #: The k of the k-sigma threshold.
    k: float = 2.0

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        a = activation.float()
        flat = a.flatten(2)
        threshold = flat.mean(dim=2) + self.k * flat.std(dim=2, correction=0)
        weights = (flat > threshold[:, :, None]).float().mean(dim=2)
        cam = torch.relu(torch.einsum("nc,nchw->nhw", weights, a))
        return cam[:, None].expand(-1, targets.shape[1], -1, -1).contiguous()
