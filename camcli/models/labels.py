"""``--labels FILE`` -> class names."""

from __future__ import annotations

import os
from pathlib import Path

from camcli.errors import UsageError
from camcli.images import NotRegularFile, open_regular

# Real label lists are kilobytes (ImageNet-21k's is about 300 KB); this is only a guard
# against reading a disk image or a log by mistake.
_LABELS_MAX_BYTES = 16 * 1024 * 1024


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line, from a regular UTF-8 text file (a byte-order mark is fine).

    The file is opened non-blocking and checked with ``fstat`` before reading, so that a FIFO
    or a device (``/dev/zero``) is refused at once instead of blocking or reading forever.
    """
    path = Path(path)
    try:
        file = open_regular(path)
    except NotRegularFile:
        raise UsageError(
            f"{path}: not a regular file (--labels takes a text file, one class name per line)"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read labels file ({exc.strerror or exc})") from None
    with file:
        info = os.fstat(file.fileno())
        if info.st_size > _LABELS_MAX_BYTES:
            raise UsageError(
                f"{path}: {info.st_size / 2**20:.0f} MiB is too large for a labels file "
                f"(at most {_LABELS_MAX_BYTES // 2**20} MiB, one class name per line)"
            )
        try:
            data = file.read(_LABELS_MAX_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read labels file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path}: labels file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise UsageError(f"{path}: labels file is empty (expected one class name per line)")
    return labels
