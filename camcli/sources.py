"""Command-line arguments (files, directories, globs, ``-`` for stdin) -> ordered image sources.

Each source carries ``rel``: the relative path its outputs are named after. Files found in a
directory (or by a glob) keep their path below that directory (or below the glob's fixed
prefix), so the tree is mirrored in the output folder; files named directly keep their name.
Two sources that would share a ``rel`` get ``~2``, ``~3``... appended, in input order.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from camcli.errors import UsageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
     ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".ico", ".avif", ".heic"}
)  # fmt: skip
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One input image: where to read it and the relative name its outputs take."""

    path: Path
    rel: PurePosixPath

    @property
    def display(self) -> str:
        return str(self.path)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk_dir(root: Path) -> Iterable[tuple[Path, PurePosixPath]]:
    """Image files below ``root``, sorted, hidden files and folders skipped."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_name(name):
                continue
            path = Path(dirpath) / name
            yield path, PurePosixPath(path.relative_to(root).as_posix())


def _glob_prefix(pattern: str) -> Path:
    """The part of a glob pattern before its first wildcard component."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(c in _GLOB_CHARS for c in part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _expand_glob(pattern: str) -> list[tuple[Path, PurePosixPath]]:
    prefix = _glob_prefix(pattern)
    found = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if not path.is_file():
            continue
        try:
            rel = path.relative_to(prefix).as_posix()
        except ValueError:
            rel = path.name
        found.append((path, PurePosixPath(rel)))
    return found


def _safe_rel(rel: PurePosixPath, fallback: str) -> PurePosixPath:
    """Never let a relative name climb out of the output folder."""
    parts = [p for p in rel.parts if p not in ("", ".", "..", "/")]
    return PurePosixPath(*parts) if parts else PurePosixPath(fallback)


def collect_sources(args: Sequence[str], stdin: TextIO | None = None) -> list[Source]:
    """Expand arguments into image sources, in argument order, duplicates dropped.

    Raises UsageError for a named path that does not exist, a glob that matches nothing, or
    when no image is found at all. Paths read from stdin (``-``) are taken as they are: one
    that does not exist becomes a per-file error later, so one bad line never stops a batch.
    """
    found: list[tuple[Path, PurePosixPath]] = []
    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            for line in stream:
                line = line.strip()
                if line:
                    found.append((Path(line), PurePosixPath(Path(line).name)))
            continue
        path = Path(arg)
        if path.is_dir():
            found.extend(_walk_dir(path))
        elif path.exists():
            found.append((path, PurePosixPath(path.name)))
        elif any(c in _GLOB_CHARS for c in arg):
            matches = _expand_glob(arg)
            if not matches:
                raise UsageError(f"{arg}: no file matches this pattern")
            found.extend(matches)
        else:
            raise UsageError(f"{arg}: no such file or directory")

    sources: list[Source] = []
    seen_paths: set[str] = set()
    seen_rels: set[str] = set()
    for path, rel in found:
        key = os.path.abspath(path)
        if key in seen_paths:
            continue
        seen_paths.add(key)
        rel = _safe_rel(rel, path.name or "input")
        unique, n = rel, 1
        while unique.as_posix().lower() in seen_rels:
            n += 1
            unique = rel.with_name(f"{rel.name}~{n}")
        seen_rels.add(unique.as_posix().lower())
        sources.append(Source(path=path, rel=unique))
    if not sources:
        raise UsageError("no images found in " + ", ".join(args) if args else "no input given")
    return sources
