"""A video's maps over time: smoothed (``--smooth-frames``), streamed into one ``(frames, h, w)``
float32 ``.npy`` per target, and its per-frame predictions into a ``.jsonl`` sidecar.

Both files grow under a temp name in the output folder's temp folder, a frame at a time (a
two-hour video is never held in memory), and are renamed into place by ``commit``: a stop
halfway leaves nothing under the final names.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from camcli.machine_output import json_line
from camcli.writers import create_temp


class MapSmoother:
    """The mean of the last ``k`` maps given (``k=1``: each map as it is)."""

    def __init__(self, k: int = 1) -> None:
        self.window: deque[np.ndarray] = deque(maxlen=max(1, k))

    def __call__(self, cam: np.ndarray) -> np.ndarray:
        self.window.append(cam.astype(np.float32, copy=False))
        if len(self.window) == 1:
            return self.window[0]
        return np.mean(np.stack(self.window), axis=0, dtype=np.float32)


class _TempFile:
    def __init__(self, path: Path, temp_dir: Path | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.temp = create_temp(temp_dir or path.parent, path.name)
        self.handle: BinaryIO = os.fdopen(fd, "wb")

    def commit(self) -> None:
        try:
            self.finish()
            self.handle.close()
            os.replace(self.temp, self.path)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


class NpyStream(_TempFile):
    """``(frames, h, w)`` float32 written one frame at a time; the header, which holds the
    frame count, is written last (its size is fixed up front, so the frames never move)."""

    def __init__(self, path: Path, temp_dir: Path | None, shape: tuple[int, int]) -> None:
        super().__init__(path, temp_dir)
        self.shape = shape
        self.count = 0
        # Room for the largest count's header; numpy pads every header to a multiple of 64.
        self.header_size = len(self._header(10**15))
        self.handle.write(b"\0" * self.header_size)

    def _header(self, count: int) -> bytes:
        header = {"descr": "<f4", "fortran_order": False, "shape": (count, *self.shape)}
        buffer = _Bytes()
        np.lib.format.write_array_header_1_0(buffer, header)
        return buffer.data

    def write(self, cam: np.ndarray) -> None:
        self.handle.write(np.ascontiguousarray(cam, dtype="<f4").tobytes())
        self.count += 1

    def finish(self) -> None:
        header = self._header(self.count)
        # Padded to the reserved size with spaces before the header's closing newline, as
        # numpy pads it; readers take the header's length from its own length field.
        padded = header[:-1].ljust(self.header_size - 1, b" ") + b"\n"
        length = self.header_size - 10
        padded = padded[:8] + length.to_bytes(2, "little") + padded[10:]
        self.handle.seek(0)
        self.handle.write(padded)


class _Bytes:
    def __init__(self) -> None:
        self.data = b""

    def write(self, chunk: bytes) -> None:
        self.data += chunk


class PredictionLog(_TempFile):
    """The sidecar: one JSON line per explained frame (frame, time, class, label, score)."""

    def write(self, entry: dict[str, Any]) -> None:
        self.handle.write((json_line(entry) + "\n").encode("utf-8"))
