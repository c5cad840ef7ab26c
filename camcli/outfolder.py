"""The output folder of a run: checked before any work, locked, its temp files, its manifest.

``OUT/.camcli.lock``
    held with ``flock`` for the whole run and holding its PID: a second run into the same
    folder stops at once ("in use by another camcli run (PID n)") instead of both writing.
``OUT/.camcli-tmp/``
    every temp file of the run, renamed into place when whole. A run killed with SIGKILL
    leaves its temp files there; the next run (holding the lock) empties the folder first.
``OUT/manifest.jsonl``
    a log: each record is appended (and flushed) as its outputs are written, after the
    records of earlier runs, and the log is compacted at the end of a run. Records are keyed
    by (input, method, layer, target); the last record of a key wins (an earlier one keeps only
    the files the later did not rewrite, if any: other formats), and a record for a target
    drops the error record of the same (input, method, layer) before it: the image works now.
    Readers take the last record per key, so the log a killed run left reads right too.

Shards (``--shard I/N``, several machines or processes writing into one shared ``OUT`` at once)
each write their own manifest part ``OUT/manifest.shard-I-of-N.jsonl`` (the same log and
compaction), hold their own lock ``OUT/.camcli.shard-I-of-N.lock`` (the same shard twice: exit
2) and temp folder ``OUT/.camcli-tmp.shard-I-of-N/``. The common ``.camcli.lock`` is held
*shared* by every running shard and *exclusively* by a plain run or ``camcli manifest merge``,
never waiting: shards run beside each other, but never beside a plain run or a merge. A plain
run first merges the parts into ``manifest.jsonl`` (``merge_parts``), as the merge command does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from camcli.errors import CamcliError, UsageError
from camcli.machine_output import json_line
from camcli.writers import create_temp

if TYPE_CHECKING:
    from camcli.shards import Shard

MANIFEST = "manifest.jsonl"
LOCK_FILE = ".camcli.lock"
TEMP_DIR = ".camcli-tmp"
_PART = re.compile(r"manifest\.shard-(\d+)-of-(\d+)\.jsonl")

Record = dict[str, Any]
Key = tuple[str, Any, Any, Any]


def record_key(record: Record) -> Key:
    return (record["input"], record.get("method"), record.get("layer"), record.get("target"))


def compact(records: Iterable[Record]) -> list[Record]:
    """The last record per key, in the order the keys first came (see the module docstring).

    An earlier record of the key stays, listing only its files that the later one did not
    rewrite, when there are any: a run with ``-f npy`` after one with ``-f jpg`` leaves the
    overlays on disk, and every file keeps a record saying what made it.
    """
    groups: dict[tuple[str, Any, Any], dict[Any, list[Record]]] = {}
    for record in records:
        *image, target = record_key(record)
        group = groups.setdefault(tuple(image), {})
        if target is not None:
            group.pop(None, None)
        claimed = set(record.get("outputs") or ())
        kept = []
        for earlier in group.get(target, []):
            rest = [o for o in earlier.get("outputs") or () if o not in claimed]
            if rest:
                kept.append({**earlier, "outputs": rest})
        group[target] = [*kept, record]
    return [r for group in groups.values() for rs in group.values() for r in rs]


def _read_records(path: Path) -> Iterator[Record]:
    """The records of a manifest file; a line that is not a record (cut short) is skipped."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("input"), str):
                yield record


def read_manifest(out: Path, part: str | None = None) -> dict[Key, Record]:
    """The records of ``OUT/manifest.jsonl`` by key, the last one of each key; with ``part``
    (a shard's manifest part name), that part's records come after them."""
    records = list(_read_records(out / MANIFEST))
    if part is not None:
        records += _read_records(out / part)
    return {record_key(r): r for r in compact(records)}


def part_name(shard: Shard) -> str:
    """The manifest part of a shard: ``manifest.shard-I-of-N.jsonl``."""
    return f"manifest.{shard.name}.jsonl"


def manifest_parts(out: Path) -> list[Path]:
    """The shards' manifest parts in ``out``, in shard order (by N, then I)."""
    found = []
    for path in Path(out).glob("manifest.shard-*-of-*.jsonl"):
        match = _PART.fullmatch(path.name)
        if match:
            found.append(((int(match[2]), int(match[1])), path))
    return [path for _, path in sorted(found)]


