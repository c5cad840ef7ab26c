"""Deletion and insertion (Petsiuk et al. 2018, "RISE", arXiv:1806.07421).

Positions of the input are ranked by the map, most salient first (ties in raster order).
*Deletion* replaces the top-ranked positions by a baseline (zeros of the normalised input,
that is the dataset's mean colour), a growing fraction at a time, and follows the class
probability down; *insertion* starts from the baseline and restores the top-ranked positions
from the image. Both are the area under the probability curve over the fraction perturbed,
by the trapezoidal rule:

    AUC = sum_k (f_{k+1} - f_k) (p_k + p_{k+1}) / 2,   f_k = n_k / P

with ``n_k`` in ``0, s, 2s, ..., P`` (``s = ceil(P / steps)``) of the ``P = H W`` positions.
A faithful map gives a low deletion AUC and a high insertion AUC. The same steps, ranking
and baseline as torchcam 0.5.0's ``DeletionInsertionMetric``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camcli.metrics.scoring import Scorer

DELETION, INSERTION, ALL_BASELINE = 0, 1, 2


@dataclass
class Curves:
    """``fractions`` (K,) and the probability curves (N, K) of N images."""

    fractions: torch.Tensor
    deletion: torch.Tensor
    insertion: torch.Tensor

    def auc(self, curve: torch.Tensor) -> torch.Tensor:
        """(N,) trapezoidal areas under ``curve`` over ``fractions``, in float64."""
        return torch.trapezoid(curve.double(), self.fractions.double(), dim=1)


def perturbed_counts(positions: int, steps: int) -> list[int]:
    """``0, s, 2s, ..., positions`` with ``s = ceil(positions / steps)``: at most ``steps``
    intervals, the last one possibly shorter."""
    step = -(-positions // steps)
    return [*range(0, positions, step), positions]


def ranks_of(saliency: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, H*W): each position's rank, 0 for the most salient (stable ties)."""
    order = torch.argsort(saliency.flatten(1), dim=1, descending=True, stable=True)
    return torch.argsort(order, dim=1)


def deletion_insertion(
    scorer: Scorer,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    classes: torch.Tensor,
    original: torch.Tensor,
    steps: int = 20,
    baseline: torch.Tensor | None = None,
) -> Curves:
    """The deletion and insertion curves of N images.

    ``inputs`` (N, 3, H, W) normalised, ``saliency`` (N, H, W) at the input size, ``classes``
    (N,) and ``original`` (N,) their unperturbed probabilities (the curves' ends). The
    all-baseline input, deletion's last point and insertion's first, is scored once per
    image; with one baseline for all images (``None``: zeros, or a (1, 3, H, W) tensor) it is
    the same input for every image, so one pass serves the whole batch (each image reads its
    own class from that pass's distribution).
    """
    n = inputs.shape[0]
    positions = inputs.shape[2] * inputs.shape[3]
    counts = perturbed_counts(positions, steps)
    ranks = ranks_of(saliency)
    base = torch.zeros_like(inputs) if baseline is None else baseline.expand_as(inputs)
    flat_inputs, flat_base = inputs.flatten(2), base.flatten(2)
    shared = baseline is None or baseline.shape[0] == 1 or n == 1
    jobs = [
        (i, kind, point, count)
        for i in range(n)
        for kind, point, count in [
            *([] if shared else [(ALL_BASELINE, len(counts) - 1, positions)]),
            *((k, p, c) for p, c in enumerate(counts[1:-1], 1) for k in (DELETION, INSERTION)),
        ]
    ]
    device = inputs.device
    images = torch.tensor([j[0] for j in jobs], device=device)
    kinds = torch.tensor([j[1] for j in jobs], device=device)
    amounts = torch.tensor([j[3] for j in jobs], device=device)

    def build(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        rows = images[part]
        top = ranks[rows] < amounts[part, None]  # the positions perturbed so far
        keep = torch.where((kinds[part] == INSERTION)[:, None], top, ~top)
        mixed = torch.where(keep[:, None], flat_inputs[rows], flat_base[rows])
        return mixed.view(-1, *inputs.shape[1:]), classes[rows]

    scores = scorer.run(len(jobs), build).to(device)
    deletion = original.new_empty((n, len(counts)), dtype=torch.float32)
    insertion = torch.empty_like(deletion)
    deletion[:, 0] = original
    insertion[:, -1] = original
    if shared and n:
        blank = scorer.distributions(base[:1])[0].to(device)[classes]
        deletion[:, -1] = blank
        insertion[:, 0] = blank
    for (i, kind, point, _), score in zip(jobs, scores.tolist(), strict=True):
        if kind == ALL_BASELINE:
            deletion[i, point] = score
            insertion[i, 0] = score
        elif kind == DELETION:
            deletion[i, point] = score
        else:
            insertion[i, point] = score
    fractions = torch.tensor(counts, dtype=torch.float64, device=device) / positions
    return Curves(fractions=fractions, deletion=deletion, insertion=insertion)
