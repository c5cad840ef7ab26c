"""A video file -> its frames in display orientation, with the frames to explain marked.

Every check a file can fail happens in ``open_video``, before any frame is decoded, with a
one-line reason naming the file (not a video, no video stream, a codec this FFmpeg cannot
decode, a declared frame size over ``--max-pixels``, no frames). A stream that breaks after
some frames were decoded is not an error: ``VideoReader.cut`` says where and why, and the
frames before the cut are kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from camcli.errors import InputError
from camcli.images import DEFAULT_MAX_PIXELS, NotRegularFile, display_path, open_regular

#: The rate assumed when a file declares none (some AVI and raw streams).
FALLBACK_RATE = Fraction(25)


@dataclass(frozen=True)
class Sampling:
    """Which frames are explained: every ``every``-th, or ``fps`` per second of the video
    (None: every frame). The others carry the last explained frame's map."""

    every: int = 1
    fps: float | None = None


@dataclass(frozen=True)
class VideoInfo:
    """What the file declares: the size as displayed (rotation applied), the frame rate, the
    frame count (0 when the container does not say) and the rotation in degrees
    (counter-clockwise, as FFmpeg's display matrix gives it)."""

    width: int
    height: int
    rate: Fraction
    frames: int
    rotation: int
    codec: str
    audio: str | None  # the first audio stream's codec, None without one


@dataclass
class Frame:
    index: int
    time: float
    rgb: np.ndarray  # (H, W, 3) uint8, display orientation
    explain: bool


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, av.error.EOFError):
        return "no frames (the file ends before its first)"
    if isinstance(exc, av.error.InvalidDataError):
        return "not a video, or truncated before its first frame (FFmpeg: invalid data)"
    text = str(exc).strip() or type(exc).__name__
    return f"cannot read video ({text})"


def _quarter_turns(rotation: float) -> int:
    return round(rotation / 90.0) % 4


class VideoReader:
    """An opened video file; ``frames`` decodes it once, in order. Close it (a context
    manager) to release the file."""

    def __init__(self, path: Path, max_pixels: int | None = None) -> None:
        self.path = path
        self.name = display_path(path)
        self.cut: str | None = None
        self.decoded = 0
        limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        try:
            open_regular(path).close()  # a FIFO or a device never blocks, a folder is named
            if os.path.getsize(path) == 0:
                raise InputError(f"{self.name}: empty file")
            self.container = av.open(os.fspath(path), "r")
        except NotRegularFile as exc:
            raise InputError(f"{self.name}: {exc}") from None
        except InputError:
            raise
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            raise InputError(f"{self.name}: {_reason(exc)}") from None
        try:
            self.info = self._probe(limit)
        except BaseException:
            self.container.close()
            raise

    def _probe(self, limit: int) -> VideoInfo:
        container = self.container
        if not container.streams.video:
            raise InputError(f"{self.name}: no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        codec = context.name if context is not None else "unknown"
        if context is None or not stream.width or not stream.height:
            raise InputError(f"{self.name}: cannot decode its video (unknown codec {codec!r})")
        width, height = stream.width, stream.height
        if limit and width * height > limit:
            raise InputError(
                f"{self.name}: {width} x {height} = {width * height / 1e6:.1f} MP frames are "
                f"over the {limit / 1e6:.1f} MP limit (--max-pixels)"
            )
        stream.thread_type = "AUTO"  # FFmpeg's frame threads: decoding keeps up with the model
        self.stream = stream
        self._frames = self._decode()
        try:
            first = next(self._frames)
        except StopIteration:
            raise InputError(
                f"{self.name}: no frames" + (f" ({self.cut})" if self.cut else "")
            ) from None
        self._first = first
        turns = _quarter_turns(first.rotation or 0)
        if turns % 2:
            width, height = height, width
        rate = stream.average_rate or stream.guessed_rate or FALLBACK_RATE
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return VideoInfo(width, height, Fraction(rate), int(stream.frames or 0),
                         turns * 90, codec, audio)  # fmt: skip

    def _decode(self) -> Iterator[av.VideoFrame]:
        try:
            for packet in self.container.demux(self.stream):
                yield from packet.decode()
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self.cut = f"the stream breaks after frame {self.decoded}: {str(exc).strip()}"

    def frames(self, sampling: Sampling = Sampling()) -> Iterator[Frame]:
        """Every frame as RGB in display orientation, the ones ``sampling`` picks marked to
        explain (always the first). Ends early, with ``cut`` set, where the stream breaks."""
        rate = float(self.info.rate)
        turns = self.info.rotation // 90
        next_time = 0.0
        index = 0
        pending = [self._first]
        while True:
            frame = pending.pop() if pending else next(self._frames, None)
            if frame is None:
                break
            time = round(index / rate, 6)
            if sampling.fps:
                explain = index == 0 or time + 1e-6 >= next_time
                if explain:
                    next_time = (next_time if index else time) + 1.0 / sampling.fps
            else:
                explain = index % max(1, sampling.every) == 0
            rgb = frame.to_ndarray(format="rgb24")
            if turns:
                rgb = np.ascontiguousarray(np.rot90(rgb, turns))
            self.decoded = index + 1
            yield Frame(index, time, rgb, explain)
            index += 1
        declared = self.info.frames
        if self.cut is None and declared and index < declared * 0.98 - 1:
            self.cut = f"the stream ends after {index} of the {declared} frames it declares"

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def first_frame(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """A video's first frame, RGB in display orientation (the report's still of it). Raises
    InputError as ``VideoReader`` does."""
    with VideoReader(Path(path), max_pixels) as reader:
        return next(reader.frames()).rgb
