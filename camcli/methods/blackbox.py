"""What the black-box methods (RISE, D-RISE, occlusion) share: no layer, only forward passes.

They perturb the input and re-score it, so they work on any model the head can score,
including ones without a convolutional layer. ``compute`` gets the normalised input batch as
its ``activation`` and returns maps (N, T, H, W) at the input size. The perturbed inputs run
``--chunk-size`` at a time through ``CamContext.forward`` (under ``--precision``, in the
model's memory layout, under ``inference_mode``); ``progress`` counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from camcli.config import ExplainSpec
from camcli.errors import UsageError
from camcli.methods.base import CamContext, CamMethod, require_context
from camcli.methods.masks import (
    AUTO_MAX_MASKS,
    MASK_BLOCK,
    Convergence,
    MaskSet,
    check_mask_options,
    parse_masks,
)

#: Scores (c, T) of c perturbed copies of image ``i`` for its T targets.
Weigh = Callable[[torch.Tensor, int], torch.Tensor]


def target_scores(context: CamContext, batch: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The head's probabilities (softmax, sigmoid...) of ``columns`` (T,) for each input of
    ``batch``: (c, T) in float32."""
    matrix = context.forward(batch).float()
    return context.head.probabilities(matrix)[:, columns]


class BlackBoxMethod(CamMethod):
    """A method that needs no layer and no gradient (``needs_layer = False``)."""

    needs_grad = False
    needs_layer = False
    supports_eigen_smooth = False
    #: The heads it explains (None: all); ``refusal`` says what to use instead.
    heads: ClassVar[tuple[str, ...] | None] = None
    refusal: ClassVar[str] = ""
    runtime_passes = True

    def configure(self, spec: ExplainSpec, head: str, size: int) -> None:
        if self.heads is not None and head not in self.heads:
            raise UsageError(self.refusal)


class MaskedMethod(BlackBoxMethod):
    """RISE and D-RISE: ``S = sum_i w_i M_i / (N p)`` over N random masks ``M_i``
    (``camcli.methods.masks``), ``w_i`` the score of the input multiplied by ``M_i`` (in the
    normalised input, so a masked pixel has the mean colour, as the RISE code does)."""

    #: ``--mask-cells`` when not given.
    default_cells: ClassVar[int] = 7

    def configure(self, spec: ExplainSpec, head: str, size: int) -> None:
        super().configure(spec, head, size)
        self.count = parse_masks(spec.masks)
        self.cells = spec.mask_cells if spec.mask_cells is not None else self.default_cells
        self.p = float(spec.mask_p)
        check_mask_options(self.cells, self.p)
        if spec.seed < 0:
            raise UsageError(f"--seed must be 0 or more, got {spec.seed}")
        self.seed = int(spec.seed)
        self._sets: dict[tuple[int, int], MaskSet] = {}

    def extra_passes(self, channels: int, size: int) -> int:
        return self.count if self.count is not None else AUTO_MAX_MASKS

    def settings(self) -> dict[str, Any]:
        masks = "auto" if self.count is None else self.count
        return {"masks": masks, "mask_cells": self.cells, "mask_p": self.p, "seed": self.seed}

    def mask_set(self, size: tuple[int, int]) -> MaskSet:
        if size not in self._sets:
            self._sets[size] = MaskSet(self.seed, self.cells, self.p, size)
        return self._sets[size]

    def weigh(self, context: CamContext, masked: torch.Tensor, image: int,
              targets: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """The weights (c, T) of ``masked``, c masked copies of image ``image``."""
        raise NotImplementedError

    def saliency(self, context: CamContext, targets: torch.Tensor) -> tuple[torch.Tensor, list]:
        """(maps (N, T, H, W), masks used per image)."""
        batch = context.batch
        n, _, h, w = batch.shape
        masks = self.mask_set((int(h), int(w)))
        limit = self.count if self.count is not None else AUTO_MAX_MASKS
        size = max(1, int(context.chunk_size))
        maps = torch.zeros((n, targets.shape[1], h, w), device=batch.device)
        used: list[int] = []
        for i in range(n):
            total = torch.zeros((targets.shape[1], h, w), device=batch.device)
            convergence = Convergence() if self.count is None else None
            done = 0
            while done < limit:
                block_end = min(limit, done + MASK_BLOCK)
                for start in range(done, block_end, size):
                    stop = min(block_end, start + size)
                    m = masks.masks(start, stop, batch.device)
                    weights = self.weigh(context, batch[i : i + 1] * m[:, None], i, targets)
                    total += torch.einsum("ct,chw->thw", weights.float(), m)
                    if context.progress is not None:
                        context.progress(i * limit + stop, n * limit)
                done = block_end
                if convergence is not None and convergence.done(total, done):
                    break
            if context.progress is not None and done < limit:
                context.progress((i + 1) * limit, n * limit)
            maps[i] = total / (done * self.p)
            used.append(done)
        return maps, used

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        maps, used = self.saliency(context, targets)
        context.cache["details"] = [{"masks": count} for count in used]
        return maps


def record_details(context: CamContext) -> list[dict[str, Any]] | None:
    """Per image, what a black-box method adds to its records (the masks it used)."""
    return context.cache.get("details")
