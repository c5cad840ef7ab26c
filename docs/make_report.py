"""Regenerate docs/report.png: the page `camcli run sample_images --report` writes.

The sample photos plus one file that is not an image (so the failure section shows), run with
`--weights none` (no download: the labels are a random model's), three targets per photo,
then the page opened in the system's headless Chromium and captured whole.
Run: uv run --extra test python docs/make_report.py (needs Debian's `chromium`).
"""

import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "sample_images", work / "sample_images",
                        ignore=shutil.ignore_patterns("*.md"))  # fmt: skip
        (work / "sample_images" / "notes.jpg").write_text("a text file with a .jpg name\n")
        subprocess.run(
            [sys.executable, "-m", "camcli", "run", "sample_images", "--weights", "none",
             "--top-k", "3", "--report", "--quiet"],
            cwd=work,
            check=False,  # exit 1: notes.jpg fails, as intended
        )  # fmt: skip
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=FLAGS
            )
            page = browser.new_page(viewport={"width": 900, "height": 1000})
            page.goto((work / "camcli-out" / "report.html").as_uri())
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            shot = page.screenshot(full_page=True)
            browser.close()
    # 256 colours: a quarter of the size, the same picture to the eye.
    picture = Image.open(io.BytesIO(shot)).convert("RGB").quantize(256, Image.Quantize.MEDIANCUT)
    picture.save(ROOT / "docs" / "report.png", optimize=True)


if __name__ == "__main__":
    main()
