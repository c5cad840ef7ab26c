"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
arXiv:1810.03292), cascading from the top.

The model's parameterised modules (those holding parameters themselves), in reverse order of
definition, head first, are re-initialised cumulatively: stage 1 re-initialises the head
alone, stage ``k`` the top ``ceil(k L / S)`` of the ``L`` modules for ``k = 1..S``, so the
last stage randomises the whole network. At each stage every image's map is computed again,
for the same class, and compared with the trained model's map by Spearman's rank
correlation

    rho = pearson(rank(M), rank(M'))   (average ranks for ties; 1 when both maps are
                                        constant, 0 when only one is)

on the raw maps at their own resolution. A method that explains the model must change when
the model does: its ``sanity_rho`` (an image's largest ``rho`` over the stages) stays well
below 1. A method whose maps barely change (an edge detector; RandomCAM, blind to the head)
fails the check: its ``sanity_rho`` is at least ``SANITY_THRESHOLD``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from camcli.models import LoadedModel

SANITY_THRESHOLD = 0.5
STAGES = 4


@dataclass(frozen=True)
class Stage:
    """One step of the cascade: how many modules are re-initialised, down to which one."""

    count: int
    deepest: str


def parameterised_modules(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters of their own, head first."""
    names = [
        name
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    return names[::-1]


def cascade(model: nn.Module, stages: int = STAGES) -> list[Stage]:
    """The head alone, then the top ``ceil(k L / stages)`` modules for ``k = 1..stages``."""
    names = parameterised_modules(model)
    if not names:
        return []
    counts = sorted({1, *(math.ceil(k * len(names) / stages) for k in range(1, stages + 1))})
    return [Stage(count, names[count - 1]) for count in counts]


def _reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh parameters: the module's own ``reset_parameters`` when it has one (under a
    seeded RNG), else every parameter redrawn from N(0, 0.02^2)."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            reset()
        return
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            draw = torch.randn(parameter.shape, generator=generator) * 0.02
            parameter.copy_(draw.to(parameter.device, parameter.dtype))


def randomised(loaded: LoadedModel, stage: Stage, seed: int = 0) -> LoadedModel:
    """A copy of ``loaded`` with the top ``stage.count`` parameterised modules re-initialised
    (the caller's model is never touched)."""
    model = copy.deepcopy(loaded.model)
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in parameterised_modules(model)[: stage.count]:
            _reinitialise(modules[name], generator)
    return replace(loaded, model=model.eval(), owned=False)


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, tied values sharing their average rank."""
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1.0) / 2.0
    ranks = torch.empty(values.shape[0], dtype=torch.float64, device=values.device)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two maps of the same shape (see the module docstring)."""
    x, y = a.flatten().double(), b.flatten().double()
    constant_x, constant_y = bool((x == x[0]).all()), bool((y == y[0]).all())
    if constant_x or constant_y:
        return 1.0 if constant_x and constant_y else 0.0
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))
