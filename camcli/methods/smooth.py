"""Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with gradients averaged over noisy inputs."""

from __future__ import annotations

import torch

from camcli.methods.base import CamContext, CamMethod, require_context, weighted_maps


class SmoothGradCAMPlusPlus(CamMethod):
    """``M_c = ReLU(sum_k w_k A_k)``, ``w_k = sum_ij alpha_kij ReLU(D1_kij)``,
    ``alpha = D2 / (2 D2 + D3 sum_ab A_kab)``, where ``Dp = 1/N sum_n (dS_c/dA (X + e_n))^p``
    over ``N = 4`` noisy copies, ``e_n ~ Normal(0, 0.3^2)`` on the normalised input.

    Omeiza et al. 2019, "Smooth Grad-CAM++: An Enhanced Inference Level Visualization
    Technique for Deep Convolutional Neural Network Models", arXiv:1908.01224. ``A`` is the
    clean image's activation; with no noise this is exactly Grad-CAM++. The noisy passes run
    in chunks of ``chunk_size`` images with autograd from the layer on; the noise comes from a
    generator seeded with 0 for each batch, so a run is reproducible. (torchcam keeps the
    last noisy pass's gradient for ``D1`` and its activation for ``A``.)
    """

    name = "smoothgradcam++"
    needs_grad = True
    samples: int = 4
    std: float = 0.3

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        clean = activation.detach().float()
        n, count = clean.shape[0], targets.shape[1]
        sums = torch.zeros(3, count, *clean.shape, device=clean.device)  # D1, D2, D3 per target
        batch = context.batch.detach().to(clean.device)
        generator = torch.Generator(device=clean.device).manual_seed(0)
        for rows in context.chunks(self.samples * n):
            images = torch.arange(rows.start, rows.stop, device=clean.device) % n
            noise = torch.randn(
                (len(images), *batch.shape[1:]), generator=generator, device=clean.device
            )
            noisy_activation, noisy_logits = context.record(batch[images] + noise * self.std, True)
            for t in range(count):
                score = noisy_logits.gather(1, targets[images, t : t + 1]).sum()
                (grads,) = torch.autograd.grad(score, noisy_activation, retain_graph=t < count - 1)
                grads = grads.detach().float()
                for power in range(3):
                    sums[power, t].index_add_(0, images, grads.pow(power + 1))
        d1, d2, d3 = (sums / self.samples).unbind(0)  # each (T, N, C, h, w)
        denominator = 2 * d2 + d3 * clean.sum(dim=(2, 3), keepdim=True)
        valid = (d2 != 0) & (denominator != 0)
        alpha = torch.where(valid, d2 / torch.where(valid, denominator, 1.0), 0.0)
        weights = (alpha * torch.relu(d1)).sum(dim=(3, 4))  # (T, N, C)
        return weighted_maps(weights.permute(1, 2, 0), clean, context.eigen_smooth)
