"""Failing cases -> overlay pictures (boxes in green, the map's peak as a cross) in a folder."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from camcli.check.results import CaseResult
from camcli.check.spec import CaseSpec
from camcli.images import Box, load_image
from camcli.metrics.maps import peak_and_energy
from camcli.render import overlay
from camcli.writers import encode_image, ensure_inside, slug, write_atomic


def failure_name(case: CaseSpec, suffix: str = "") -> str:
    """``<index, 2 digits>-<case name, slugged><suffix>.png``, e.g. ``03-cat_on_sofa.png``."""
    return f"{case.index:02d}-{slug(case.name, 'case')}{suffix}.png"


def _draw_boxes(rgb: np.ndarray, case: CaseSpec, peak: tuple[int, int] | None) -> np.ndarray:
    thick = max(1, round(min(rgb.shape[:2]) / 200))
    for x0, y0, x1, y1 in case.boxes:
        start = (round(x0), round(y0))
        end = (max(round(x0), round(x1) - 1), max(round(y0), round(y1) - 1))
        cv2.rectangle(rgb, start, end, (0, 255, 0), thick)
    if peak is not None:
        marker = max(7, round(min(rgb.shape[:2]) / 25))
        cv2.drawMarker(rgb, peak, (255, 255, 255), cv2.MARKER_CROSS, marker, thick + 1)
        cv2.drawMarker(rgb, peak, (0, 0, 0), cv2.MARKER_CROSS, marker, thick)
    return rgb


def case_picture(image: np.ndarray, cam: np.ndarray, view_box: Box, case: CaseSpec) -> np.ndarray:
    """``cam`` over ``image`` (RGB uint8) with the case's boxes in green and the map's peak as
    a cross: what ``--save-failures`` and the ``--report`` page show."""
    peak, _ = peak_and_energy(cam, view_box, image.shape[:2], ())
    return _draw_boxes(overlay(image, cam, view_box), case, peak)


def write_failure_pictures(results: list[CaseResult], folder: Path) -> None:
    """For each failing case, its overlay (boxes in green, the peak as a cross) in ``folder``
    (made when missing); with a failed baseline expectation, the baseline's overlay too
    (``...baseline.png``). Each result's ``failure_files`` lists what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    for result in results:
        if result.passed or result.cam is None or result.view_box is None:
            continue
        case = result.case
        image = result.frame if result.frame is not None else np.asarray(load_image(case.image))
        outputs = [(failure_name(case), result.cam)]
        if any(o.expectation.startswith("baseline") and not o.passed for o in result.outcomes):
            assert case.baseline is not None
            baseline = np.load(case.baseline, allow_pickle=False)
            outputs.append((failure_name(case, ".baseline"), baseline))
        for name, cam in outputs:
            path = folder / name
            ensure_inside(folder, path)
            rgb = case_picture(image, cam, result.view_box, case)
            write_atomic(path, encode_image(rgb, "png"))
            result.failure_files.append(str(path))
