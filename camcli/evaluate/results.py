"""An Evaluation -> the object of its results: per method each metric's mean, 95% interval,
per-image values and why a number is missing; the mean curves; the settings; the sanity
stages; the images that could not be evaluated. ``camcli evaluate`` prints it (``--json``),
lays it out as a table or CSV rows, and the HTML page (``camcli.report.evaluation``) reads it.
"""

from __future__ import annotations

import math
from typing import Any

from camcli.evaluate.measure import FAMILIES, Evaluation, MethodResult
from camcli.machine_output import NOT_FINITE
from camcli.metrics.sanity import SANITY_THRESHOLD
from camcli.metrics.stats import interval


def metric_names(evaluation: Evaluation) -> list[str]:
    """The metrics computed, in table order (pointing only when some image had boxes)."""
    names = []
    for family in evaluation.settings.families:
        if family == "pointing" and not any(item.boxes for item in evaluation.items):
            continue
        names += FAMILIES[family]
    return names


def _summary(values: list[float | None], images: int, seed: int) -> dict[str, Any]:
    """``{mean, low, high, values, reason}`` of one metric: a value that is not finite (the
    model's output on a perturbed input was not) is null and left out of the mean, and
    ``reason`` says why a number is null (None when none is, or only those of images the
    metric does not apply to)."""
    finite = [v if v is None or math.isfinite(v) else None for v in values]
    bad = sum(v is not None and not math.isfinite(v) for v in values)
    found = interval(finite, seed)
    reason = None
    if not images:
        reason = "no image was evaluated"
    elif bad:
        reason = (
            f"{bad} of {len(values)} values are {NOT_FINITE}, left out of the mean (the "
            "model's output on a perturbed input?)"
        )
    elif found["mean"] is None:
        reason = "no evaluated image has a value"
    return {**found, "values": finite, "reason": reason}


def summaries(evaluation: Evaluation, result: MethodResult) -> dict[str, dict[str, Any]]:
    """``{metric: {mean, low, high, values, reason}}`` for one method (``_summary``)."""
    seed, images = evaluation.settings.seed, len(evaluation.items)
    return {name: _summary(result.values[name], images, seed) for name in metric_names(evaluation)}


def results_dict(evaluation: Evaluation) -> dict[str, Any]:
    """The ``--json`` object: model, images, per method its metrics (``summaries``, in
    ``metric_names`` order) and mean curves; then the settings, the sanity stages and the
    images that could not be evaluated."""
    s = evaluation.settings
    methods = {
        result.name: {"metrics": summaries(evaluation, result), "curves": result.curves}
        for result in evaluation.results
    }
    sanity = {
        result.name: {"passed": result.sane, "stages": result.stages}
        for result in evaluation.results
        if result.stages
    }
    return {
        "model": evaluation.model,
        "images": [item.source.rel.as_posix() for item in evaluation.items],
        "methods": methods,
        "settings": {
            "metrics": list(s.families),
            "steps": s.steps,
            "baseline": "zeros (the normalised input's mean colour)",
            "score": "softmax probability of the explained class",
            "target": s.target.tag,
            "road_percentiles": list(s.percentiles),
            "road_noise": s.noise,
            "sanity_stages": s.stages,
            "sanity_threshold": SANITY_THRESHOLD,
            "seed": s.seed,
            "batch_size": s.batch_size,
            "chunk_size": s.explain.chunk_size,
            "precision": s.explain.precision,
            "layers": {result.name: result.layers for result in evaluation.results},
            "runtime": {result.name: result.runtime for result in evaluation.results},
        },
        "sanity": sanity,
        "errors": [{"input": path, "error": message} for path, message in evaluation.errors],
    }
