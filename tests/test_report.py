"""HTML reports: the run page (camcli run --report, camcli report OUT), the check page, the
evaluation page, their escaping; and the run page opened in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import camcli.report.run
import synthetic
from camcli.cli import app
from camcli.outfolder import OutputFolder
from camcli.report.evaluation import (
    BOTTOM,
    HEIGHT,
    LEFT,
    RIGHT,
    TOP,
    WIDTH,
    write_evaluation_report,
)
from camcli.report.page import data_island, esc, url
from camcli.report.thumbs import SIZE, THUMBS
from conftest import SYNTHETIC_MODEL, tiny_args

runner = CliRunner()
HOSTILE = "<b>\"bad'&.png"  # a file name that is HTML, quotes and all
NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # a file name whose bytes are not UTF-8


def run_camcli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camcli", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def rows_of(page: str) -> list[dict]:
    match = re.search(r'<script type="application/json" id="rows">(.*?)</script>', page, re.S)
    assert match, "no data island"
    return json.loads(match[1])["rows"]


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def on_disk(out: Path, link: str) -> Path:
    """A relative link of the page as the file it names (its bytes unquoted)."""
    assert "://" not in link and not link.startswith("/")
    return Path(os.fsdecode(os.path.join(os.fsencode(out), unquote_to_bytes(link))))


@pytest.fixture(scope="module")
def run_out(tiny_checkpoint, tmp_path_factory) -> dict:
    """``camcli run in -o out -k 2 --report`` (tiny model) over 6 shapes, a non-UTF-8 name and
    an unreadable file with an HTML file name, run from ``work`` with relative paths."""
    work = tmp_path_factory.mktemp("report-run")
    images, _, _ = synthetic.dataset(6, seed=5)
    for i, img in enumerate(images):
        folder = work / "in" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"shape{i}.png")
    Image.fromarray(images[0]).save(work / "in" / "a" / NON_UTF8)
    (work / "in" / "b" / HOSTILE).write_bytes(b"not an image at all")
    result = run_camcli("run", "in", "-o", "out", "-k", "2", "-f", "png", "-f", "npy", "--report",
                    *tiny_args(tiny_checkpoint), cwd=work)  # fmt: skip
    assert result.returncode == 1, result.stderr  # one input failed
    assert "report: out/report.html" in result.stderr
    return {"work": work, "out": work / "out", "stderr": result.stderr}


def test_run_report_shows_failures_first_then_every_input_with_its_maps(run_out):
    out = run_out["out"]
    page = (out / "report.html").read_text(encoding="utf-8")
    records = manifest(out)

    # The failure, escaped, in a section that comes before the maps.
    assert page.index('<section id="failures">') < page.index('<section id="maps">')
    failures = page[page.index('<section id="failures">') : page.index('<section id="maps">')]
    assert "<h2>1 failed</h2>" in failures
    assert f"<td>in/b/{esc(HOSTILE)}</td>" in failures
    assert "&lt;b&gt;&quot;bad&#x27;&amp;.png" in failures
    assert "<td>not an image, or a format camcli does not read</td>" in failures
    assert "<b>" not in page  # the name never reaches the page as markup
    assert "tinycamnet" in page.lower() and "gradcam at features" in page

    rows = rows_of(page)
    assert [r["name"] for r in rows] == [
        "in/a/caf\\xe9.png", "in/a/shape1.png", "in/a/shape3.png", "in/a/shape5.png",
        "in/b/shape0.png", "in/b/shape2.png", "in/b/shape4.png",
    ]  # fmt: skip
    ok = {(r["input"], r["target"]): r for r in records if r["status"] == "ok"}
    for row in rows:
        name = row["name"].replace("\\xe9", "\udce9")
        assert [m["target"] for m in row["maps"]] == ["top1", "top2"]
        for cell in row["maps"]:
            record = ok[(name, cell["target"])]
            assert cell["label"] == record["label"] and cell["score"] == record["score"]
            overlay = on_disk(out, cell["href"])
            assert overlay.name.endswith(f".gradcam.{cell['target']}.png") and overlay.is_file()
        assert row["score"] == max(m["score"] for m in row["maps"])
        original = on_disk(out, row["original"]["href"])
        assert original.resolve() == (run_out["work"] / name).resolve()

    # Every picture is a small thumbnail inside OUT; thumbnails are no manifest outputs.
    thumbs = sorted((out / THUMBS).iterdir())
    assert len(thumbs) == 7 + 7 * 2
    cells = [row["original"] for row in rows] + [m for row in rows for m in row["maps"]]
    assert sorted({on_disk(out, c["src"]) for c in cells}) == thumbs
    for cell in cells:
        with Image.open(on_disk(out, cell["src"])) as thumb:
            assert max(thumb.size) <= SIZE and thumb.size == (cell["w"], cell["h"])
    assert not any(THUMBS in o or "report" in o for r in records for o in r["outputs"])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_camcli_report_rebuilds_the_page_from_the_manifest_without_remaking_thumbnails(
    run_out, monkeypatch
):
    out = run_out["out"]
    first = (out / "report.html").read_text(encoding="utf-8")
    made = {p.name: p.stat().st_mtime_ns for p in (out / THUMBS).iterdir()}
    (out / "report.html").unlink()
    monkeypatch.chdir(run_out["work"])
    result = runner.invoke(app, ["report", "out"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "wrote out/report.html (7 inputs, 1 failed)\n"
    assert (out / "report.html").read_text(encoding="utf-8") == first
    assert {p.name: p.stat().st_mtime_ns for p in (out / THUMBS).iterdir()} == made

    # From another folder the overlays are still found in OUT; the originals (named as the
    # run was given them, relative to its folder) are not, and say so instead of a picture.
    monkeypatch.chdir(out.parent.parent)
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    rows = rows_of((out / "report.html").read_text(encoding="utf-8"))
    assert all(r["original"] == {"href": None, "note": "original not found"} for r in rows)
    assert all(on_disk(out, m["src"]).is_file() for r in rows for m in r["maps"])
    monkeypatch.chdir(run_out["work"])
    assert runner.invoke(app, ["report", "out"]).exit_code == 0  # the originals' back


def test_camcli_report_merges_the_shards_parts_first(run_out, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(run_out["out"], out)
    (out / "report.html").unlink()
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[::2]))
    (out / "manifest.shard-1-of-2.jsonl").write_text("".join(lines[1::2]))
    monkeypatch.chdir(run_out["work"])
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert not (out / "manifest.shard-1-of-2.jsonl").exists()
    assert len(manifest(out)) == len(lines)

    def seen(folder: Path) -> list:
        rows = rows_of((folder / "report.html").read_text(encoding="utf-8"))
        return [
            (r["name"], [(m["target"], m["label"], m["score"]) for m in r["maps"]]) for r in rows
        ]

    assert seen(out) == seen(run_out["out"])
    assert f"<td>in/b/{esc(HOSTILE)}</td>" in (out / "report.html").read_text(encoding="utf-8")


def test_camcli_report_refuses_what_is_not_a_finished_output_folder(run_out, tmp_path):
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert missing.stderr == f"error: {tmp_path / 'nope'}: no such folder\n"
    empty = runner.invoke(app, ["report", str(tmp_path)])
    assert empty.exit_code == 2
    assert f"{tmp_path}: no manifest.jsonl (not the output folder of a camcli run)" in empty.stderr
    assert list(tmp_path.iterdir()) == []

    with OutputFolder(run_out["out"]):  # a run is writing into it
        busy = runner.invoke(app, ["report", str(run_out["out"])])
    assert busy.exit_code == 2
    assert f"{run_out['out']}: in use by another camcli run (PID {os.getpid()})" in busy.stderr

    sharded = runner.invoke(app, ["run", "x.png", "--shard", "0/2", "--report"])
    assert sharded.exit_code == 2
    assert "--report with --shard" in sharded.stderr and "camcli report OUT" in sharded.stderr


def test_text_and_links_are_escaped_whatever_a_file_name_holds():
    nasty = "</script><script>alert(1)</script>\u2028&\"'" + NON_UTF8
    island = data_island("rows", {"name": nasty})
    inner = island[island.index(">") + 1 : -len("</script>")]
    assert "<" not in inner and ">" not in inner and "&" not in inner
    assert json.loads(inner) == {"name": nasty}
    assert esc(nasty) == (
        "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;\u2028&amp;&quot;&#x27;caf\ufffd.png"
    )
    assert url(f"a b/<x>:y#?{NON_UTF8}") == "a%20b/%3Cx%3E%3Ay%23%3Fcaf%E9.png"
    assert url("javascript:alert(1)") == "javascript%3Aalert%281%29"


def test_evaluation_page_has_the_metric_table_and_the_curves(tmp_path):
    result = {
        "model": "resnet18",
        "images": ["a/cat.jpg", "<dog>.png", "c.jpg"],
        "methods": {
            "gradcam": {
                "metrics": {
                    "deletion_auc": {
                        "mean": 0.12345,
                        "low": 0.1,
                        "high": 0.15,
                        "values": [0.1, 0.12, 0.15],
                    },
                    "insertion_auc": {
                        "mean": 0.6,
                        "low": 0.5,
                        "high": 0.7,
                        "values": [0.5, 0.6, 0.7],
                    },
                },
                "curves": {
                    "deletion": [[0.0, 0.8], [0.5, 0.2], [1.0, 0.0]],
                    "insertion": [[0.0, 0.1], [0.5, 0.5], [1.0, 0.8]],
                },
            },
            "<score&cam>": {
                "metrics": {
                    "deletion_auc": {
                        "mean": 0.2,
                        "low": 0.18,
                        "high": 0.22,
                        "values": [0.2, 0.18, 0.22],
                    },
                },
                "curves": {"deletion": [[0.0, 0.8], [1.0, 0.4]], "insertion": []},
            },
        },
    }
    path = tmp_path / "eval.html"
    write_evaluation_report(result, path)
    page = path.read_text(encoding="utf-8")
    assert "<title>camcli evaluate: resnet18</title>" in page

    table = page[page.index('<table id="metrics">') : page.index("</table>") + 8]
    body = ET.fromstring(table.replace("<br>", "<br/>"))
    head = [th.text for th in body.find("thead/tr")]
    assert head == ["method", "deletion_auc", "insertion_auc"]
    rows = body.findall("tbody/tr")
    assert [r.find("th").text for r in rows] == ["gradcam", "<score&cam>"]
    cells = [["".join(td.itertext()) for td in r.findall("td")] for r in rows]
    missing = "n/a[n/a, n/a]"
    assert cells == [["0.1235[0.1, 0.15]", "0.6[0.5, 0.7]"], ["0.2[0.18, 0.22]", missing]]

    svgs = re.findall(r'<svg class="curve".*?</svg>', page, re.S)
    assert len(svgs) == 2
    deletion = ET.fromstring(svgs[0])
    assert deletion.get("id") == "curve-deletion"
    lines = deletion.findall("{http://www.w3.org/2000/svg}polyline")
    assert [p.get("data-method") for p in lines] == ["gradcam", "<score&cam>"]
    points = [float(v) for p in lines[0].get("points").split() for v in p.split(",")]
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    middle = (LEFT + (right - LEFT) * 0.5, bottom - (bottom - TOP) * 0.25)
    assert points == pytest.approx([LEFT, TOP, *middle, right, bottom], abs=0.05)
    insertion = ET.fromstring(svgs[1])
    assert len(insertion.findall("{http://www.w3.org/2000/svg}polyline")) == 1  # one is empty
    assert "<td>&lt;dog&gt;.png</td><td>0.12</td><td>0.18</td>" in page
    assert "<dog>" not in page and "<score&cam>" not in page


@pytest.fixture
def check_dir(tiny_model, tmp_path) -> Path:
    """A check spec over 3 shapes: a passing case, a case whose box is an empty corner, and a
    case compared with its baseline."""
    import torch

    torch.save(tiny_model.state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "labels.txt").write_text("\n".join(synthetic.CLASSES) + "\n")
    images, labels, boxes = synthetic.dataset(3, seed=7)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"shape{i}.png")
    x0, y0, x1, y1 = boxes[1]
    corner = [0, 0, 10, 10] if (x0 + x1) / 2 > 32 and (y0 + y1) / 2 > 32 else [54, 54, 64, 64]
    names = [synthetic.CLASSES[int(v)] for v in labels]
    spec = (
        f'[model]\nmodel = {json.dumps(SYNTHETIC_MODEL)}\ncheckpoint = "tiny.pt"\n'
        'labels = "labels.txt"\ninput_size = 64\nfit = "stretch"\ndevice = "cpu"\n'
        f'[[case]]\nname = "good"\nimage = "shape0.png"\nexpect_class = "{names[0]}"\n'
        f"box = {list(boxes[0])}\n"
        f'[[case]]\nname = "<corner>"\nimage = "shape1.png"\nbox = {corner}\n'
        f'[[case]]\nname = "same"\nimage = "shape2.png"\nbaseline = "base/2.npy"\n'
    )
    (tmp_path / "spec.toml").write_text(spec)
    made = runner.invoke(app, ["check", str(tmp_path / "spec.toml"), "--update-baselines"])
    assert made.exit_code == 1, made.output  # "<corner>" fails; the baseline is written
    assert (tmp_path / "base" / "2.npy").is_file()
    return tmp_path


def test_check_report_lists_failing_cases_first_with_expectations_and_pictures(check_dir):
    path = check_dir / "reports" / "check.html"
    result = runner.invoke(app, ["check", str(check_dir / "spec.toml"), "--report", str(path)])
    assert result.exit_code == 1, result.output
    assert f"report: {path}" in result.stderr
    page = path.read_text(encoding="utf-8")
    assert re.findall(r'data-case="(\d+)"', page) == ["2", "1", "3"]  # the failing one first
    sections = dict(
        re.findall(r'<section class="case \w+" data-case="(\d)">(.*?)</section>', page, re.S)
    )
    assert "FAIL</span> case 2 (&#x27;&lt;corner&gt;&#x27;)" in sections["2"]
    assert re.search(
        r"<td>pointing</td><td>peak \(\d+, \d+\) outside</td><td>peak inside the box</td>"
        r'<td class="fail">FAIL</td>',
        sections["2"],
    )
    assert "<td>class</td><td>rank 1" in sections["1"] and 'class="pass">pass</td>' in sections["1"]
    assert "<td>baseline-pearson</td><td>r 1.000</td>" in sections["3"]

    folder = check_dir / "reports" / "check_files"
    links = re.findall(r'<img src="([^"]+)" alt="([^"]+)">', page)
    assert [(link, alt) for link, alt in links] == [
        ("check_files/02-corner.png", "current map"),
        ("check_files/01-good.png", "current map"),
        ("check_files/03-same.png", "current map"),
        ("check_files/03-same.baseline.png", "baseline map"),
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.rsplit("/")[-1] for p, _ in links)
    picture = np.asarray(Image.open(folder / "02-corner.png"))
    assert picture.shape == (64, 64, 3)
    assert (picture == [0, 255, 0]).all(axis=2).any()  # the box, in green


def test_check_report_path_that_cannot_be_written_is_exit_2_before_anything_runs(check_dir):
    result = runner.invoke(app, ["check", str(check_dir / "spec.toml"), "--report", str(check_dir)])
    assert result.exit_code == 2
    assert f"--report {check_dir}: is a directory" in result.stderr


# --- in a real browser ------------------------------------------------------------------


def chromium() -> str:
    """The system's Chromium; without one the browser tests skip, except in CI (.ci/run
    installs it), where they fail."""
    found = os.environ.get("CAMCLI_CHROMIUM") or shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium in CI: .ci/run installs Debian's chromium package")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return found


FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def wait_for_images(page) -> None:
    """Until every image of the page has loaded or failed. Awaited through load/error events:
    ``wait_for_function``'s polling builds its predicate with eval, which the report's
    Content-Security-Policy (rightly) refuses whenever the first check finds an image still
    loading."""
    page.evaluate(
        "() => Promise.all(Array.from(document.images).map(i => i.complete ? null : "
        "new Promise(done => { i.addEventListener('load', done); "
        "i.addEventListener('error', done); })))"
    )


def broken_images(page) -> list[str]:
    wait_for_images(page)
    return page.evaluate(
        "Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)"
    )


@pytest.mark.browser
def test_the_run_report_in_chromium_loads_every_image_and_filters(run_out, browser):
    out = run_out["out"]
    rows = rows_of((out / "report.html").read_text(encoding="utf-8"))
    page = browser.new_page(viewport={"width": 1200, "height": 6000})  # every row in view
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((out / "report.html").as_uri())
    assert page.locator("#grid .row").count() == 7
    assert page.locator("img").count() == 21 and broken_images(page) == []
    first = page.evaluate("document.querySelector('body > section').id")
    assert first == "failures"
    top = page.evaluate("[document.getElementById('failures'), document.getElementById('maps')]"
                        ".map(e => e.getBoundingClientRect().top)")  # fmt: skip
    assert top[0] < top[1]
    assert html.unescape(page.text_content("#failures td")) == f"in/b/{HOSTILE}"

    label = rows[0]["maps"][1]["label"]
    wanted = [r["name"] for r in rows if any(m["label"] == label for m in r["maps"])]
    page.fill("#filter", label.upper())
    assert page.locator("#grid .row .name").all_text_contents() == wanted
    assert page.text_content("#count") == f"{len(wanted)} of 7 inputs"

    page.fill("#filter", "")
    page.select_option("#sort", "score-asc")
    by_score = sorted(rows, key=lambda r: r["score"])
    assert page.locator("#grid .row .name").all_text_contents() == [r["name"] for r in by_score]
    least = by_score[3]["score"]
    page.fill("#min-score", str(least))
    shown = page.locator("#grid .row .name").all_text_contents()
    assert shown == [r["name"] for r in by_score if r["score"] >= least] and len(shown) >= 4
    assert errors == []


@pytest.mark.browser
def test_the_run_report_pages_through_rows(run_out, browser, monkeypatch, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_out["out"], out)  # the records still say out/...: found in the copy
    monkeypatch.chdir(run_out["work"])
    monkeypatch.setattr(camcli.report.run, "PAGE_ROWS", 3)
    camcli.report.run.write_run_report(out)
    page = browser.new_page(viewport={"width": 1200, "height": 4000})
    page.goto((out / "report.html").as_uri())
    names = []
    for number in (1, 2, 3):
        assert page.text_content("#page") == f"page {number} of 3"
        names += page.locator("#grid .row .name").all_text_contents()
        assert broken_images(page) == []
        if number < 3:
            page.click("#next")
    assert page.is_disabled("#next") and len(names) == 7 == len(set(names))
    assert names == [r["name"] for r in rows_of((out / "report.html").read_text("utf-8"))]
