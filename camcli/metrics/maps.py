"""Measures of one map: its peak and energy against boxes, its similarity to another map.

* pointing game: the map is normalised (``max(M, 0) / max(M)``) and upsampled onto the
  original image exactly like an overlay (``camcli.render.upsample`` over the region the model
  saw); the peak is the pixel ``(x, y)`` of its maximum, a hit when the pixel's centre
  ``(x + 0.5, y + 0.5)`` lies inside any of the boxes (``in_boxes``).
* energy (energy-based pointing game, Score-CAM paper): ``sum(M' inside the union of the
  boxes) / sum(M')`` for that upsampled, normalised map ``M'``.
* ``map_similarity``: Pearson r and the IoU of the top regions of two maps of one shape.

``camcli check`` (its expectations) and ``camcli evaluate`` (the pointing game) both use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camcli.images import Box
from camcli.render import normalise, upsample

TOP_FRACTION = 0.2  # the share of pixels in the "top region" of the baseline IoU


def _box_mask(rows: slice, cols: slice, shape: tuple[int, int], boxes: Sequence) -> np.ndarray:
    """Which pixels of an upsampled region have their centre inside any of the boxes."""
    ys = rows.start + np.arange(shape[0]) + 0.5
    xs = cols.start + np.arange(shape[1]) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return mask


def peak_and_energy(
    cam: np.ndarray, view_box: Box, image_shape: tuple[int, int], boxes: Sequence
) -> tuple[tuple[int, int] | None, float]:
    """The map's peak pixel ``(x, y)`` in the original image and its energy inside ``boxes``.

    ``M' = upsample(normalise(cam))`` over the region the model saw, as overlays draw it;
    energy ``= sum(M'[inside]) / sum(M')``. A blank map has no peak and zero energy.
    """
    region, rows, cols = upsample(normalise(cam), view_box, image_shape)
    total = float(region.sum(dtype=np.float64)) if region.size else 0.0
    if total <= 0.0:
        return None, 0.0
    i, j = np.unravel_index(int(np.argmax(region)), region.shape)
    peak = (int(cols.start + j), int(rows.start + i))
    if not boxes:
        return peak, 0.0
    mask = _box_mask(rows, cols, region.shape, boxes)
    return peak, float(region[mask].sum(dtype=np.float64)) / total


def in_boxes(peak: tuple[int, int], boxes: Sequence) -> bool:
    x, y = peak[0] + 0.5, peak[1] + 0.5
    return any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes)


def grid(cam: np.ndarray, size: int) -> np.ndarray:
    """The map normalised and upsampled onto a ``size`` x ``size`` grid."""
    return upsample(normalise(cam), Box(0.0, 0.0, float(size), float(size)), (size, size))[0]


def _top_region(values: np.ndarray) -> np.ndarray:
    return (values >= np.quantile(values, 1.0 - TOP_FRACTION)) & (values > 0)


def map_similarity(current: np.ndarray, baseline: np.ndarray, size: int) -> tuple[float, float]:
    """``(pearson, iou)`` of two same-shape maps, both normalised and upsampled to ``size``^2.

    ``pearson = cov(a, b) / (std(a) std(b))`` over all pixels (two constant grids: 1 when
    equal, else 0); ``iou = |T(a) & T(b)| / |T(a) | T(b)|`` with ``T`` the top-20% region
    (pixels at or above the map's 80th percentile, and above zero; two blank maps: 1).
    """
    a = grid(current, size).astype(np.float64).ravel()
    b = grid(baseline, size).astype(np.float64).ravel()
    if a.std() == 0.0 or b.std() == 0.0:
        pearson = 1.0 if a.std() == b.std() == 0.0 and np.allclose(a, b) else 0.0
    else:
        pearson = float(np.corrcoef(a, b)[0, 1])
    top_a, top_b = _top_region(a), _top_region(b)
    union = int((top_a | top_b).sum())
    iou = float((top_a & top_b).sum()) / union if union else 1.0
    return pearson, iou