def _write_manifest(path: Path, records: Iterable[Record], temp_dir: Path) -> None:
    """Write ``records`` as ``path``, atomically (a temp file in ``temp_dir``, renamed)."""
    fd, tmp = create_temp(temp_dir, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            for record in records:
                handle.write(json_line(record).encode("utf-8") + b"\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _lock_shared(fd: int, patience: float = 0.5) -> None:
    """A shared flock, or BlockingIOError. A shard that leaves last holds the lock exclusively
    for a moment (to remove the file): that is waited out, a plain run's lock is not."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class OutputFolder:
    """``OUT`` for one run: ``open`` checks, creates and locks it; ``close`` releases it.

    Folders that ``open`` created and the run left empty are removed again, so a run that
    stops at a setup error (an unknown model...) leaves nothing behind.
    """

    def __init__(self, out: Path, shard: Shard | None = None) -> None:
        self.out = Path(out)
        self.shard = shard
        self.part = None if shard is None else part_name(shard)
        self.manifest = self.out / (self.part or MANIFEST)
        self.temp_dir = self.out / (TEMP_DIR if shard is None else f"{TEMP_DIR}.{shard.name}")
        self._lock_path = self.out / LOCK_FILE
        self._shard_lock_path = None if shard is None else self.out / f".camcli.{shard.name}.lock"
        self._created: list[Path] = []
        self._lock: int | None = None
        self._shard_lock: int | None = None
        self._log: int | None = None
        self.merged: tuple[int, int] | None = None  # (parts, records) a plain open merged

    def open(self) -> OutputFolder:
        """Raises UsageError (exit 2) naming the folder and the reason, before any work."""
        try:
            self._make_dirs()
            if self._shard_lock_path is None:
                self._lock = self._acquire(self._lock_path)
            else:
                for _ in range(3):
                    try:
                        self._lock = self._acquire(self._lock_path, shared=True)
                        break
                    except FileNotFoundError:
                        # Another shard, leaving, removed the empty folder it had made after
                        # ours saw it: make it again.
                        self._make_dirs()
                if self._lock is None:
                    self._lock = self._acquire(self._lock_path, shared=True)
                self._shard_lock = self._acquire(self._shard_lock_path)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.temp_dir)  # what a killed run left
            if self.shard is None:
                self._remove_stale()
            self.temp_dir.mkdir()
            if self.shard is None:
                self.merged = self._merge()
            self._log = self._open_log()
        except OSError as exc:
            self.close()
            raise UsageError(
                f"{self.out}: cannot write to the output folder ({_reason(exc)})"
            ) from None
        except BaseException:
            self.close()
            raise
        return self

    def _remove_stale(self) -> None:
        """What killed runs left (this run holds the folder alone: no shard runs)."""
        for stale in self.out.glob(".manifest.*.tmp"):  # left by camcli before 0.x
            stale.unlink()
        for stale in self.out.glob(f"{TEMP_DIR}.shard-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.out.glob(".camcli.shard-*.lock"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def _merge(self) -> tuple[int, int]:
        """The shards' manifest parts joined into ``manifest.jsonl`` (compacted, the parts'
        records after its own, in shard order), then the parts removed: (parts, records).

        The merged manifest is in place before any part goes, so a crash loses no record (the
        next merge reads them again; the last record per key is the same)."""
        parts = manifest_parts(self.out)
        if not parts:
            return 0, 0
        records = list(_read_records(self.out / MANIFEST))
        for part in parts:
            records += _read_records(part)
        merged = compact(records)
        try:
            _write_manifest(self.out / MANIFEST, merged, self.temp_dir)
        except OSError as exc:
            raise self._manifest_error(exc) from None  # a plain run: self.manifest is it
        for part in parts:
            part.unlink()
        return len(parts), len(merged)

    def _make_dirs(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"{self.out}: not a folder (a file of that name is in the way)")
        missing = []
        for folder in (self.out, *self.out.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise UsageError(f"{self.out}: cannot create the output folder ({folder} "
                                     "is a file)")  # fmt: skip
                break
            missing.append(folder)
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # made by someone else meanwhile: not ours to remove
                continue
            self._created.append(folder)

    def _acquire(self, path: Path, *, shared: bool = False) -> int:
        """The lock file's descriptor, locked (exclusively, or shared by the running shards),
        with this PID in it; never waits: UsageError naming the PID that holds it."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                if shared:
                    _lock_shared(fd)
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                words = os.read(fd, 32).decode("ascii", "replace").split()
                os.close(fd)
                pid = words[0] if words else "unknown"
                raise UsageError(f"{self.out}: in use by another camcli run (PID {pid})") from None
            # The run before may have removed the file between our open and flock.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                if shared:
                    # Shards write side by side: a fixed width, so the file always holds one
                    # whole PID, whichever shard wrote last.
                    os.pwrite(fd, f"{os.getpid():>12}\n".encode("ascii"), 0)
                    os.ftruncate(fd, 13)
                else:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
                return fd
            os.close(fd)

    def _open_log(self) -> int:
        """The manifest opened for appending, a last line cut short by a crash removed."""
        fd = os.open(self.manifest, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        size = os.fstat(fd).st_size
        end = size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(fd, end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end != size:
            os.ftruncate(fd, end)
        return fd

    def append(self, records: Iterable[Record]) -> None:
        """Add records to the manifest now (a crash keeps them); a full disk adds none."""
        assert self._log is not None, "open() first"
        data = "".join(json_line(r) + "\n" for r in records).encode("utf-8")
        start = os.lseek(self._log, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._log, view) :]
        except BaseException as exc:
            # Half a line would glue the next record onto it: back to the last whole line.
            with contextlib.suppress(OSError):
                os.ftruncate(self._log, start)
            if isinstance(exc, OSError):
                raise self._manifest_error(exc) from None
            raise

    def compact(self) -> None:
        """Rewrite the manifest as its last record per key, atomically."""
        if self._log is None:
            return
        records = compact(_read_records(self.manifest))
        try:
            _write_manifest(self.manifest, records, self.temp_dir)
        except OSError as exc:
            raise self._manifest_error(exc) from None

    def previous(self) -> dict[Key, Record]:
        """The earlier records by key (``--skip-existing``): the manifest's, and for a shard
        its own part's after them."""
        return read_manifest(self.out, self.part)

    def _manifest_error(self, exc: OSError) -> CamcliError:
        return CamcliError(f"{self.manifest}: cannot write the manifest ({_reason(exc)})")

    def close(self) -> None:
        """Release the folder: temp files and lock removed, empty folders it made too."""
        if self._log is not None:
            os.close(self._log)
            self._log = None
            with contextlib.suppress(OSError):
                if self.manifest.stat().st_size == 0:
                    self.manifest.unlink()
        if self._shard_lock is not None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.temp_dir)
            assert self._shard_lock_path is not None
            with contextlib.suppress(FileNotFoundError):
                self._shard_lock_path.unlink()
            os.close(self._shard_lock)
            self._shard_lock = None
        if self._lock is not None:
            if self.shard is None:
                last = True
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(self.temp_dir)
            else:
                # The last shard out removes the common lock file: it alone gets it exclusively.
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                try:
                    fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    last = True
                except BlockingIOError:
                    last = False
            if last:
                # Removed while still locked: a run that opened this file meanwhile sees it gone.
                with contextlib.suppress(FileNotFoundError):
                    self._lock_path.unlink()
            os.close(self._lock)
            self._lock = None
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created = []

    def __enter__(self) -> OutputFolder:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_output_folder(out: Path, shard: Shard | None = None) -> None:
    """UsageError (exit 2) now, before the model loads, if ``out`` cannot take a run's outputs:
    a file in the way, a folder that cannot be written, another run using it. Opens and
    releases the folder, so nothing is left behind."""
    OutputFolder(out, shard).open().close()


def merge_manifest(out: Path) -> tuple[int, int]:
    """``camcli manifest merge OUT``: the shards' manifest parts joined into
    ``OUT/manifest.jsonl`` and removed; returns (parts, records in the merged manifest).

    UsageError (exit 2) when ``out`` is not a folder or a run (a shard) is using it."""
    out = Path(out)
    if not out.is_dir():
        reason = "not a folder" if out.exists() else "no such folder"
        raise UsageError(f"{out}: {reason}")
    folder = OutputFolder(out).open()
    try:
        assert folder.merged is not None
        return folder.merged
    finally:
        folder.close()
