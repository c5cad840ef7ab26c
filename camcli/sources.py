"""Command-line arguments (files, directories, globs, ``-`` for stdin) -> ordered image sources.

Each source carries ``rel``: the relative path its outputs are named after. Files found in a
directory (or by a glob) keep their path below that directory (or below the glob's fixed
prefix), so the tree is mirrored in the output folder; files named directly keep their name.
Two sources that would share a ``rel`` get ``~2``, ``~3``... appended, in input order.

Anything that is not a directory is listed as it is (a FIFO, a dangling symlink, a file named
on the command line that does not exist): the loader refuses it with one per-file error.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO

from camcli.errors import UsageError
from camcli.images import IMAGE_SUFFIXES, display_path

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Source", "collect_sources", "is_input_name",
           "is_video_name"]  # fmt: skip

#: Files ``camcli run`` reads as videos (``camcli.video``): folders and globs find them beside
#: images.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Source:
    """One input image: where to read it and the relative name its outputs take."""

    path: Path
    rel: PurePosixPath
    #: Why this input cannot be read, known while listing (a folder that cannot be listed);
    #: it becomes the input's error record, like a file that fails to load.
    error: str | None = None

    @property
    def display(self) -> str:
        """The path as text that prints anywhere (bytes that are not UTF-8 as ``\\xNN``)."""
        return display_path(self.path)


def is_video_name(name: str | os.PathLike[str]) -> bool:
    return os.path.splitext(os.fspath(name))[1].lower() in VIDEO_SUFFIXES


def is_input_name(name: str) -> bool:
    """An image's or a video's name: what a folder walk picks up."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES


class _Excluded:
    """Folders whose contents are never listed (the output folder), compared by real path."""

    def __init__(self, folders: Iterable[str | os.PathLike[str]]) -> None:
        self.folders = [os.path.realpath(f) for f in folders]

    def __contains__(self, path: str | os.PathLike[str]) -> bool:
        if not self.folders:
            return False
        real = os.path.realpath(path)
        return any(os.path.commonpath([real, folder]) == folder for folder in self.folders)


Found = tuple[Path, PurePosixPath, str | None]  # path, relative name, error or None


def _walk_dir(root: Path, excluded: _Excluded) -> Iterator[Found]:
    """Image files below ``root``, sorted, hidden files and folders and excluded ones skipped.

    A folder below ``root`` that cannot be listed (permissions, I/O) is yielded with its
    reason, so its images are one error record instead of vanishing silently.
    """
    if root in excluded:
        return
    unlisted: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=False):
        yield from _unlisted(unlisted, root)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and os.path.join(dirpath, d) not in excluded
        )
        for name in sorted(filenames):
            if name.startswith(".") or not is_input_name(name):
                continue
            path = Path(dirpath) / name
            yield path, PurePosixPath(path.relative_to(root).as_posix()), None
    yield from _unlisted(unlisted, root)


def _unlisted(errors: list[OSError], root: Path) -> Iterator[Found]:
    """The folders os.walk could not list so far (the root's own error is left to the caller's
    "no images found"), emptying ``errors``."""
    for exc in errors:
        folder = Path(exc.filename) if exc.filename else root
        if folder != root:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            rel = PurePosixPath(folder.relative_to(root).as_posix())
            yield folder, rel, f"cannot list this folder ({reason})"
    errors.clear()


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
        if path.is_dir():
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


def _stdin_paths(stream: TextIO) -> Iterator[str]:
    """One path per non-blank line; read as bytes where possible, so a name that is not
    UTF-8 arrives as the same surrogate-escaped text a directory walk gives."""
    buffer = getattr(stream, "buffer", None)
    for line in buffer if buffer is not None else stream:
        text = os.fsdecode(line.strip()) if isinstance(line, bytes) else line.strip()
        if text:
            yield text


def collect_sources(
    args: Sequence[str],
    stdin: TextIO | None = None,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> list[Source]:
    """Expand arguments into image sources, in argument order, duplicates dropped.

    Nothing inside an ``exclude`` folder is listed (walks prune it; glob and stdin matches in
    it are dropped). A named path that does not exist, like a bad line on stdin, becomes a
    source that fails when it is loaded, so one bad input never stops a batch. Raises
    UsageError for a glob that matches nothing, or when no image is found at all.
    """
    excluded = _Excluded(exclude)
    found: list[Found] = []
    for arg in args:
        if arg == "-":
            for line in _stdin_paths(stdin if stdin is not None else sys.stdin):
                if Path(line) not in excluded:
                    found.append((Path(line), PurePosixPath(Path(line).name), None))
            continue
        path = Path(arg)
        if path.is_dir():
            found.extend(_walk_dir(path, excluded))
        elif any(c in _GLOB_CHARS for c in arg) and not os.path.lexists(path):
            matches = _expand_glob(arg)
            if not matches:
                raise UsageError(f"{display_path(arg)}: no file matches this pattern")
            found.extend((match, rel, None) for match, rel in matches if match not in excluded)
        elif path not in excluded:
            found.append((path, PurePosixPath(path.name), None))

    sources: list[Source] = []
    seen_paths: set[str] = set()
    seen_rels: set[str] = set()
    for path, rel, error in found:
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
        sources.append(Source(path=path, rel=unique, error=error))
    if not sources:
        shown = ", ".join(display_path(a) for a in args)
        raise UsageError(f"no images found in {shown}" if args else "no input given")
    return sources
