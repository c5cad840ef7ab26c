"""An Evaluation -> the table (one row per method), the JSON object, the CSV text."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from rich.table import Table

from camcli.evaluate.runner import FAMILIES, HIGHER_IS_BETTER, Evaluation, MethodResult
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


def report_json(evaluation: Evaluation) -> dict[str, Any]:
    """The ``--json`` object: model, images, per method its metrics and mean curves; then the
    settings, the sanity stages and the images that could not be read."""
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
            "chunk_size": s.chunk_size,
            "precision": s.precision,
            "layers": {result.name: result.layers for result in evaluation.results},
        },
        "sanity": sanity,
        "errors": [{"input": path, "error": message} for path, message in evaluation.errors],
    }


def _cell(summary: dict[str, Any]) -> str:
    if summary["mean"] is None:
        return "n/a"
    return f"{summary['mean']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}]"


def table(evaluation: Evaluation) -> Table:
    """One row per method: each metric's mean and [95% interval]; arrows say which way is
    better; the sanity column says pass or fail."""
    names = metric_names(evaluation)
    count = len(evaluation.items)
    grid = Table(
        title=f"{evaluation.model}: {count} image{'s' * (count != 1)}, mean [95% interval]",
        box=None,
    )
    grid.add_column("method", overflow="fold")
    for name in names:
        arrow = "↑" if HIGHER_IS_BETTER[name] else "↓"
        grid.add_column(f"{name} {arrow}", justify="right", overflow="fold")
    if "sanity_rho" in names:
        grid.add_column("sanity")
    for result in evaluation.results:
        found = summaries(evaluation, result)
        row = [result.name, *(_cell(found[name]) for name in names)]
        if "sanity_rho" in names:
            row.append({True: "pass", False: "FAIL", None: "-"}[result.sane])
        grid.add_row(*row)
    return grid


def report_csv(evaluation: Evaluation) -> str:
    """One row per method: ``method`` then ``<metric>_mean, _low, _high`` for each metric."""
    names = metric_names(evaluation)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", *(f"{n}_{part}" for n in names for part in ("mean", "low", "high"))])
    for result in evaluation.results:
        found = summaries(evaluation, result)
        cells = []
        for name in names:
            cells += [
                "" if found[name][p] is None else repr(found[name][p])
                for p in ("mean", "low", "high")
            ]
        writer.writerow([result.name, *cells])
    return out.getvalue()
