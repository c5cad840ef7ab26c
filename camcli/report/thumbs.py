"""Small JPEG thumbnails for the run report, made once and kept in ``OUT/report-thumbs/``.

A thumbnail is named after what it shows, ``<sha256(real path, size, mtime) of its
source>-<width>x<height>.jpg``, so a report rebuilt over the same files makes none again, and
a source that changed gets a new one. The folder is not hidden (CI artifact uploaders skip hidden files) and holds nothing
but thumbnails: the ones no report refers to any more are removed when it is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camcli.errors import InputError
from camcli.images import load_image
from camcli.sources import is_video_name
from camcli.writers import encode_image, ensure_inside, write_atomic

THUMBS = "report-thumbs"
SIZE = 160  # the longest side, in pixels
# A thumbnail's source may be any image the run read: no larger a decode than a run allows.
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class Thumb:
    name: str  # the file name in the thumbnails folder: <key>-<width>x<height>.jpg
    width: int
    height: int


_NAME = re.compile(r"([0-9a-f]{24})-(\d+)x(\d+)\.jpg")


def thumb_key(source: str) -> str | None:
    """What names the thumbnail of ``source`` (a real path): a digest of the path, its size
    and its mtime; None when it is not a file."""
    try:
        info = os.stat(source)
    except OSError:
        return None
    key = f"{source}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha256(os.fsencode(key)).hexdigest()[:24]


def _make(source: str, key: str, folder: Path, temp_dir: Path) -> Thumb | str:
    """The thumbnail of ``source`` written into ``folder``, or the reason it cannot be made."""
    try:
        if is_video_name(source):  # a video's still: its first frame
            from camcli.video.decode import first_frame

            image = Image.fromarray(first_frame(source, max_pixels=MAX_PIXELS))
        else:
            image = load_image(source, max_pixels=MAX_PIXELS, draft=SIZE)
    except InputError as exc:
        return exc.message
    image.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    thumb = Thumb(f"{key}-{image.width}x{image.height}.jpg", image.width, image.height)
    write_atomic(folder / thumb.name, encode_image(np.asarray(image), "jpg"), temp_dir)
    return thumb


def make_thumbs(
    out: Path, sources: Iterable[str], temp_dir: Path, workers: int = 4
) -> dict[str, Thumb | str]:
    """A thumbnail (or the reason there is none) for each source (a real path), in
    ``OUT/report-thumbs/``; thumbnails that none of ``sources`` needs are removed.

    The thumbnails that exist are found by listing the folder once (their names hold their
    sizes), so a report rebuilt over 10,000 inputs opens no image."""
    folder = out / THUMBS
    found: dict[str, Thumb] = {}
    if folder.is_dir():
        for entry in os.scandir(folder):
            match = _NAME.fullmatch(entry.name)
            if match and entry.is_file():
                found[match[1]] = Thumb(entry.name, int(match[2]), int(match[3]))
    keys = {source: thumb_key(source) for source in dict.fromkeys(sources)}
    missing = {s: k for s, k in keys.items() if k is not None and k not in found}
    if missing:
        folder.mkdir(exist_ok=True)
        ensure_inside(out, folder / "x")
    done: dict[str, Thumb | str] = {}
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="camcli-thumb") as pool:
        jobs = {s: pool.submit(_make, s, k, folder, temp_dir) for s, k in missing.items()}
        for source, key in keys.items():
            if key is None:
                done[source] = "no such file"
            elif key in found:
                done[source] = found[key]
            else:
                done[source] = jobs[source].result()
    keep = {t.name for t in done.values() if isinstance(t, Thumb)}
    if folder.is_dir():
        for old in os.scandir(folder):
            if old.name not in keep and old.name.endswith(".jpg") and old.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(old.path)
    return done
