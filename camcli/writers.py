"""Results -> files, atomically (temp file + rename), never outside the output folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import secrets
import tempfile
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from camcli.errors import UsageError

FORMATS = ("jpg", "png", "npy")
JPEG_QUALITY = 92


def output_path(
    out: Path, rel: PurePosixPath, method: str, tag: str, fmt: str, layer: str | None = None
) -> Path:
    """``OUT/<rel>.<method>[.<layer>].<tag>.<fmt>``: ``a/x.jpg`` -> ``OUT/a/x.jpg.gradcam.top1.png``.

    The input's own extension stays in the name, so ``x.jpg`` and ``x.png`` never collide.
    ``layer`` (the layers the user chose, ``layer3`` or ``layer3+layer4``; None for the
    automatic one) keeps the maps of different layers apart: ``x.jpg.gradcam.layer3.top1.jpg``.
    """
    parts = [rel.name, method, *([layer_slug(layer)] if layer else []), slug(tag), fmt]
    path = out.joinpath(*rel.parent.parts, ".".join(parts))
    ensure_inside(out, path)
    return path


def layer_slug(layer: str, limit: int = 64) -> str:
    """A layer name for a file name: dots kept (``features.28``); a long one shortened + hashed.

    File names have a 255-byte limit that several long dotted names would pass.
    """
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "_", layer).strip("._") or "layer"
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(layer.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{text[: limit - 11]}-{digest}"


def slug(text: str, fallback: str = "map") -> str:
    """A file-name-safe version of ``text``: letters, digits, ``_+-`` only."""
    return re.sub(r"[^A-Za-z0-9_+-]+", "_", text).strip("_") or fallback


def ensure_inside(out: Path, path: Path) -> None:
    root = os.path.realpath(out)
    target = os.path.realpath(path.parent)
    if os.path.commonpath([root, target]) != root:
        raise UsageError(f"{path}: refusing to write outside the output folder {out}")


def create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty ``folder/.<name>.<random>.tmp`` opened for writing: (fd, path).

    Created with mode 0o666 so the kernel applies the umask, as for any file a program
    writes (``mkstemp`` would make every output 0600).
    """
    for _ in range(100):
        path = folder / f".{name[:100]}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        return fd, path
    raise FileExistsError(errno.EEXIST, "no free temp file name", str(folder))


def write_atomic(path: Path, data: bytes, temp_dir: Path | None = None) -> None:
    """Write ``data`` to a temp file, then rename it to ``path``: no reader sees half a file.

    The temp file goes in ``temp_dir`` (the output folder's own, on the same file system, so
    that a run killed with SIGKILL leaves its temp files where the next run finds them), or
    beside ``path``. It is removed on any failure, a full disk included.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(temp_dir or path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def unwritable_reason(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` (a file to write, or with ``folder`` a folder to fill) cannot be written;
    None when it can.

    Nothing is left behind: the nearest part of ``path`` that exists must be a folder in
    which a file can be created (a probe file is created there and removed at once). That
    is the only test that holds for root too, who passes every permission check but still
    cannot write below a regular file, on a read-only file system or in ``/proc``.
    """
    if folder and path.exists() and not path.is_dir():
        return "exists and is not a directory"
    if not folder and path.is_dir():
        return "is a directory; give a file name such as report.xml"
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be written: {existing} is not a directory"
    try:
        handle, probe = tempfile.mkstemp(prefix=".camcli-probe.", dir=existing)
    except OSError as exc:
        return f"cannot be written: cannot create a file in {existing} ({exc.strerror or exc})"
    os.close(handle)
    os.unlink(probe)
    return None
