"""Small JPEG thumbnails for the run report, made once and kept in ``OUT/report-thumbs/``.

A thumbnail is named after what it shows: ``sha256(real path, size, mtime)`` of its source,
so a report rebuilt over the same files makes none again, and a source that changed gets a
new one. The folder is not hidden (CI artifact uploaders skip hidden files) and holds nothing
but thumbnails: the ones no report refers to any more are removed when it is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camcli.errors import InputError
from camcli.images import load_image
from camcli.writers import encode_image, ensure_inside, write_atomic

THUMBS = "report-thumbs"
SIZE = 160  # the longest side, in pixels
# A thumbnail's source may be any image the run read: no larger a decode than a run allows.
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class Thumb:
    name: str  # the file name in the thumbnails folder
    width: int
    height: int


def thumb_name(source: Path) -> str | None:
    """The thumbnail's file name for ``source``, or None when it is not a file."""
    try:
        info = os.stat(source)
    except OSError:
        return None
    key = f"{os.path.realpath(source)}\0{info.st_size}\0{info.st_mtime_ns}"
    digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:24]
    return f"{digest}.jpg"


def _make(source: Path, target: Path, temp_dir: Path) -> Thumb | str:
    """The thumbnail of ``source`` written as ``target`` (or read back when it exists), or the
    reason it cannot be made."""
    if target.exists():
        try:
            with Image.open(target) as done:
                return Thumb(target.name, done.width, done.height)
        except OSError:
            pass  # a broken leftover: made again
    try:
        image = load_image(source, max_pixels=MAX_PIXELS, draft=SIZE)
    except InputError as exc:
        return exc.message
    image.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    write_atomic(target, encode_image(np.asarray(image), "jpg"), temp_dir)
    return Thumb(target.name, image.width, image.height)


def make_thumbs(
    out: Path, sources: Iterable[Path], temp_dir: Path, workers: int = 4
) -> dict[Path, Thumb | str]:
    """A thumbnail (or the reason there is none) for each source, in ``OUT/report-thumbs/``;
    thumbnails of earlier reports that none of ``sources`` needs are removed."""
    folder = out / THUMBS
    wanted = {}
    for source in dict.fromkeys(sources):
        name = thumb_name(source)
        wanted[source] = name
    if any(wanted.values()):
        folder.mkdir(exist_ok=True)
        ensure_inside(out, folder / "x")
    done: dict[Path, Thumb | str] = {}
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="camcli-thumb") as pool:
        jobs = {
            source: pool.submit(_make, source, folder / name, temp_dir)
            for source, name in wanted.items()
            if name is not None
        }
        for source, name in wanted.items():
            done[source] = jobs[source].result() if name is not None else "no such file"
    keep = {t.name for t in done.values() if isinstance(t, Thumb)}
    if folder.is_dir():
        for old in folder.iterdir():
            if old.name not in keep and old.suffix == ".jpg" and old.is_file():
                with contextlib.suppress(OSError):
                    old.unlink()
    return done
