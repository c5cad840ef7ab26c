"""``camcli check``: a model's predictions and maps against a spec's expectations, for CI.

The flow, one module per step: ``prepare`` (spec file -> validated spec, model, explainer),
``cases`` (explain every case in batches; ``expectations``, ``baselines`` and
``faithfulness`` turn maps into outcomes), ``baselines.write_baselines`` (with
``--update-baselines``); ``run_check`` returns the CheckReport of the whole run. Nothing here
prints: ``camcli.cli.check`` shows the report and writes its formats (``describe`` gives its
lines, its JSON object and its JUnit suite), ``pictures`` the overlays of failing cases.
"""

from __future__ import annotations

import time
from pathlib import Path

from camcli.check.baselines import write_baselines
from camcli.check.cases import run_cases
from camcli.check.prepare import prepare
from camcli.check.results import CaseResult, CheckReport, Outcome
from camcli.metrics.maps import in_boxes, map_similarity, peak_and_energy

__all__ = [
    "CaseResult",
    "CheckReport",
    "Outcome",
    "in_boxes",
    "map_similarity",
    "peak_and_energy",
    "prepare",
    "run_cases",
    "run_check",
]


def run_check(
    spec_path: Path,
    *,
    update_baselines: bool = False,
    progress: bool = False,
    runtime: str | None = None,
) -> CheckReport:
    """Validate the spec (SpecError, exit 2, before any image is explained), run its cases.

    The report's ``exit_code`` is 0 when every expectation holds, 1 otherwise. Baselines are
    written (with ``update_baselines``) only after every case has been computed, and none
    when a baseline case has no map (``baselines_not_written``). ``progress``: show the
    model's download progress; ``runtime``: ``--runtime``, over the spec's.
    """
    began = time.perf_counter()
    spec, loaded, explainer = prepare(
        spec_path, update_baselines=update_baselines, progress=progress, runtime=runtime
    )
    results = run_cases(spec, loaded, explainer, update_baselines=update_baselines)
    report = CheckReport(spec, loaded, explainer, results, 0.0, update_baselines)
    if update_baselines:
        report.baselines_not_written = write_baselines(results, loaded.preprocess.crop_size)
    report.seconds = time.perf_counter() - began
    return report
