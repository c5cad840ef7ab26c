"""How long a run report of many inputs takes to build, and to open in headless Chromium.

Makes N inputs (small random PNGs) and an output folder as ``camcli run -k 2`` leaves it (two
overlays per input and their manifest records, written directly: the model is not what is
measured), then times ``write_run_report`` cold (every thumbnail made) and warm (all found),
and, with Chromium, the page from navigation to its first grid row and its load event.

    python benchmarks/report_scale.py --inputs 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from camcli.report.run import write_run_report

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def make_folder(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    out = root / "out"
    out.mkdir()
    with (out / "manifest.jsonl").open("w") as manifest:
        for i in range(n):
            name = f"in/img{i:05d}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name)
            for rank in (1, 2):
                output = f"out/img{i:05d}.png.gradcam.top{rank}.jpg"
                shutil.copyfile(root / name, root / output)
                record = {
                    "input": name, "status": "ok", "error": None, "outputs": [output],
                    "method": "gradcam", "layer": "layer4", "target": f"top{rank}",
                    "class_index": int(rng.integers(1000)), "label": f"class {i % 37}",
                    "score": round(float(rng.random()), 6),
                    "settings": {"model": "resnet50", "weights": "IMAGENET1K_V2"},
                }  # fmt: skip
                manifest.write(json.dumps(record) + "\n")
    return out


def open_page(page_path: Path, chromium: str) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        began = time.perf_counter()
        page.goto(page_path.as_uri(), wait_until="commit")
        page.wait_for_selector("#grid .row")
        first_row = time.perf_counter() - began
        page.wait_for_load_state("load")
        loaded = time.perf_counter() - began
        browser.close()
    return first_row, loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10000)
    parser.add_argument("--size", type=int, default=64, help="side of each input, in pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = make_folder(Path(tmp), args.inputs, args.size)
        os.chdir(tmp)
        for label in ("cold", "warm"):
            began = time.perf_counter()
            path, shown, _ = write_run_report(Path("out"))
            seconds = time.perf_counter() - began
            print(f"write_run_report {label}: {seconds:.1f} s ({shown} inputs)")
        print(f"report.html: {path.stat().st_size / 1e6:.1f} MB; thumbnails: "
              f"{len(list((out / 'report-thumbs').iterdir()))}")  # fmt: skip
        if args.chromium:
            first_row, loaded = open_page(out / "report.html", args.chromium)
            print(f"chromium: first row after {first_row:.2f} s, load event {loaded:.2f} s")
        else:
            print("no chromium: page not opened", file=sys.stderr)


if __name__ == "__main__":
    main()
