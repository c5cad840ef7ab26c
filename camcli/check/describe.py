"""A CheckReport as data and text: its summary lines, its ``--json`` object, its JUnit suite.

Nothing here prints or writes: the command shows and writes them (``camcli.cli.check``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from camcli.check.results import CheckReport, Outcome, named
from camcli.errors import EXIT_OK
from camcli.machine_output import JUnitCase, JUnitSuite
from camcli.writers import slug


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "expectation": outcome.expectation,
        "passed": outcome.passed,
        "measured": outcome.measured,
        "threshold": outcome.threshold,
        "reason": outcome.reason,
        "message": outcome.message(),
    }


def report_data(report: CheckReport) -> dict[str, Any]:
    """The ``--json`` object of a run (plain data, for ``camcli.machine_output.json_text``)."""
    outcomes = report.outcomes
    failed_cases = [r for r in report.results if not r.passed]
    cases = []
    for r in report.results:
        row: dict[str, Any] = {
            "index": r.case.index,
            "name": r.case.name,
            "image": str(r.case.image),
            "passed": r.passed,
            "error": r.error,
            "prediction": r.prediction,
            "explained": r.explained,
            "peak": list(r.peak) if r.peak else None,
            "expectations": [_outcome_json(o) for o in r.outcomes],
        }
        if r.case.frames is not None:
            row["frames"] = list(r.case.frames)
        if r.baseline_update is not None:
            row["baseline_update"] = r.baseline_update
        if r.failure_files:
            row["failure_overlays"] = r.failure_files
        cases.append(row)
    body: dict[str, Any] = {
        "spec": str(report.spec.path),
        "passed": report.exit_code == EXIT_OK,
        "exit_code": report.exit_code,
        "model": {
            "name": report.loaded.name,
            "method": report.explainer.method_name,
            "layers": report.explainer.layer_names,
            "input_size": report.loaded.preprocess.crop_size,
            "device": str(report.loaded.device),
            **report.explainer.offload.settings(),
        },
        "summary": {
            "cases": len(report.results),
            "failed_cases": len(failed_cases),
            "expectations": len(outcomes),
            "passed": sum(o.passed for o in outcomes),
            "failed": sum(not o.passed for o in outcomes),
        },
        "seconds": round(report.seconds, 3),
        "updated_baselines": report.updated_baselines,
    }
    if report.failure_folder is not None:
        folder, files = str(report.failure_folder), report.failure_files
        body["failure_pictures"] = {"folder": folder, "files": files}
    body["cases"] = cases
    return body


def junit_suite(report: CheckReport) -> JUnitSuite:
    """One test case per expectation (``classname`` = the spec, ``name`` = ``case: what``); a
    failed one carries ``message`` = ``...measured ..., expected ...`` and the case's detail."""
    spec_path = str(report.spec.path)
    suite = JUnitSuite(
        name=spec_path,
        seconds=report.seconds,
        properties={
            "model": report.loaded.name,
            "method": report.explainer.method_name,
            "layers": "+".join(report.explainer.layer_names),
            "input_size": str(report.loaded.preprocess.crop_size),
        },
    )
    classname = "camcli." + slug(report.spec.path.stem, "spec")
    for result in report.results:
        case = result.case
        share = result.seconds / max(1, len(result.outcomes))
        for outcome in result.outcomes:
            junit_case = JUnitCase(
                classname, f"{case.name}: {outcome.expectation}", spec_path, share
            )
            suite.cases.append(junit_case)
            if outcome.passed:
                continue
            detail = [
                f"spec: {report.spec.path}, {case.label}",
                f"image: {case.image}",
                outcome.message(),
            ]
            if result.explained:
                detail.append(f"map of: {named(result.explained)}")
            if result.prediction:
                detail.append(f"top-1: {named(result.prediction)}")
            detail += [f"overlay: {f}" for f in result.failure_files]
            junit_case.failure = outcome.message()
            junit_case.error = outcome.error
            junit_case.detail = "\n".join(detail)
    return suite


def _model_label(name: str) -> str:
    """``/long/path/nets.py:build`` -> ``nets.py:build``; torchvision names as they are."""
    where, _, attr = name.rpartition(":")
    return f"{Path(where).name}:{attr}" if where.endswith(".py") else name


def failures_line(report: CheckReport) -> str:
    """Where ``--save-failures`` wrote, and how many pictures."""
    n = len(report.failure_files)
    if report.exit_code == EXIT_OK:
        return f"saved no failure pictures to {report.failure_folder}: every case passed"
    return f"saved {n} failure picture{'' if n == 1 else 's'} to {report.failure_folder}"


def summary_line(report: CheckReport) -> str:
    outcomes = report.outcomes
    failed = [r for r in report.results if not r.passed]
    passed = sum(o.passed for o in outcomes)
    head = "PASS" if not failed else "FAIL"
    text = (
        f"{head}: {passed} of {len(outcomes)} expectations passed in {len(report.results)} "
        f"cases ({_model_label(report.loaded.name)}, {report.explainer.method_name} at "
        f"{report.explainer.layer_label}, {report.seconds:.1f} s)"
    )
    if report.updated_baselines:
        counts: dict[str, int] = {}
        for r in report.results:
            if r.baseline_update is not None:
                status = r.baseline_update["status"]
                counts[status] = counts.get(status, 0) + 1
        text += "; baselines: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    if failed:
        names = ", ".join(repr(r.case.name) for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        text += f"; failing cases: {names}{more}"
    return text
