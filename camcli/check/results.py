"""What a check run produces: one Outcome per expectation, one CaseResult per case, and the
CheckReport of the whole run, which the command shows and writes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camcli.check.spec import CaseSpec, CheckSpec
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED
from camcli.explain import Explainer
from camcli.images import Box
from camcli.machine_output import NOT_FINITE
from camcli.models import LoadedModel


@dataclass
class Outcome:
    """One expectation of one case: what was measured and whether it passed.

    ``reason`` says why ``measured`` is missing (None) or does not count (a failed image, a
    value that is not finite, all scores equal); None when it is the whole story.
    """

    expectation: str
    passed: bool
    measured: Any
    threshold: Any
    measured_text: str
    threshold_text: str
    error: bool = False
    reason: str | None = None

    def message(self) -> str:
        return f"{self.expectation}: measured {self.measured_text}, expected {self.threshold_text}"


def compared(
    expectation: str, value: float, limit: float, *, at_most: bool = False, label: str = ""
) -> Outcome:
    """``value >= limit`` (``<=`` with ``at_most``) as an outcome; ``label`` prefixes the text.

    A value that is not finite fails, its measured value null with ``NOT_FINITE`` as the
    reason (an infinite one would otherwise pass one side of the comparison).
    """
    threshold_text = f"{'<=' if at_most else '>='} {limit:g}"
    if not math.isfinite(value):
        return Outcome(
            expectation, False, None, limit, f"n/a, {NOT_FINITE}", threshold_text,
            reason=NOT_FINITE,
        )  # fmt: skip
    passed = value <= limit if at_most else value >= limit
    return Outcome(
        expectation, passed, round(value, 6), limit, f"{label}{value:.3f}", threshold_text
    )


@dataclass
class CaseResult:
    case: CaseSpec
    outcomes: list[Outcome] = field(default_factory=list)
    prediction: dict[str, Any] | None = None
    explained: dict[str, Any] | None = None
    peak: tuple[int, int] | None = None
    cam: np.ndarray | None = None
    view_box: Box | None = None
    seconds: float = 0.0
    error: str | None = None
    baseline_update: dict[str, Any] | None = None
    failure_files: list[str] = field(default_factory=list)
    #: A video case: the frame its pictures show (the first failing one), RGB.
    frame: np.ndarray | None = None

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)


@dataclass
class CheckReport:
    """A check run: every case's result, and with ``updated_baselines`` what was written (each
    result's ``baseline_update``; ``baselines_not_written``: the cases without a map, which
    kept every baseline as it was)."""

    spec: CheckSpec
    loaded: LoadedModel
    explainer: Explainer
    results: list[CaseResult]
    seconds: float
    updated_baselines: bool = False
    failure_folder: Path | None = None  # --save-failures, when given
    baselines_not_written: list[CaseSpec] = field(default_factory=list)

    @property
    def failure_files(self) -> list[str]:
        return [f for r in self.results for f in r.failure_files]

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for r in self.results for o in r.outcomes]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if all(r.passed for r in self.results) else EXIT_SOME_FAILED


def class_info(loaded: LoadedModel, index: int, probs: np.ndarray) -> dict[str, Any]:
    return {"class_index": index, "label": loaded.label(index), "score": float(probs[index])}


def named(info: dict[str, Any]) -> str:
    """A class_info as messages show it: ``'tabby' 0.731``."""
    label = info["label"] if info["label"] is not None else f"class {info['class_index']}"
    return f"{label!r} {info['score']:.3f}"
