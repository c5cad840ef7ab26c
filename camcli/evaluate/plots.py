"""Mean deletion and insertion curves -> PNG charts, drawn with OpenCV (no plotting library).

One chart per curve, one line per method: ``DIR/deletion.png`` and ``DIR/insertion.png``,
the class probability (y, 0 to 1) against the fraction of the input perturbed (x, 0 to 1),
with each method's AUC in the legend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from camcli.writers import encode_image, write_atomic

WIDTH, HEIGHT = 720, 480
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 220, 40, 60
# Colour-blind-safe (Okabe-Ito), RGB; methods past the eighth reuse them.
_PALETTE = (
    (0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167),
    (86, 180, 233), (213, 94, 0), (240, 228, 66), (0, 0, 0),
)  # fmt: skip
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GRAY = (200, 200, 200)
_INK = (30, 30, 30)


def _point(fraction: float, score: float) -> tuple[int, int]:
    x = _LEFT + fraction * (WIDTH - _LEFT - _RIGHT)
    y = HEIGHT - _BOTTOM - min(max(score, 0.0), 1.0) * (HEIGHT - _TOP - _BOTTOM)
    return round(x), round(y)


def _text(canvas: np.ndarray, text: str, at: tuple[int, int], scale: float = 0.45) -> None:
    cv2.putText(canvas, text, at, _FONT, scale, _INK, 1, cv2.LINE_AA)


def chart(
    title: str,
    curves: Mapping[str, Sequence[Sequence[float]]],
    aucs: Mapping[str, float | None],
) -> np.ndarray:
    """An RGB (HEIGHT, WIDTH, 3) chart of ``{method: [[fraction, score], ...]}``; a method
    without a curve (no image's was finite) is in the legend only, its AUC n/a."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    for tick in np.linspace(0.0, 1.0, 5):
        x, _ = _point(float(tick), 0.0)
        _, y = _point(0.0, float(tick))
        cv2.line(canvas, (x, _TOP), (x, HEIGHT - _BOTTOM), _GRAY, 1)
        cv2.line(canvas, (_LEFT, y), (WIDTH - _RIGHT, y), _GRAY, 1)
        _text(canvas, f"{tick:.2f}", (x - 16, HEIGHT - _BOTTOM + 20))
        _text(canvas, f"{tick:.2f}", (_LEFT - 45, y + 5))
    cv2.rectangle(canvas, (_LEFT, _TOP), (WIDTH - _RIGHT, HEIGHT - _BOTTOM), _INK, 1)
    _text(canvas, title, (_LEFT, _TOP - 14), 0.6)
    _text(canvas, "fraction of the input perturbed", (_LEFT + 100, HEIGHT - 18))
    _text(canvas, "p(class)", (8, _TOP - 14))
    for k, (method, points) in enumerate(curves.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        if points:
            line = np.array([_point(f, s) for f, s in points], dtype=np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [line], False, colour, 2, cv2.LINE_AA)
        y = _TOP + 12 + 20 * k
        cv2.line(canvas, (WIDTH - _RIGHT + 12, y - 4), (WIDTH - _RIGHT + 36, y - 4), colour, 2)
        auc = aucs[method]
        _text(canvas, f"{method} ({'n/a' if auc is None else f'{auc:.3f}'})",
              (WIDTH - _RIGHT + 42, y))  # fmt: skip
    return canvas


def write_plots(
    folder: Path,
    curves: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    aucs: Mapping[str, Mapping[str, float | None]],
) -> list[Path]:
    """``folder/<curve>.png`` for each curve ("deletion", "insertion"), written atomically.

    ``curves[method][curve]`` is the mean curve and ``aucs[method][curve]`` its mean AUC.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for curve in ("deletion", "insertion"):
        lines = {m: c[curve] for m, c in curves.items() if curve in c}
        if not lines:
            continue
        title = f"{curve.capitalize()} curves (mean over images; AUC in brackets)"
        picture = chart(title, lines, {m: aucs[m][curve] for m in lines})
        path = folder / f"{curve}.png"
        write_atomic(path, encode_image(picture, "png"))
        written.append(path)
    return written
