"""``OUT/report.html`` for a run, rebuilt from ``OUT/manifest.jsonl`` alone.

The page: a header (model, weights, methods and layers), the failed inputs first with their
reasons, then a grid with one row per input: the original and each map's overlay side by side
(the targets in rank order), the label and probability under each. The rows live in a JSON
data island and the page's script (``run.js``, plain JavaScript) shows them a page at a time,
filtered by label or name and by a minimum score, sorted by input order, score or label.

Images are linked, never embedded: each ``<img>`` is a small thumbnail in
``OUT/report-thumbs/`` (``camcli.report.thumbs``) that links to the full-size file, so a page
for 10,000 inputs opens at once. Thumbnails are not outputs: they have no manifest record.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from camcli.errors import UsageError
from camcli.images import display_path
from camcli.outfolder import MANIFEST, OutputFolder, Record, manifest_parts, read_manifest
from camcli.report.page import asset, data_island, esc, page, text, url
from camcli.report.thumbs import THUMBS, Thumb, make_thumbs
from camcli.writers import write_atomic

REPORT = "report.html"
PAGE_ROWS = 50  # rows on one page of the grid
_PICTURE = re.compile(r"\.(jpg|png)$")
_RANK = re.compile(r"top(\d+)$")


def _inside(out: Path, recorded: str) -> str | None:
    """A recorded output path as a file in ``out``, or None when it is not there.

    Records hold the paths as the run named them (``camcli-out/a/x.jpg.gradcam.top1.jpg``,
    relative to the run's working folder, or absolute), so from elsewhere (or after ``OUT``
    moved) the longest tail of the path that is a file in ``out`` is taken; a path that
    resolves outside ``out`` never is.
    """
    root = os.path.realpath(out)
    path = Path(recorded)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) == root and os.path.isfile(real):
        return real
    for i in range(1, len(path.parts)):
        candidate = os.path.realpath(out.joinpath(*path.parts[i:]))
        if os.path.commonpath([root, candidate]) == root and os.path.isfile(candidate):
            return candidate
    return None


def _picture(outputs: Iterable[str]) -> str | None:
    """The overlay among a record's outputs: a JPEG or PNG that is not a gray saliency map."""
    for output in outputs:
        if _PICTURE.search(output) and not output.endswith((".gray.jpg", ".gray.png")):
            return output
    return None


#: The most points a video's score plot has; a longer video's frames are sampled evenly.
PLOT_POINTS = 400


