"""Perturbed inputs -> the model's confidence in each image's class, through the fast engine.

Every metric asks the same question of many perturbed copies of an image: how likely is the
explained class now? The copies go through the explainer's own forward (channels-last,
batch norms folded, ``--precision`` autocast) in chunks of ``--chunk-size``, built one chunk
at a time so that memory stays bounded whatever the number of copies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from camcli.explain import Explainer

#: (inputs, classes) for the copies ``start:stop`` of a job.
Build = Callable[[slice], tuple[torch.Tensor, torch.Tensor]]


class Scorer:
    """``p(c | x) = softmax(f(x))_c`` for batches of inputs ``x`` and classes ``c``.

    ``passes`` hears how many forward passes were run (for the progress bar).
    """

    def __init__(
        self,
        explainer: Explainer,
        chunk_size: int = 32,
        passes: Callable[[int], None] | None = None,
    ) -> None:
        self.explainer = explainer
        self.chunk_size = max(1, int(chunk_size))
        self.passes = passes

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs -> (B, C) float32 ``f(x)`` (the head's scores), one pass."""
        with torch.inference_mode():
            # The explainer's forward-only passes: on its runtime, else eval mode,
            # channels-last, autocast.
            logits = self.explainer.scores(inputs).float()
        if self.passes is not None:
            self.passes(int(inputs.shape[0]))
        return logits

    def distributions(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs -> (B, C) float32 ``softmax(f(x))``, one pass."""
        logits = self.logits(inputs)
        with torch.inference_mode():
            return torch.softmax(logits, dim=1)

    def probabilities(self, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) inputs and (B,) classes -> (B,) float32 probabilities, one pass."""
        return self.distributions(inputs).gather(1, classes.view(-1, 1)).view(-1)

    def run(self, count: int, build: Build) -> torch.Tensor:
        """Probabilities of ``count`` copies, ``build(slice)`` making each chunk on demand."""
        parts = []
        for start in range(0, count, self.chunk_size):
            inputs, classes = build(slice(start, min(count, start + self.chunk_size)))
            parts.append(self.probabilities(inputs, classes))
        if not parts:
            return torch.zeros(0)
        return torch.cat(parts)


def at_input_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) maps -> (N, H, W), bilinear with pixel centres aligned (``align_corners=False``),
    as torchcam and pytorch-grad-cam resize maps onto their inputs."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return nn.functional.interpolate(
        maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False
    ).squeeze(1)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """``(M - min M) / (max M - min M)`` per map, in [0, 1]; a constant map becomes zeros.

    torchcam's normalisation; torchcam turns a constant map into NaN and drops the image,
    here it stays in the average as a blank map.
    """
    flat = maps.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1.0), 0.0)
    return scaled.view_as(maps)
