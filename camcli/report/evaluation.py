"""The page of a ``camcli evaluate`` result: the metric table and the deletion/insertion curves.

``result`` is the command's ``--json`` object::

    {"model": str, "images": [relative paths],
     "methods": {NAME: {"metrics": {METRIC: {"mean", "low", "high", "values": [per image],
                                             "reason"}},
                        "curves": {"deletion": [[fraction, score], ...], "insertion": [...]}}}}

The table has one row per method and one column per metric, ``mean`` over the images and its
interval ``[low, high]``; the per-image values follow in a folded table. Each curve kind is an
inline SVG (no plotting library, nothing loaded): fraction of pixels on x from 0 to 1, the
score on y from 0 to the largest score, one polyline per method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from camcli.report.page import esc, page
from camcli.writers import write_atomic

# Colour-blind-safe (Okabe-Ito), in order; methods past the eighth reuse them.
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000")
WIDTH, HEIGHT = 420, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 34


def _number(value: Any) -> str:
    """A value as the page shows it; "n/a" where there is none (null in the JSON: the metric
    does not apply, or its value is not finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.4g}"


def _metric_names(methods: dict[str, Any]) -> list[str]:
    names: dict[str, None] = {}
    for info in methods.values():
        names.update(dict.fromkeys((info.get("metrics") or {}).keys()))
    return list(names)


def metric_table(methods: dict[str, Any]) -> str:
    """One row per method; each cell ``mean`` and, below it, ``[low, high]``."""
    names = _metric_names(methods)
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    rows = []
    for method, info in methods.items():
        cells = []
        for name in names:
            metric = (info.get("metrics") or {}).get(name) or {}
            interval = f"[{_number(metric.get('low'))}, {_number(metric.get('high'))}]"
            cells.append(
                f'<td><span class="mean">{esc(_number(metric.get("mean")))}</span>'
                f'<br><span class="interval">{esc(interval)}</span></td>'
            )
        rows.append(f"<tr><th>{esc(method)}</th>{''.join(cells)}</tr>")
    return (
        f'<table id="metrics"><thead><tr><th>method</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def values_table(methods: dict[str, Any], images: Sequence[str]) -> str:
    """Per metric, the value of each image under each method (folded)."""
    parts = []
    for name in _metric_names(methods):
        head = "".join(f"<th>{esc(m)}</th>" for m in methods)
        columns = [
            ((info.get("metrics") or {}).get(name) or {}).get("values") or []
            for info in methods.values()
        ]
        count = max([len(images), *(len(c) for c in columns)])
        rows = []
        for i in range(count):
            image = images[i] if i < len(images) else f"image {i}"
            cells = "".join(
                f"<td>{esc(_number(c[i] if i < len(c) else None))}</td>" for c in columns
            )
            rows.append(f"<tr><td>{esc(image)}</td>{cells}</tr>")
        parts.append(
            f"<details><summary>{esc(name)} per image</summary><table>"
            f"<thead><tr><th>image</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></details>"
        )
    return "".join(parts)


def _points(curve: Any) -> list[tuple[float, float]]:
    points = []
    for pair in curve or ():
        try:
            x, y = float(pair[0]), float(pair[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            points.append((x, y))
    return points


def curve_svg(kind: str, methods: dict[str, Any]) -> str:
    """An inline SVG of the ``kind`` curves (``deletion``, ``insertion``) of every method:
    x = fraction of pixels deleted or inserted (0..1), y = the class score (0..top)."""
    curves = {m: _points((info.get("curves") or {}).get(kind)) for m, info in methods.items()}
    top = max([y for points in curves.values() for _, y in points] + [0.0])
    top = top if top > 0 else 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + min(max(x, 0.0), 1.0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h * (1.0 - min(max(y / top, 0.0), 1.0))

    parts = [
        f'<svg class="curve" id="curve-{esc(kind)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{esc(kind)} curves">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    for tick in (0.0, 0.5, 1.0):
        x, y = sx(tick), sy(tick * top)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">{tick:g}</text>'
        )
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{_number(tick * top)}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"fraction of pixels {'deleted' if kind == 'deletion' else 'inserted'}</text>"
    )
    for i, (method, points) in enumerate(curves.items()):
        if not points:
            continue
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        colour = COLOURS[i % len(COLOURS)]
        parts.append(
            f'<polyline class="method" data-method="{esc(method)}" points="{line}" '
            f'fill="none" stroke="{colour}" stroke-width="2"><title>{esc(method)}</title>'
            "</polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def legend(methods: dict[str, Any]) -> str:
    items = "".join(
        f'<li><span style="color:{COLOURS[i % len(COLOURS)]}">&#9632;</span> {esc(m)}</li>'
        for i, m in enumerate(methods)
    )
    return f'<ul class="legend">{items}</ul>'


def build_evaluation_page(result: dict[str, Any]) -> str:
    methods = result.get("methods") or {}
    images = [str(i) for i in result.get("images") or ()]
    model = str(result.get("model", "?"))
    title = f"camcli evaluate: {model}"
    kinds: dict[str, None] = {}
    for info in methods.values():
        kinds.update(dict.fromkeys((info.get("curves") or {}).keys()))
    curves = "".join(
        f'<figure class="plot"><figcaption>{esc(kind)}</figcaption>{curve_svg(kind, methods)}'
        "</figure>"
        for kind in kinds
    )
    body = (
        f"<header><h1>{esc(title)}</h1><p>{len(images)} images, {len(methods)} methods; "
        "each cell: the mean over the images, and below it the interval [low, high]</p>"
        f'</header>\n<section id="table"><h2>Metrics</h2>{metric_table(methods)}</section>\n'
        f'<section id="curves"><h2>Curves (averaged over the images)</h2>{legend(methods)}'
        f'<div class="pictures">{curves}</div></section>\n'
        f'<section id="values"><h2>Per image</h2>{values_table(methods, images)}</section>'
    )
    return page(title, body)


def write_evaluation_report(result: dict[str, Any], path: Path) -> None:
    """Write the page for ``result`` (``camcli evaluate --json``'s object) to ``path``,
    atomically."""
    write_atomic(Path(path), build_evaluation_page(result).encode("utf-8"))
