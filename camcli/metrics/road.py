"""ROAD: Remove And Debias (Rong et al. 2022, arXiv:2202.00449).

Removing pixels by setting them to a constant leaks the removed shape to the model (the
mask itself is evidence). ROAD instead *imputes* the removed pixels from their neighbours
(noisy linear imputation): each removed pixel takes the weighted mean of its 8 neighbours
(weight 1/6 for the 4 direct ones, 1/12 for the diagonals; neighbours outside the image are
left out), removed neighbours being unknowns too, so that the filled values solve the
sparse linear system, per channel,

    s_i x_i - sum_{j in N(i), removed} w_j x_j = sum_{j in N(i), kept} w_j v_j

(``s_i`` the sum of the weights of ``i``'s neighbours inside the image), plus Gaussian noise
of standard deviation ``noise`` (0.01 of the normalised input). The system is symmetric and
positive definite on every removed region that touches a kept pixel; it is solved by
conjugate gradients in float64, batched, with a 3 x 3 convolution as the matrix. A removed
region with no kept pixel at all (the whole image) is filled with zeros (the mean colour);
pytorch-grad-cam's sparse solver fails there (a singular matrix).

For a percentile ``q``, with the map ``E`` scaled to [0, 1] at the input size:

* MoRF (most relevant first) removes the pixels with ``E >= quantile_q(E)``, keeping those
  below;
* LeRF (least relevant first) removes those with ``1 - E >= quantile_q(1 - E)``.

Each scores ``p(c | imputed) - p(c | x)``, averaged over the percentiles (10, 20, ..., 90 by
default). A faithful map makes MoRF drop far (low) and LeRF stay close to zero (high); the
combined score is ``(LeRF - MoRF) / 2`` (higher is better). The same masks and system as
pytorch-grad-cam's ``ROADMostRelevantFirstAverage``, ``ROADLeastRelevantFirstAverage`` and
``ROADCombined``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from camcli.metrics.scoring import Scorer, min_max

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
NOISE = 0.01
_TOLERANCE = 1e-6  # relative residual of the conjugate gradients (scores agree to ~1e-7)
_CHECK_EVERY = 8  # iterations between convergence checks (each one syncs a GPU)
_MAX_ITERATIONS_PER_SIDE = 16  # a bound far above what CG needs on an h x w grid


def _neighbour_kernel(device: torch.device) -> torch.Tensor:
    side, corner = 1.0 / 6.0, 1.0 / 12.0
    kernel = torch.tensor(
        [[corner, side, corner], [side, 0.0, side], [corner, side, corner]],
        dtype=torch.float64,
        device=device,
    )
    return kernel.view(1, 1, 3, 3)


def impute(
    inputs: torch.Tensor,
    removed: torch.Tensor,
    noise: float = NOISE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, C, H, W) inputs with the (B, H, W) ``removed`` pixels filled by noisy linear
    imputation; kept pixels are returned unchanged."""
    b, _, h, w = inputs.shape
    kernel = _neighbour_kernel(inputs.device)

    def spread(x: torch.Tensor) -> torch.Tensor:  # sum over the in-image neighbours
        return nn.functional.conv2d(x.reshape(-1, 1, h, w), kernel, padding=1).view(b, -1, h, w)

    values = inputs.double()
    hole = removed.view(b, 1, h, w).double()
    weights = spread(torch.ones((b, 1, h, w), dtype=torch.float64, device=inputs.device))

    def matrix(x: torch.Tensor) -> torch.Tensor:  # x lives on the removed pixels only
        return hole * (weights * x - spread(x))

    rhs = hole * spread((1.0 - hole) * values)
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    power = residual.pow(2).sum(dim=(2, 3), keepdim=True)
    goal = power * _TOLERANCE**2
    for iteration in range(1, _MAX_ITERATIONS_PER_SIDE * (h + w) + 1):
        product = matrix(direction)
        curvature = (direction * product).sum(dim=(2, 3), keepdim=True)
        step = torch.where(curvature > 0, power / torch.where(curvature > 0, curvature, 1.0), 0.0)
        solution += step * direction
        residual -= step * product
        new_power = residual.pow(2).sum(dim=(2, 3), keepdim=True)
        if iteration % _CHECK_EVERY == 0 and bool((new_power <= goal).all()):
            break
        ratio = torch.where(power > 0, new_power / torch.where(power > 0, power, 1.0), 0.0)
        direction = residual + ratio * direction
        power = new_power
    filled = solution.to(inputs.dtype)
    if noise:
        draw = torch.randn(filled.shape, generator=generator, dtype=filled.dtype)
        filled = filled + noise * draw.to(filled.device) * hole.to(filled.dtype)
    return torch.where(removed.view(b, 1, h, w), filled, inputs)


def removal_masks(saliency: torch.Tensor, percentile: float, most_relevant: bool) -> torch.Tensor:
    """(N, H, W) bool: the pixels MoRF (or LeRF) removes at ``percentile``.

    The threshold is the linear-interpolation quantile of the map scaled to [0, 1] (numpy's
    default ``percentile``); pixels strictly below it are kept.
    """
    scaled = min_max(saliency)
    ranked = scaled if most_relevant else 1.0 - scaled
    flat = ranked.flatten(1)
    threshold = torch.quantile(flat, percentile / 100.0, dim=1, keepdim=True)
    return (flat >= threshold).view_as(saliency)


def road(
    scorer: Scorer,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    classes: torch.Tensor,
    original: torch.Tensor,
    percentiles: Sequence[float] = PERCENTILES,
    noise: float = NOISE,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``road_morf``, ``road_lerf`` and ``road_combined``, each (N,) float64.

    The imputation noise comes from a CPU generator seeded with ``seed``, so a run repeats
    exactly on any device.
    """
    generator = torch.Generator().manual_seed(seed)
    before = original.double()
    averages: dict[str, torch.Tensor] = {}
    for name, most in (("road_morf", True), ("road_lerf", False)):
        changes = []
        for percentile in percentiles:
            removed = removal_masks(saliency, percentile, most)

            def build(part: slice, removed: torch.Tensor = removed) -> tuple:
                return impute(inputs[part], removed[part], noise, generator), classes[part]

            after = scorer.run(inputs.shape[0], build).to(before.device).double()
            changes.append(after - before)
        averages[name] = torch.stack(changes).mean(dim=0)
    averages["road_combined"] = (averages["road_lerf"] - averages["road_morf"]) / 2
    return averages
