"""Per-image values -> the mean and a 95% interval, reproducibly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def interval(values: Sequence[float | None], seed: int = 0) -> dict[str, float | None]:
    """``mean``, ``low``, ``high``: the mean of the known values and the percentile bootstrap
    95% interval of that mean (``RESAMPLES`` resamples from a generator seeded with ``seed``).

    Missing values (None: an image without a box, a failed image) are left out; with no
    value all three are None, with one the interval is that value.
    """
    known = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if known.size == 0:
        return {"mean": None, "low": None, "high": None}
    mean = float(known.mean())
    if known.size == 1 or np.all(known == known[0]):
        return {"mean": mean, "low": mean, "high": mean}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, known.size, (RESAMPLES, known.size))
    means = known[picks].mean(axis=1)
    tail = (1.0 - LEVEL) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {"mean": mean, "low": float(low), "high": float(high)}
