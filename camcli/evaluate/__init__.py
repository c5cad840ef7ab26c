"""``camcli evaluate``: how faithful each method's maps are, measured on a folder of images.

The flow: ``prepare`` (the options checked, the model loaded, the images read as the model
sees them), then ``evaluate_methods`` in ``measure`` (each method's maps -> every metric
family's per-image values), whose ``Evaluation`` ``results`` turns into the object the
command prints, lays out and pages; ``plots`` draws its curves as PNG. The metrics
themselves live in ``camcli.metrics``: ``deletion`` (RISE deletion and insertion AUC),
``confidence`` (average drop, increase in confidence), ``road`` (ROAD MoRF, LeRF and
combined), ``sanity`` (cascading model randomisation), ``maps`` (pointing game and energy),
``scoring`` (the perturbed inputs through the explainer's engine) and ``stats`` (means and
95% intervals).

Nothing here prints or writes a result: what happens along the way reaches the caller
through the callbacks it passes (``on_error``, ``passes``, ``advance``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from camcli.check.spec import read_boxes
from camcli.config import CPU_BATCH_SIZE, ExplainSpec, ModelSpec
from camcli.errors import UsageError
from camcli.evaluate.measure import (
    FAMILIES,
    HIGHER_IS_BETTER,
    Evaluation,
    Item,
    MethodResult,
    Settings,
    evaluate_methods,
    load_items,
)
from camcli.evaluate.results import metric_names, results_dict
from camcli.explain import parse_targets
from camcli.methods import get_method_class
from camcli.models import LoadedModel, load_model
from camcli.sources import collect_sources
from camcli.startup import resume_gc

__all__ = [
    "FAMILIES",
    "HIGHER_IS_BETTER",
    "Evaluation",
    "Item",
    "MethodResult",
    "Prepared",
    "Settings",
    "check_options",
    "evaluate_methods",
    "load_items",
    "metric_names",
    "prepare",
    "results_dict",
]


@dataclass
class Prepared:
    """What ``evaluate_methods`` needs: the model, the images read (and ``(input, error)`` for
    those that were not), the methods and the settings."""

    loaded: LoadedModel
    methods: tuple[str, ...]
    items: list[Item]
    errors: list[tuple[str, str]]
    settings: Settings


def check_options(
    methods: Sequence[str],
    explain: ExplainSpec,
    families: Sequence[str] = tuple(FAMILIES),
    steps: int = 20,
    stages: int = 4,
) -> None:
    """Raise UsageError (exit 2) for an unknown method or metric family, steps or stages under
    one, or more than one target: evaluate explains one class per image."""
    for method in methods:
        get_method_class(method)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r} (use {', '.join(FAMILIES)})")
    if steps < 1:
        raise UsageError("--steps must be at least 1")
    if stages < 1:
        raise UsageError("--sanity-stages must be at least 1")
    if len(explain.targets) > 1:
        raise UsageError("evaluate explains one target: give --target once")


def prepare(
    paths: Sequence[str],
    methods: Sequence[str],
    model: ModelSpec,
    explain: ExplainSpec,
    *,
    families: Sequence[str] = tuple(FAMILIES),
    steps: int = 20,
    stages: int = 4,
    seed: int = 0,
    batch_size: int = CPU_BATCH_SIZE,
    boxes: Path | None = None,
    progress: bool = False,
    on_error: Callable[[str], None] | None = None,
) -> Prepared:
    """Check the options (``check_options``), read ``boxes`` (a ``camcli check`` spec's cases),
    list the images in ``paths`` (``-`` reads them from stdin), load the model (``progress``:
    show a download's progress), parse the target and read every image as the model sees it;
    ``on_error`` hears of each image that cannot be read, which is left out.

    ``explain`` holds what every method shares (its method is replaced by each of
    ``methods``); ``batch_size`` may be ``camcli.engines.batchsize.AUTO``.
    """
    check_options(methods, explain, families, steps, stages)
    box_table = read_boxes(boxes) if boxes is not None else None
    sources = collect_sources(paths, sys.stdin)
    loaded = load_model(model, progress=progress)
    (target,) = parse_targets(list(explain.targets), None, loaded.labels, loaded.num_classes)
    settings = Settings(
        families=tuple(dict.fromkeys(families)),
        steps=steps,
        stages=stages,
        seed=seed,
        batch_size=batch_size,
        explain=explain,
        target=target,
    )
    resume_gc()
    items, errors = load_items(sources, loaded, box_table, model.max_pixels, on_error)
    return Prepared(loaded, tuple(methods), items, errors, settings)
