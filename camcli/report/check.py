"""The page of a ``camcli check`` run (``--report FILE``): every case and its expectations.

Failing cases come first, then the passing ones, each in spec order. A case shows its image,
the prediction and the explained class, a table of its expectations (measured, threshold,
pass or fail) and its overlay with the boxes in green and the map's peak as a cross; when the
case compares a baseline, the baseline map's overlay stands beside the current one. The
pictures are PNG files in ``FILE``'s sibling folder ``<stem>_files/``, linked relatively,
at most ``PICTURE`` pixels on their longest side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from camcli.check.describe import summary_line
from camcli.check.pictures import case_picture, failure_name
from camcli.check.results import CaseResult, CheckReport, named
from camcli.errors import InputError
from camcli.images import load_image
from camcli.report.page import esc, link_from, page
from camcli.writers import encode_image, ensure_inside, write_atomic

PICTURE = 480


def pictures_folder(path: Path) -> Path:
    """``report.html`` -> ``report_files/`` beside it."""
    return path.with_name(f"{path.stem}_files")


def _small(rgb: np.ndarray) -> np.ndarray:
    image = Image.fromarray(rgb)
    image.thumbnail((PICTURE, PICTURE), Image.Resampling.LANCZOS)
    return np.asarray(image)


def _pictures(result: CaseResult, folder: Path, compare: bool) -> list[tuple[str, Path | str]]:
    """(caption, written file or the reason there is none) for the case's pictures."""
    if result.cam is None or result.view_box is None:
        return []
    case = result.case
    try:
        image = result.frame if result.frame is not None else np.asarray(load_image(case.image))
    except InputError as exc:
        return [("current map", exc.message)]
    maps: list[tuple[str, str, np.ndarray | str]] = [("current map", "", result.cam)]
    if compare and case.baseline is not None:
        try:
            baseline = np.load(case.baseline, allow_pickle=False)
            if baseline.ndim != 2:
                raise ValueError(f"a {baseline.ndim}-D array, not a 2-D map")
        except (OSError, ValueError) as exc:
            maps.append(("baseline map", ".baseline", f"{case.baseline}: {exc}"))
        else:
            maps.append(("baseline map", ".baseline", baseline))
    shown: list[tuple[str, Path | str]] = []
    for caption, suffix, cam in maps:
        if isinstance(cam, str):
            shown.append((caption, cam))
            continue
        path = folder / failure_name(case, suffix)
        ensure_inside(folder, path)
        rgb = case_picture(image, cam, result.view_box, case)
        write_atomic(path, encode_image(_small(rgb), "png"))
        shown.append((caption, path))
    return shown


def _case(result: CaseResult, page_dir: Path, folder: Path, compare: bool) -> str:
    case = result.case
    verdict = (
        '<span class="pass">pass</span>' if result.passed else '<span class="fail">FAIL</span>'
    )
    facts = [f"image {esc(case.image)}"]
    if result.prediction:
        facts.append(f"top-1 {esc(named(result.prediction))}")
    if result.explained:
        facts.append(f"map of {esc(named(result.explained))}")
    if result.error:
        facts.append(f'<span class="fail">{esc(result.error)}</span>')
    rows = []
    for outcome in result.outcomes:
        mark = (
            '<td class="pass">pass</td>'
            if outcome.passed
            else f'<td class="fail">{"ERROR" if outcome.error else "FAIL"}</td>'
        )
        rows.append(
            f"<tr><td>{esc(outcome.expectation)}</td><td>{esc(outcome.measured_text)}</td>"
            f"<td>{esc(outcome.threshold_text)}</td>{mark}</tr>"
        )
    figures = []
    for caption, picture in _pictures(result, folder, compare):
        if isinstance(picture, Path):
            link = link_from(page_dir, picture)
            inner = f'<a href="{link}"><img src="{link}" alt="{esc(caption)}"></a>'
        else:
            inner = f'<div class="missing">{esc(picture)}</div>'
        figures.append(f"<figure>{inner}<figcaption>{esc(caption)}</figcaption></figure>")
    state = "passed" if result.passed else "failed"
    return (
        f'<section class="case {state}" data-case="{case.index}"><h2>{verdict} '
        f"{esc(case.label)}</h2><p>{' &middot; '.join(facts)}</p>"
        "<table><thead><tr><th>expectation</th><th>measured</th><th>threshold</th>"
        f"<th>result</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<div class="pictures">{"".join(figures)}</div></section>'
    )


def build_check_page(report: CheckReport, path: Path) -> str:
    """The page for ``report``, its pictures written into ``pictures_folder(path)``."""
    folder = pictures_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    compare = not report.updated_baselines
    ordered = [r for r in report.results if not r.passed] + [r for r in report.results if r.passed]
    cases = "\n".join(_case(r, path.parent, folder, compare) for r in ordered)
    title = f"camcli check {report.spec.path}"
    model = (
        f"model {report.loaded.name}, {report.explainer.method_name} at "
        f"{report.explainer.layer_label}, input {report.loaded.preprocess.crop_size} px"
    )
    body = (
        f"<header><h1>{esc(title)}</h1><p>{esc(model)}</p>"
        f'<p id="summary" class="{"pass" if report.exit_code == 0 else "fail"}">'
        f"{esc(summary_line(report))}</p></header>\n{cases}"
    )
    return page(title, body)


def write_check_report(report: CheckReport, path: Path) -> None:
    """Write the check page to ``path`` (atomically) and its pictures beside it."""
    path = Path(path)
    write_atomic(path, build_check_page(report, path).encode("utf-8"))
