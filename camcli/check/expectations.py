"""A case's expectations -> their outcomes, from its prediction and map.

* ``class``: the rank of the expected class in the softmax prediction (1 = top-1);
  passes when ``rank <= top_k``.
* ``score``: ``p(expected class)``; passes when ``>= min_score``.
* ``pointing``: the peak of the map (``camcli.metrics.maps``) inside any of the boxes.
* ``energy``: the share of the map's energy inside the boxes; passes when ``>= min_energy``.
* ``baseline-pearson`` / ``baseline-iou`` (``camcli.check.baselines``): the map against a
  stored baseline map of the same shape, compared with ``map_similarity``.
"""

from __future__ import annotations

import numpy as np

from camcli.check.results import CaseResult, Outcome, compared, named
from camcli.check.spec import CaseSpec
from camcli.metrics.maps import in_boxes, peak_and_energy
from camcli.targets import SCORES_EQUAL


def _class_outcomes(case: CaseSpec, probs: np.ndarray, top: dict, tied: bool) -> list[Outcome]:
    """The class outcome (and the score one): both fail where all scores are equal, for no
    class then ranks above another (a zero head would put any expected class first)."""
    p = float(probs[case.expect_index])
    expected = f"rank <= {case.top_k}"
    if tied:
        outcomes = [
            Outcome("class", False, None, case.top_k, f"no rank, {SCORES_EQUAL}", expected,
                    reason=SCORES_EQUAL)
        ]  # fmt: skip
    else:
        rank = 1 + int((probs > p).sum())
        note = "" if rank == 1 else f" (top-1 is {named(top)})"
        outcomes = [
            Outcome("class", rank <= case.top_k, rank, case.top_k, f"rank {rank}{note}", expected)
        ]
    if case.min_score is not None:
        score = compared("score", p, case.min_score)
        if tied:
            score.passed, score.reason = False, SCORES_EQUAL
            score.measured_text += f", {SCORES_EQUAL}"
        outcomes.append(score)
    return outcomes


def measure_case(
    result: CaseResult, probs: np.ndarray, image_shape: tuple[int, int], tied: bool
) -> None:
    """The class, score, pointing and energy outcomes of one explained case; ``tied``: all of
    the image's scores are equal (``camcli.targets.scores_equal``)."""
    case = result.case
    cam = result.cam
    assert cam is not None and result.view_box is not None
    outcomes = result.outcomes
    if case.expect_index is not None:
        assert result.prediction is not None
        outcomes += _class_outcomes(case, probs, result.prediction, tied)
    if case.boxes:
        peak, energy = peak_and_energy(cam, result.view_box, image_shape, case.boxes)
        result.peak = peak
        boxes = [list(b) for b in case.boxes]
        where = "inside the box" if len(boxes) == 1 else f"inside one of {len(boxes)} boxes"
        if case.pointing:
            hit = peak is not None and in_boxes(peak, case.boxes)
            text = (
                "blank map, no peak"
                if peak is None
                else (f"peak ({peak[0]}, {peak[1]}) " + ("inside" if hit else "outside"))
            )
            outcomes.append(
                Outcome("pointing", hit, list(peak) if peak else None, boxes, text, f"peak {where}",
                        reason=None if peak else text)
            )  # fmt: skip
        if case.min_energy is not None:
            outcomes.append(compared("energy", energy, case.min_energy))
