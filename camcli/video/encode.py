"""Frames -> an MP4 a browser plays, written atomically, with the source's audio.

Video: H.264 (libx264, which PyAV's wheels bundle) in yuv420p, or VP9 where a build lacks
libx264 (Chrome and Firefox play VP9 in MP4 too); the moov atom first (``faststart``) so a
page starts playing before the file has loaded. yuv420p needs even sides: an odd side is
padded by one row or column repeating the edge. Audio: the source's first audio stream,
remuxed packet by packet when MP4 and browsers take its codec (AAC, MP3, Opus, FLAC), else
decoded and re-encoded to AAC; interleaved with the video as the frames are written.

The file is written under a temp name in the output folder's temp folder and renamed into
place by ``commit``; ``abort`` (any failure, an interrupt) removes it: nothing half-written
ever has the final name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from camcli.video.decode import VideoInfo
from camcli.writers import create_temp

#: Audio codecs copied as they are: MP4 holds them and browsers play them.
COPIED_AUDIO = frozenset({"aac", "mp3", "opus", "flac"})
_VIDEO_CODECS = ("libx264", "libvpx-vp9")


def video_codec() -> str:
    """The first encoder of ``_VIDEO_CODECS`` this FFmpeg build has."""
    for name in _VIDEO_CODECS:
        try:
            av.codec.Codec(name, "w")
        except (av.error.FFmpegError, ValueError):
            continue
        return name
    raise RuntimeError("this FFmpeg build has neither libx264 nor libvpx-vp9")


class _Audio:
    """The source's first audio stream into ``output``, up to a given time on each call."""

    def __init__(self, source: Path, output: av.container.OutputContainer) -> None:
        self.input = av.open(os.fspath(source), "r")
        self.output = output
        stream = self.input.streams.audio[0]
        self.source_stream = stream
        name = stream.codec_context.name
        self.copy = name in COPIED_AUDIO
        if self.copy:
            self.stream = output.add_stream_from_template(stream)
            self.note = f"{name}, copied"
        else:
            self.stream = output.add_stream("aac", rate=stream.rate or 48000)
            # AAC takes a named layout; a stream that only counts its channels gets one.
            channels = stream.codec_context.channels or 2
            self.stream.layout = "mono" if channels == 1 else "stereo"
            self.resampler = av.AudioResampler(format="fltp", layout=self.stream.layout,
                                               rate=self.stream.rate)  # fmt: skip
            self.note = f"aac, re-encoded from {name}"
        self.packets: Iterator[av.Packet] = self._packets()
        self.held: av.Packet | None = None

    def _packets(self) -> Iterator[av.Packet]:
        try:
            for packet in self.input.demux(self.source_stream):
                if packet.size and packet.pts is not None:
                    yield packet
        except (av.error.FFmpegError, OSError):
            return  # a cut stream: the audio before the cut is kept

    def until(self, seconds: float | None) -> None:
        """Mux the audio up to ``seconds`` (None: all that is left)."""
        while True:
            packet = self.held or next(self.packets, None)
            self.held = None
            if packet is None:
                break
            if seconds is not None and float(packet.pts * packet.time_base) > seconds:
                self.held = packet
                return
            if self.copy:
                packet.stream = self.stream
                self.output.mux(packet)
            else:
                for frame in packet.decode():
                    for resampled in self.resampler.resample(frame):
                        self.output.mux(self.stream.encode(resampled))
        if not self.copy and seconds is None:  # the encoder's last frames, once
            with contextlib.suppress(av.error.FFmpegError, ValueError):
                for resampled in self.resampler.resample(None):
                    self.output.mux(self.stream.encode(resampled))
            self.output.mux(self.stream.encode(None))

    def close(self) -> None:
        self.input.close()


class VideoWriter:
    """One overlay video for ``path``: ``write`` each frame, then ``commit`` (or ``abort``)."""

    def __init__(self, path: Path, temp_dir: Path | None, info: VideoInfo, source: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.temp = create_temp(temp_dir or path.parent, path.name)
        os.close(fd)
        self.audio: _Audio | None = None
        self.rate = info.rate
        try:
            self.output = av.open(os.fspath(self.temp), "w", format="mp4",
                                  options={"movflags": "+faststart"})  # fmt: skip
            codec = video_codec()
            stream = self.output.add_stream(codec, rate=info.rate)
            stream.width = info.width + info.width % 2
            stream.height = info.height + info.height % 2
            stream.pix_fmt = "yuv420p"
            # Frame i at i / rate: the muxer may pick a finer time base for the stream.
            self.frame_base = Fraction(1, 1) / info.rate
            stream.time_base = self.frame_base
            if codec == "libx264":
                stream.options = {"preset": "veryfast", "crf": "20"}
            self.stream = stream
            if info.audio is not None:
                self.audio = _Audio(source, self.output)
        except BaseException:
            self.abort()
            raise
        self.count = 0

    @property
    def audio_note(self) -> str | None:
        return None if self.audio is None else self.audio.note

    def write(self, rgb: np.ndarray) -> None:
        height, width = rgb.shape[:2]
        if width % 2 or height % 2:
            rgb = cv2.copyMakeBorder(rgb, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        frame.time_base = self.frame_base
        self.output.mux(self.stream.encode(frame))
        self.count += 1
        if self.audio is not None:
            self.audio.until(self.count / float(self.rate))

    def commit(self) -> None:
        """Finish the file (the encoder's last frames, the rest of the audio) and rename it to
        its final name."""
        try:
            self.output.mux(self.stream.encode(None))
            if self.audio is not None:
                self.audio.until(None)
                self.audio.close()
            self.output.close()
            os.replace(self.temp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the file: close what is open and remove the temp file."""
        for closing in (self.audio, getattr(self, "output", None)):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temp)
