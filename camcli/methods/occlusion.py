"""Occlusion (Zeiler & Fergus 2014): the score drop when a sliding window hides the input."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from camcli.config import ExplainSpec
from camcli.errors import UsageError
from camcli.methods.base import CamContext, require_context
from camcli.methods.blackbox import BlackBoxMethod, target_scores


def window_starts(length: int, window: int, stride: int) -> torch.Tensor:
    """Where the windows start along one axis: ``0, stride, ...`` for ``ceil((length -
    window) / stride) + 1`` windows (captum's count); the last may overhang and is clipped."""
    return torch.arange(math.ceil((length - window) / stride) + 1) * stride


def window_sums(
    values: torch.Tensor, window: int, stride: int, size: tuple[int, int]
) -> torch.Tensor:
    """(T, nh, nw) values per window position -> (T, H, W): at each pixel the sum over the
    windows that cover it (a transposed convolution with a ones kernel, clipped to ``size``)."""
    kernel = torch.ones((1, 1, window, window), device=values.device, dtype=values.dtype)
    spread = nn.functional.conv_transpose2d(values[:, None], kernel, stride=stride)[:, 0]
    return spread[:, : size[0], : size[1]]


class Occlusion(BlackBoxMethod):
    """``M_c(x) = mean over the windows W covering x of P_c(I) - P_c(I with W = b)``.

    Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks",
    arXiv:1311.2901, section 4.2: a ``--window`` w x w square (all channels) set to
    ``--baseline`` b (in the normalised input: 0, the default, is the mean colour) slides in
    steps of ``--stride`` s; ``P_c`` is the head's probability of the class (softmax for a
    classifier, as the paper's figures). Exactly captum's ``Occlusion`` with
    ``sliding_window_shapes=(3, w, w)``, ``strides=(3, s, s)`` and a forward function giving
    the probabilities: ``ceil((H - w) / s) + 1`` positions per axis, the last clipped at the
    border, each pixel's value the mean drop of the windows that cover it (signed: a window
    that raises the score gives a negative value). ``(ceil((H - w) / s) + 1)^2`` forward
    passes per image, ``--chunk-size`` at a time.
    """

    name = "occlusion"

    def configure(self, spec: ExplainSpec, head: str, size: int) -> None:
        super().configure(spec, head, size)
        self.window, self.stride, self.baseline = spec.window, spec.stride, float(spec.baseline)
        if self.window < 1:
            raise UsageError(f"--window must be at least 1, got {self.window}")
        if self.stride < 1:
            raise UsageError(f"--stride must be at least 1, got {self.stride}")
        if self.window > size:
            raise UsageError(f"--window {self.window} is larger than the {size} px model input")
        if self.stride > self.window:
            raise UsageError(
                f"--stride {self.stride} is larger than --window {self.window}: some pixels "
                "would be under no window"
            )

    def extra_passes(self, channels: int, size: int) -> int:
        return len(window_starts(size, self.window, self.stride)) ** 2

    def settings(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "baseline": self.baseline}

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        batch = context.batch
        n, _, h, w = batch.shape
        device = batch.device
        rows = window_starts(h, self.window, self.stride).to(device)
        cols = window_starts(w, self.window, self.stride).to(device)
        tops = rows.repeat_interleave(len(cols))  # position p = row-major over (rows, cols)
        lefts = cols.repeat(len(rows))
        positions = len(tops)
        ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
        base = context.head.probabilities(logits.detach().float())
        size = max(1, int(context.chunk_size))
        maps = torch.zeros((n, targets.shape[1], h, w), device=device)
        count = window_sums(torch.ones((1, len(rows), len(cols)), device=device),
                            self.window, self.stride, (h, w))  # fmt: skip
        for i in range(n):
            drops = torch.empty((positions, targets.shape[1]), device=device)
            for start in range(0, positions, size):
                stop = min(positions, start + size)
                top, left = tops[start:stop, None], lefts[start:stop, None]
                inside_rows = (ys >= top) & (ys < top + self.window)  # (c, H)
                inside_cols = (xs >= left) & (xs < left + self.window)  # (c, W)
                hidden = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
                occluded = torch.where(hidden, self.baseline, batch[i : i + 1])
                scores = target_scores(context, occluded, targets[i])
                drops[start:stop] = base[i, targets[i]] - scores
                if context.progress is not None:
                    context.progress(i * positions + stop, n * positions)
            grid = drops.t().reshape(targets.shape[1], len(rows), len(cols))
            maps[i] = window_sums(grid, self.window, self.stride, (h, w)) / count
        return maps
