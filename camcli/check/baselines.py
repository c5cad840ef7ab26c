"""Baseline maps: compare a case's map with its stored ``.npy``, or rewrite the stored ones.

``baseline-pearson`` / ``baseline-iou``: both maps (same shape) are normalised and upsampled to
the model's input grid; ``pearson`` is the Pearson correlation of the two grids, ``iou`` the
intersection over union of their top-20% regions (``camcli.metrics.maps.map_similarity``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from camcli.check.results import CaseResult, Outcome, compared
from camcli.check.spec import CaseSpec
from camcli.metrics.maps import map_similarity
from camcli.writers import encode_npy, write_atomic

_UNCHANGED_RTOL = 1e-5  # a rewritten baseline within this of the old peak is "unchanged"


def _shape(array: np.ndarray) -> str:
    return "x".join(map(str, array.shape))


def compare_baseline(result: CaseResult, size: int) -> None:
    """The baseline-pearson and baseline-iou outcomes of a case, on a ``size``^2 grid."""
    case = result.case
    cam = result.cam
    assert case.baseline is not None and cam is not None
    baseline = np.load(case.baseline, allow_pickle=False)
    checks = [("baseline-pearson", case.min_similarity), ("baseline-iou", case.min_iou)]
    checks = [(name, low) for name, low in checks if low is not None]
    if baseline.shape != cam.shape:
        text = (
            f"baseline is {_shape(baseline)} but the map is {_shape(cam)} (another layer or "
            "input size?); run --update-baselines if the change is intended"
        )
        for name, low in checks:
            result.outcomes.append(
                Outcome(name, False, None, low, text, f">= {low:g}", reason=text)
            )
        return
    pearson, iou = map_similarity(cam, baseline, size)
    for name, low in checks:
        value, label = (pearson, "r ") if name == "baseline-pearson" else (iou, "IoU ")
        result.outcomes.append(compared(name, value, low, label=label))


def write_baselines(results: list[CaseResult], size: int) -> list[CaseSpec]:
    """Write each case's map as its new baseline (float32 .npy, atomically); what changed is
    each result's ``baseline_update`` (``baseline_line`` says it in words).

    Runs only after every map is computed, and writes nothing when any baseline case could
    not be computed, so the set on disk always comes from one model: returns those cases
    (empty when the baselines were written). ``size`` is the grid the similarity to the old
    baseline is measured on (the model's input size).
    """
    missing = [r.case for r in results if r.case.baseline is not None and r.cam is None]
    if missing:
        return missing
    for result in results:
        case = result.case
        if case.baseline is None or result.cam is None:
            continue
        cam = np.asarray(result.cam, dtype=np.float32)
        status: dict[str, Any] = {"path": str(case.baseline)}
        old = None
        if case.baseline.is_file():
            try:
                old = np.load(case.baseline, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                status["old_unreadable"] = True
        if old is None:
            status["status"] = "changed" if status.get("old_unreadable") else "new"
        elif (
            old.shape == cam.shape
            and old.dtype.kind == "f"
            and np.isfinite(old).all()
            and (
                np.abs(old.astype(np.float64) - cam).max()
                <= _UNCHANGED_RTOL * max(float(np.abs(old).max()), 1e-12)
            )
        ):
            status["status"] = "unchanged"
        else:
            status["status"] = "changed"
            if old.shape == cam.shape and old.ndim == 2:
                pearson, iou = map_similarity(cam, old.astype(np.float32), size)
                status.update(pearson=round(pearson, 6), iou=round(iou, 6))
            else:
                status["old_shape"] = list(old.shape)
        if status["status"] != "unchanged":
            write_atomic(case.baseline, encode_npy(cam))
        result.baseline_update = status
    return []


def baseline_line(update: dict[str, Any]) -> str:
    """A ``baseline_update`` in words: ``  changed  PATH (vs the old one: r 0.912, IoU 0.700)``."""
    detail = ""
    if "pearson" in update:
        detail = f" (vs the old one: r {update['pearson']:.3f}, IoU {update['iou']:.3f})"
    elif "old_unreadable" in update:
        detail = " (the old one could not be read)"
    elif "old_shape" in update:
        detail = f" (the old one was {'x'.join(map(str, update['old_shape']))})"
    return f"{update['status']:>9}  {update['path']}{detail}"
