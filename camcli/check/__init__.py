"""``camcli check``: a model's predictions and maps against a spec's expectations, for CI.

The flow, one module per step: ``prepare`` (spec file -> validated spec, model, explainer),
``evaluation`` (explain every case in batches; ``measure`` and ``baselines`` turn maps into
outcomes), then the outputs: ``baselines.write_baselines``, ``pictures`` (overlays of
failing cases) and ``reports`` (table, JSON, JUnit).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from camcli.check.baselines import write_baselines
from camcli.check.cases import evaluate
from camcli.check.pictures import save_failures
from camcli.check.prepare import prepare
from camcli.check.reports import (
    failures_line,
    junit_xml,
    report_json,
    summary_line,
    table,
    unwritable_reason,
)
from camcli.check.results import CaseResult, Outcome, Report
from camcli.errors import EXIT_OK, UsageError
from camcli.machine_output import json_text
from camcli.metrics.maps import in_boxes, map_similarity, peak_and_energy
from camcli.writers import write_atomic

__all__ = [
    "CaseResult",
    "Outcome",
    "Report",
    "evaluate",
    "in_boxes",
    "map_similarity",
    "peak_and_energy",
    "prepare",
    "run_check",
]


def run_check(
    spec_path: Path,
    *,
    update_baselines: bool = False,
    junit: Path | None = None,
    json_out: bool = False,
    save_failures_to: Path | None = None,
    console: Console | None = None,
    html_report: Path | None = None,
) -> int:
    """Validate the spec (SpecError, exit 2, before any image is explained), run it, report.

    Returns 0 when every expectation holds, 1 otherwise. ``html_report``: the HTML page of
    every case (``camcli.report.check``), its pictures beside it. The report paths are checked first
    (UsageError, exit 2), so that a run is never lost to a report it cannot write. Baselines
    are written (with ``update_baselines``) only after every case has been computed.
    """
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    for option, path, folder in (
        ("--junit", junit, False),
        ("--save-failures", save_failures_to, True),
        ("--report", html_report, False),
    ):
        reason = None if path is None else unwritable_reason(path, folder=folder)
        if reason is not None:
            raise UsageError(f"{option} {path}: {reason}")
    began = time.perf_counter()
    spec, loaded, explainer = prepare(
        spec_path, update_baselines=update_baselines, progress=console.is_terminal
    )
    results = evaluate(spec, loaded, explainer, update_baselines=update_baselines)
    report = Report(spec, loaded, explainer, results, 0.0, update_baselines, save_failures_to)
    if update_baselines:
        write_baselines(results, console, loaded.preprocess.crop_size)
    if save_failures_to is not None and report.exit_code != EXIT_OK:
        save_failures_to.mkdir(parents=True, exist_ok=True)
        save_failures(results, save_failures_to)
    report.seconds = time.perf_counter() - began
    if report.outcomes:
        console.print(table(report))
    style = "bold green" if report.exit_code == EXIT_OK else "bold red"
    console.print(f"[{style}]{escape(summary_line(report))}[/]")
    if save_failures_to is not None:
        console.print(escape(failures_line(report)))
    if json_out:
        sys.stdout.write(json_text(report_json(report), indent=2) + "\n")
        sys.stdout.flush()
    if junit is not None:
        write_atomic(junit, junit_xml(report))
    if html_report is not None:
        from camcli.report.check import write_check_report

        write_check_report(report, html_report)
        console.print(f"report: {escape(str(html_report))}")
    return report.exit_code