def _video_cell(out: Path, root: str, record: Record) -> dict[str, Any]:
    """A video record's cell: the overlay video (``video``, its URL), its size and duration,
    and the target's score per explained frame (``series``: [seconds, score] pairs, from the
    predictions sidecar) for the plot beside it."""
    cell: dict[str, Any] = {}
    info = record["video"]
    video = next((o for o in record.get("outputs") or () if o.endswith(".mp4")), None)
    found = _inside(out, video) if video is not None else None
    if found is not None:
        cell["video"] = url(PurePosixPath(*Path(os.path.relpath(found, root)).parts))
        cell.update(vw=info.get("width"), vh=info.get("height"))
    cell["duration"] = info.get("duration")
    sidecar = _inside(out, record.get("predictions") or "")
    series: list[list[float]] = []
    if sidecar is not None:
        with open(sidecar, encoding="utf-8") as lines:
            for line in lines:
                entry = json.loads(line)
                if isinstance(entry.get("score"), int | float):
                    series.append([entry["time"], entry["score"]])
    step = max(1, -(-len(series) // PLOT_POINTS))
    cell["series"] = series[::step]
    return cell


def _target_order(record: Record) -> tuple[int, str]:
    match = _RANK.fullmatch(str(record.get("target")))
    return (int(match[1]), "") if match else (1 << 30, str(record.get("target")))


def _reason(record: Record) -> str:
    """The error without the input's name in front of it (the row names the input)."""
    error = str(record.get("error") or "failed")
    shown = display_path(record["input"])
    return error[len(shown) + 2 :] if error.startswith(f"{shown}: ") else error


def _image(root: str, thumb: Thumb | str | None, full: str | None) -> dict[str, Any]:
    """An image cell's data: the thumbnail's and the full file's URLs (relative to ``root``,
    the real path of OUT, where the page is), or a note why there is no picture."""
    href = None if full is None else url(PurePosixPath(*Path(os.path.relpath(full, root)).parts))
    cell: dict[str, Any] = {"href": href}
    if isinstance(thumb, Thumb):
        cell.update(src=url(PurePosixPath(THUMBS, thumb.name)), w=thumb.width, h=thumb.height)
    else:
        cell["note"] = text(thumb or "no picture (npy only)")
    return cell


def _describe(records: list[Record]) -> list[str]:
    """The header's lines: each distinct model and weights, each method at its layers."""
    models: dict[str, None] = {}
    methods: dict[str, None] = {}
    for record in records:
        settings = record.get("settings") or {}
        checkpoint = (settings.get("checkpoint") or {}).get("path")
        weights = settings.get("weights") or (
            f"checkpoint {Path(checkpoint).name}" if checkpoint else "random, seeded"
        )
        models[f"{settings.get('model', '?')} ({weights})"] = None
        if record.get("method"):
            layer = record.get("layer")
            where = "the input" if layer == "" else layer or "?"  # "": a black-box method
            methods[f"{record['method']} at {where}"] = None
    return [f"model {m}" for m in models] + [f"method {m}" for m in methods]


def build_run_page(out: Path, records: list[Record], temp_dir: Path) -> tuple[str, int, int]:
    """The report page for ``records`` (a compacted manifest of ``out``): (html, rows, failed).

    Thumbnails are made (or found from an earlier report) in ``out/report-thumbs/``.
    """
    failed: dict[str, Record] = {}
    rows: dict[str, list[Record]] = {}
    for record in records:
        if record.get("status") == "error":
            failed[record["input"]] = record
        elif record.get("status") == "ok":
            rows.setdefault(record["input"], []).append(record)
    for name in rows:
        failed.pop(name, None)  # maps from an earlier run are kept; this run's error is shown
    for maps in rows.values():
        maps.sort(key=lambda r: (str(r.get("method")), str(r.get("layer")), _target_order(r)))

    root = os.path.realpath(out)
    originals = {name: os.path.realpath(name) for name in rows}
    originals = {name: real for name, real in originals.items() if os.path.isfile(real)}
    pictures = {
        id(r): _inside(out, picture)
        for maps in rows.values()
        for r in maps
        if (picture := _picture(r.get("outputs") or ())) is not None
    }
    thumbs = make_thumbs(
        out, [*originals.values(), *(p for p in pictures.values() if p is not None)], temp_dir
    )
    several = len({(r.get("method"), r.get("layer")) for m in rows.values() for r in m}) > 1
    data = []
    for name, maps in rows.items():
        original = originals.get(name)
        found = thumbs[original] if original is not None else "original not found"
        row_cell = _image(root, found, original)
        cells = []
        for record in maps:
            full = pictures.get(id(record))
            thumb: Thumb | str | None = None
            if _picture(record.get("outputs") or ()) is not None:
                thumb = thumbs[full] if full is not None else "overlay not found"
            elif record.get("outputs"):
                full = _inside(out, record["outputs"][0])
            cell = _image(root, thumb, full)
            if record.get("video"):
                cell.update(_video_cell(out, root, record))
            what = str(record.get("target"))
            if several:
                what = f"{record.get('method')} {record.get('layer')} {what}"
            label = record.get("label")
            label = label if label is not None else f"class {record.get('class_index')}"
            cell.update(target=text(what), label=text(label), score=record.get("score"))
            if record.get("warning"):
                cell["warning"] = text(record["warning"])
            cells.append(cell)
        scores = [c["score"] for c in cells if isinstance(c.get("score"), int | float)]
        data.append(
            {
                "name": text(display_path(name)),
                "original": row_cell,
                "maps": cells,
                "score": max(scores) if scores else None,
            }
        )

    title = f"camcli report: {display_path(out)}"
    header = "".join(f"<li>{esc(line)}</li>" for line in _describe(records))
    summary = f"{len(data)} inputs explained, {len(failed)} failed"
    failures = ""
    if failed:
        items = "".join(
            f"<tr><td>{esc(display_path(name))}</td><td>{esc(_reason(r))}</td></tr>"
            for name, r in failed.items()
        )
        failures = (
            f'<section id="failures"><h2>{len(failed)} failed</h2>'
            f"<table><thead><tr><th>input</th><th>reason</th></tr></thead>"
            f"<tbody>{items}</tbody></table></section>"
        )
    body = (
        f"<header><h1>{esc(title)}</h1><ul>{header}</ul>"
        f'<p id="summary">{esc(summary)}</p></header>\n{failures}\n'
        '<section id="maps"><h2>Maps</h2>'
        '<form id="controls" onsubmit="return false">'
        '<label>label or name <input id="filter" type="search" placeholder="tabby"></label> '
        '<label>score at least <input id="min-score" type="number" min="0" max="1" '
        'step="0.01" value="0"></label> '
        '<label>sort <select id="sort"><option value="input">input order</option>'
        '<option value="score-desc">score, highest first</option>'
        '<option value="score-asc">score, lowest first</option>'
        '<option value="label">label</option></select></label></form>'
        '<p id="count"></p><div id="grid"></div>'
        '<nav id="pages"><button id="prev" type="button">previous</button> '
        '<span id="page"></span> <button id="next" type="button">next</button></nav>'
        "</section>\n" + data_island("rows", {"rows": data, "pageRows": PAGE_ROWS})
    )
    return page(title, body, asset("run.js")), len(data), len(failed)


def write_run_report(out: Path) -> tuple[Path, int, int]:
    """Write ``OUT/report.html`` from the manifest: (its path, inputs shown, inputs failed).

    The folder is held like a run holds it (a run or a shard using it: UsageError, exit 2),
    the shards' manifest parts are merged first, and the page is written atomically.
    """
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"{out}: {'not a folder' if out.exists() else 'no such folder'}")
    if not (out / MANIFEST).is_file() and not manifest_parts(out):
        raise UsageError(f"{out}: no {MANIFEST} (not the output folder of a camcli run)")
    with OutputFolder(out) as folder:
        records = list(read_manifest(out).values())
        html, shown, failed = build_run_page(out, records, folder.temp_dir)
        target = out / REPORT
        write_atomic(target, html.encode("utf-8"), folder.temp_dir)
    return target, shown, failed
