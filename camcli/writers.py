"""Results -> files, atomically (temp file + rename), never outside the output folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from camcli.errors import UsageError

FORMATS = ("jpg", "png", "npy")
MANIFEST = "manifest.jsonl"
JPEG_QUALITY = 92


def output_path(out: Path, rel: PurePosixPath, method: str, tag: str, fmt: str) -> Path:
    """``OUT/<rel>.<method>.<tag>.<fmt>``: ``a/x.jpg`` -> ``OUT/a/x.jpg.gradcam.top1.png``.

    The input's own extension stays in the name, so ``x.jpg`` and ``x.png`` never collide.
    """
    name = f"{rel.name}.{method}.{slug(tag)}.{fmt}"
    path = out.joinpath(*rel.parent.parts, name)
    ensure_inside(out, path)
    return path


def slug(text: str, fallback: str = "map") -> str:
    """A file-name-safe version of ``text``: letters, digits, ``_+-`` only."""
    return re.sub(r"[^A-Za-z0-9_+-]+", "_", text).strip("_") or fallback


def ensure_inside(out: Path, path: Path) -> None:
    root = os.path.realpath(out)
    target = os.path.realpath(path.parent)
    if os.path.commonpath([root, target]) != root:
        raise UsageError(f"{path}: refusing to write outside the output folder {out}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# Lone surrogates, and the line breaks str.splitlines() honours that json.dumps leaves raw.
_ESCAPED = re.compile("[\x85\u2028\u2029\ud800-\udfff]")


def json_line(record: Any) -> str:
    """``record`` as one line of JSON (no newline): UTF-8 text where possible.

    A lone surrogate (how Python keeps the undecodable bytes of a file name) cannot be encoded
    as UTF-8, so it is written as a ``\\udcXX`` escape, which ``json.loads`` turns back into
    the same ``str``. A NaN or infinite float raises ValueError: JSON has no such numbers, and
    one in a record is a bug upstream, not something to write down.
    """
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    return _ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encode_image(rgb: np.ndarray, fmt: str) -> bytes:
    """RGB uint8 (H, W, 3) or gray (H, W) -> JPEG or PNG bytes (the one RGB->BGR flip)."""
    pixels = rgb[:, :, ::-1] if rgb.ndim == 3 else rgb
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == "jpg" else []
    ok, buffer = cv2.imencode(f".{fmt}", np.ascontiguousarray(pixels), params)
    if not ok:
        raise OSError(f"cannot encode {fmt}")
    return buffer.tobytes()


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def read_manifest(out: Path) -> dict[tuple[str, str | None], dict[str, Any]]:
    """An earlier run's records keyed by (input, target tag), for ``--skip-existing``."""
    records: dict[tuple[str, str | None], dict[str, Any]] = {}
    path = out / MANIFEST
    if not path.is_file():
        return records
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "input" in record:
                records[(record["input"], record.get("target"))] = record
    return records


class ManifestWriter:
    """Appends records to a hidden temp file; ``close`` renames it to ``manifest.jsonl``.

    Lines are flushed as they come, so the memory used stays flat however many images run.
    """

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / MANIFEST
        fd, self._tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=out)
        self._handle = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._handle.closed:
            self.close()
