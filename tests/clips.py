"""Synthetic video clips for the video tests, encoded with PyAV in the test: gray noise with a
square whose colour is its class (``synthetic.CLASSES``) moving left to right, optionally
rotated by display metadata and with a tone as audio."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

import synthetic

SIDE = 16


def square_frames(frames: int, width: int, height: int, label: int = 0,
                  seed: int = 0) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:  # fmt: skip
    """The frames (H, W, 3) uint8 and the square's box (x0, y0, x1, y1) in each."""
    rng = np.random.default_rng(seed)
    colour = (synthetic._HUES[label] * 230).astype(np.uint8)
    images, boxes = [], []
    y0 = (height - SIDE) // 2
    for i in range(frames):
        image = rng.normal(90, 25, (height, width, 3)).clip(0, 255).astype(np.uint8)
        x0 = round(i * (width - SIDE) / max(1, frames - 1))
        image[y0 : y0 + SIDE, x0 : x0 + SIDE] = colour
        images.append(image)
        boxes.append((x0, y0, x0 + SIDE, y0 + SIDE))
    return images, boxes


def write_clip(path: Path, images: list[np.ndarray], rate: int = 10, rotation: int = 0,
               audio: str | None = "aac", codec: str = "libx264",
               options: dict | None = None) -> Path:  # fmt: skip
    """``images`` as a clip at ``rate`` fps, with a 440 Hz tone in ``audio`` (None: silent)."""
    height, width = images[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = container.add_stream(audio, rate=16000)
            sound.layout = "mono"
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            samples = 16000 * len(images) // rate
            tone = (0.3 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)
            fmt = sound.codec_context.format.name
            data = tone[None]  # planar or packed, one channel lays out alike
            if fmt.startswith("s16"):
                data = (tone * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def probe(path: Path) -> dict:
    """What a video file is: codec, pixel format, size, rate, its frames (RGB), audio codec
    and seconds, and whether its index (moov) comes before the media (faststart)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {
            "codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt,
            "width": video.width, "height": video.height, "rate": float(video.average_rate),
        }  # fmt: skip
        info["frames"] = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        info["audio"] = audio.codec_context.name if audio is not None else None
        info["audio_seconds"] = None
        if audio is not None:
            ticks = sum(p.duration or 0 for p in container.demux(audio))
            info["audio_seconds"] = ticks * float(audio.time_base)
    head = path.read_bytes()[:4096]
    info["faststart"] = b"moov" in head and (
        b"mdat" not in head or head.find(b"moov") < head.find(b"mdat")
    )
    return info
