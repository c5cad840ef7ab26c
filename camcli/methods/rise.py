"""RISE (Petsiuk et al. 2018): random masks weighted by the class score of what they show."""

from __future__ import annotations

import torch

from camcli.methods.base import CamContext
from camcli.methods.blackbox import MaskedMethod, target_scores


class RISE(MaskedMethod):
    """``S_c = 1 / (N p) sum_i P_c(I * M_i) M_i`` over N random masks ``M_i``.

    Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box
    Models", arXiv:1806.07421, eq. 6: the Monte Carlo estimate of ``E[P_c(I * M) | M(x) = 1]``
    with ``E[M] = p``. ``P_c`` is the head's probability of class c (softmax for a classifier,
    as the paper; sigmoid for binary and multi-label heads). ``M_i`` are ``MaskSet``'s:
    ``--mask-cells`` s x s binary grids (default 7), each cell on with probability
    ``--mask-p`` p, upsampled bilinearly and shifted at random. ``--masks`` N (default 4000),
    or ``auto``: blocks of 250 masks until the map correlates at least 0.98 with the map at
    half as many (1000 to 8000 masks; ``camcli.methods.masks.Convergence``). ``I * M_i`` multiplies the normalised input, so a
    masked pixel has the mean colour. Every image is explained with the same masks
    (``--seed``), so its map does not depend on the batch it is in. No layer, no gradient:
    the map is at the input size. N forward passes per image.
    """

    name = "rise"
    heads = ("softmax", "binary", "multilabel", "segmentation")
    refusal = "rise explains classifiers; for a detector use --method drise (one map per box)"

    def weigh(self, context: CamContext, masked: torch.Tensor, image: int,
              targets: torch.Tensor) -> torch.Tensor:  # fmt: skip
        return target_scores(context, masked, targets[image])
