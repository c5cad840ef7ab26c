"""Score-CAM and its smoothed variants: channels weighted by the score of the input they mask.

Every channel ``k`` of the layer gives a mask: its map min-max normalised at the layer's
resolution, upsampled bilinearly (``align_corners=False``) to the input size. The model
scores the input times each mask; all those passes run batched in chunks of ``chunk_size``
under ``torch.inference_mode`` (the explainer's mode for gradient-free methods), one chunk
covering many (image, channel) pairs at once.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from camcli.methods.base import CamContext, CamMethod, require_context, weighted_maps

_EPS = 1e-8


def normalised_masks(activation: torch.Tensor) -> torch.Tensor:
    """Per-channel ``(A_k - min A_k) / (max A_k - min A_k + eps)`` at layer resolution."""
    flat = activation.float().flatten(2)
    low = flat.amin(dim=2)[:, :, None, None]
    high = flat.amax(dim=2)[:, :, None, None]
    return (activation.float() - low) / (high - low + _EPS)


class ScoreCAM(CamMethod):
    """``M_c = ReLU(sum_k w_k A_k)``, ``w = softmax_k(S_c(X * U(A_k)) - S_c(X))``.

    Wang et al. 2020, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", arXiv:1910.01279. ``U(A_k)`` is the normalised, upsampled mask above and ``S_c``
    the class logit; the baseline ``S_c(X)`` is one constant per image, so it cancels in the
    softmax and is not computed. Cost: one forward pass per channel and image.
    """

    name = "scorecam"
    needs_grad = False
    #: Passes per channel (the smoothed variants average several).
    samples: ClassVar[int] = 1
    runtime_passes = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.generator: torch.Generator | None = None

    def extra_passes(self, channels: int, size: int) -> int:
        return self.samples * channels

    def masked_inputs(self, batch: torch.Tensor, masks: torch.Tensor, images: torch.Tensor,
                      sample: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The inputs for one chunk: ``masks`` (k, 1, h, w) at layer resolution; ``images``,
        ``sample`` and ``pair`` (k,) give each row's image, sample and ``image * C + channel``."""
        upsampled = nn.functional.interpolate(
            masks, size=batch.shape[-2:], mode="bilinear", align_corners=False
        )
        return batch[images] * upsampled

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        n, c = activation.shape[:2]
        masks = normalised_masks(activation).flatten(0, 1)[:, None]  # (N*C, 1, h, w)
        device = activation.device
        scores = torch.zeros(n * c, targets.shape[1], device=device)
        self.generator = torch.Generator(device=device).manual_seed(0)
        batch = context.batch.to(device)
        for rows in context.chunks(self.samples * n * c):
            index = torch.arange(rows.start, rows.stop, device=device)
            sample, pair = index // (n * c), index % (n * c)
            images = pair // c
            inputs = self.masked_inputs(batch, masks[pair], images, sample, pair)
            chunk_logits = context.forward(inputs).float()
            scores.index_add_(0, pair, chunk_logits.gather(1, targets[images]))
        weights = torch.softmax(scores.view(n, c, -1) / self.samples, dim=1)
        return weighted_maps(weights, activation, context.eigen_smooth)


class SSCAM(ScoreCAM):
    """Score-CAM with noisy masks: ``w = softmax_k(1/N sum_i S_c(X * (U(A_k) + d_i)) - S_c(X))``,
    ``d_i ~ Normal(0, std^2)`` per input pixel, ``N = 35``, ``std = 2`` (torchcam's defaults).

    Wang et al. 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization",
    arXiv:2006.14255. The noise comes from a generator seeded with 0 for each batch, so a run
    is reproducible. Cost: 35 forward passes per channel and image.
    """

    name = "sscam"
    samples = 35
    std: float = 2.0

    def noise(self, shape: torch.Size, sample: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """Noise for one chunk's masks at input resolution, (k, 1, H, W)."""
        return torch.randn(shape, generator=self.generator, device=pair.device) * self.std

    def masked_inputs(self, batch: torch.Tensor, masks: torch.Tensor, images: torch.Tensor,
                      sample: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:  # fmt: skip
        upsampled = nn.functional.interpolate(
            masks, size=batch.shape[-2:], mode="bilinear", align_corners=False
        )
        return batch[images] * (upsampled + self.noise(upsampled.shape, sample, pair))


class ISCAM(ScoreCAM):
    """Integrated Score-CAM: ``w = softmax_k(1/N sum_i S_c(a_i X * U(A_k)) - S_c(X))`` with
    ``a_i = sum_{j<=i} j/N`` for ``i = 1..N``, ``N = 10``.

    Naidu et al. 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    arXiv:2010.03023. The coefficients follow torchcam (a cumulative sum, so later passes
    scale the masked input above 1). Cost: 10 forward passes per channel and image.
    """

    name = "iscam"
    samples = 10

    def masked_inputs(self, batch: torch.Tensor, masks: torch.Tensor, images: torch.Tensor,
                      sample: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:  # fmt: skip
        step = (sample + 1).float()
        coefficient = (step * (step + 1) / (2 * self.samples))[:, None, None, None]
        return super().masked_inputs(batch, masks, images, sample, pair) * coefficient
