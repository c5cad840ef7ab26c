"""A Report -> the table and summary line on stderr, the ``--json`` object, JUnit XML; and
whether the report paths can be written at all, checked before the run."""

from __future__ import annotations

import os
import socket
import tempfile
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from camcli.check.results import Outcome, Report, named
from camcli.errors import EXIT_OK
from camcli.writers import slug


def unwritable_reason(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` (a file to write, or with ``folder`` a folder to fill) cannot be written;
    None when it can.

    Nothing is left behind: the nearest part of ``path`` that exists must be a folder in
    which a file can be created (a probe file is created there and removed at once). That
    is the only test that holds for root too, who passes every permission check but still
    cannot write below a regular file, on a read-only file system or in ``/proc``.
    """
    if folder and path.exists() and not path.is_dir():
        return "exists and is not a directory"
    if not folder and path.is_dir():
        return "is a directory; give a file name such as report.xml"
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be written: {existing} is not a directory"
    try:
        handle, probe = tempfile.mkstemp(prefix=".camcli-probe.", dir=existing)
    except OSError as exc:
        return f"cannot be written: cannot create a file in {existing} ({exc.strerror or exc})"
    os.close(handle)
    os.unlink(probe)
    return None


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "expectation": outcome.expectation,
        "passed": outcome.passed,
        "measured": outcome.measured,
        "threshold": outcome.threshold,
        "reason": outcome.reason,
        "message": outcome.message(),
    }


def report_json(report: Report) -> dict[str, Any]:
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


def junit_xml(report: Report) -> bytes:
    """One ``<testcase>`` per expectation (``classname`` = the spec, ``name`` = ``case: what``);
    a failed one holds ``<failure message="...measured ..., expected ...">``."""
    outcomes = report.outcomes
    failures = sum(not o.passed and not o.error for o in outcomes)
    errors = sum(o.error for o in outcomes)
    spec_name = str(report.spec.path)
    common = {
        "tests": str(len(outcomes)),
        "failures": str(failures),
        "errors": str(errors),
        "time": f"{report.seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": "camcli check", **common})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": spec_name,
            **common,
            "skipped": "0",
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": socket.gethostname(),
        },
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("model", report.loaded.name),
        ("method", report.explainer.method_name),
        ("layers", "+".join(report.explainer.layer_names)),
        ("input_size", str(report.loaded.preprocess.crop_size)),
    ):
        ET.SubElement(properties, "property", {"name": key, "value": value})
    classname = "camcli." + slug(report.spec.path.stem, "spec")
    for result in report.results:
        case = result.case
        share = result.seconds / max(1, len(result.outcomes))
        for outcome in result.outcomes:
            element = ET.SubElement(
                suite,
                "testcase",
                {
                    "classname": classname,
                    "name": f"{case.name}: {outcome.expectation}",
                    "file": str(report.spec.path),
                    "time": f"{share:.3f}",
                },
            )
            if outcome.passed:
                continue
            kind = "error" if outcome.error else "failure"
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
            failure = ET.SubElement(
                element, kind, {"message": outcome.message(), "type": f"camcli.{kind}"}
            )
            failure.text = "\n".join(detail)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def table(report: Report) -> Table:
    """The stderr table: one row per expectation, the case named on its first row."""
    grid = Table(
        box=None, title=f"camcli check {escape(str(report.spec.path))}", title_justify="left"
    )
    for column in ("case", "expectation", "measured", "threshold", "result"):
        grid.add_column(column, overflow="fold")
    for result in report.results:
        first = True
        for outcome in result.outcomes:
            verdict = (
                "[green]pass[/]"
                if outcome.passed
                else ("[bold red]ERROR[/]" if outcome.error else "[bold red]FAIL[/]")
            )
            grid.add_row(
                escape(result.case.name) if first else "",
                outcome.expectation,
                escape(outcome.measured_text),
                escape(outcome.threshold_text),
                verdict,
            )
            first = False
    return grid


def _model_label(name: str) -> str:
    """``/long/path/nets.py:build`` -> ``nets.py:build``; torchvision names as they are."""
    where, _, attr = name.rpartition(":")
    return f"{Path(where).name}:{attr}" if where.endswith(".py") else name


def failures_line(report: Report) -> str:
    """Where ``--save-failures`` wrote, and how many pictures."""
    n = len(report.failure_files)
    if report.exit_code == EXIT_OK:
        return f"saved no failure pictures to {report.failure_folder}: every case passed"
    return f"saved {n} failure picture{'' if n == 1 else 's'} to {report.failure_folder}"


def summary_line(report: Report) -> str:
    outcomes = report.outcomes
    failed = [r for r in report.results if not r.passed]
    passed = sum(o.passed for o in outcomes)
    head = "PASS" if not failed else "FAIL"
    text = (
        f"{head}: {passed} of {len(outcomes)} expectations passed in {len(report.results)} "
        f"cases ({_model_label(report.loaded.name)}, {report.explainer.method_name} at "
        f"{'+'.join(report.explainer.layer_names)}, {report.seconds:.1f} s)"
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
