"""The one writer of machine-readable text: JSON, JSON lines, CSV and JUnit XML.

Every command's ``--json``, ``--csv`` and ``--junit``, the manifest and the report pages' data
go through here, with one rule for what a model returns: JSON has no NaN or inf, so a value
that is not finite is written as null with its reason beside it (``NOT_FINITE``); ``json_text``
refuses one rather than write a ``NaN`` token that breaks ``jq`` and every strict parser.
"""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Lone surrogates, and the line breaks str.splitlines() honours that json.dumps leaves raw.
_ESCAPED = re.compile("[\x85\u2028\u2029\ud800-\udfff]")


#: Why a measured value is null in the outputs: JSON has no NaN or inf (``json_text``).
NOT_FINITE = "not finite (NaN or inf)"


def json_text(data: Any, *, indent: int | None = None) -> str:
    """``data`` as standard JSON text (no newline at the end): the one place camcli writes
    JSON (the manifest, every ``--json``, the report pages' data), UTF-8 text where possible.

    A lone surrogate (how Python keeps the undecodable bytes of a file name) cannot be encoded
    as UTF-8, so it is written as a ``\\udcXX`` escape, which ``json.loads`` turns back into
    the same ``str``. A NaN or infinite float raises ValueError: JSON has no such numbers
    (``NaN`` tokens break ``jq`` and every strict parser), so whoever builds ``data`` writes a
    result that is not finite as null, with its reason beside it.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, indent=indent)
    return _ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_line(record: Any) -> str:
    """``record`` as one line of JSON (``json_text``): a manifest or ``--json`` line."""
    return json_text(record)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A header and rows as CSV text (``\\n`` line ends); a cell of None is empty, a float is
    written with ``repr`` (every digit kept), and one that is not finite is refused."""

    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{value!r} in CSV: write None with its reason instead")
            return repr(value)
        return value

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return out.getvalue()


@dataclass
class JUnitCase:
    """One ``<testcase>``; ``failure`` (a message) makes it a failure, or an error with
    ``error=True``; ``detail`` is the failure element's text."""

    classname: str
    name: str
    file: str
    seconds: float
    failure: str | None = None
    error: bool = False
    detail: str = ""


@dataclass
class JUnitSuite:
    name: str
    seconds: float
    properties: dict[str, str] = field(default_factory=dict)
    cases: list[JUnitCase] = field(default_factory=list)


def junit_xml(title: str, suite: JUnitSuite) -> bytes:
    """One ``<testsuites>`` named ``title`` holding ``suite``, as UTF-8 XML."""
    cases = suite.cases
    failures = sum(c.failure is not None and not c.error for c in cases)
    errors = sum(c.failure is not None and c.error for c in cases)
    common = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": str(errors),
        "time": f"{suite.seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": title, **common})
    element = ET.SubElement(
        root,
        "testsuite",
        {
            "name": suite.name,
            **common,
            "skipped": "0",
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": socket.gethostname(),
        },
    )
    properties = ET.SubElement(element, "properties")
    for key, value in suite.properties.items():
        ET.SubElement(properties, "property", {"name": key, "value": value})
    for case in cases:
        testcase = ET.SubElement(
            element,
            "testcase",
            {"classname": case.classname, "name": case.name, "file": case.file,
             "time": f"{case.seconds:.3f}"},
        )  # fmt: skip
        if case.failure is None:
            continue
        kind = "error" if case.error else "failure"
        failure = ET.SubElement(testcase, kind, {"message": case.failure, "type": f"camcli.{kind}"})
        failure.text = case.detail
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
