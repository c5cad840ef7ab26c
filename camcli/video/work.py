"""One video through ``camcli run``: frames -> the batched explain step -> overlay videos, maps
and predictions, with decoding, explaining and encoding overlapping.

Three stages run at once over bounded queues, so memory stays that of a few batches of frames
however long the video: a thread decodes (and makes the model's view of each frame to
explain), this thread explains a batch of ``batch_size`` sampled frames with one forward and
one backward pass (``Explainer.explain``, as for images), and a thread smooths the maps,
carries the last one over the frames not explained, draws the overlays and encodes them.

Every file of the video is written under a temp name and renamed into place only once the
whole video is done; any failure or stop (Ctrl-C, SIGTERM, a full disk) removes them all, so
a video is all its files, with its records, or nothing.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from camcli.config import RunConfig
from camcli.errors import InputError
from camcli.explain import Explainer, to_model_input
from camcli.images import Box, model_view
from camcli.render import overlay
from camcli.targets import Target
from camcli.video.decode import Frame, Sampling, VideoInfo, VideoReader
from camcli.video.encode import VideoWriter
from camcli.video.maps import MapSmoother, NpyStream, PredictionLog

Record = dict[str, Any]
_END = object()


@dataclass
class _Explained:
    """A batch's frames in order, and per explained frame (in order) its maps (T, h, w),
    classes (T,) and scores (T,)."""

    frames: list[Frame]
    maps: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


class _Stage(threading.Thread):
    """A thread running ``body``; its exception is kept for the main thread to raise."""

    def __init__(self, name: str, body: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.body = body
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.body()
        except BaseException as exc:
            self.error = exc


class VideoJob:
    """One video's outputs (``paths``: per target tag, per format ``mp4``/``npy``/``jsonl``)
    made with ``explainer``; ``run`` returns the video's records (built on ``base``)."""

    def __init__(
        self,
        explainer: Explainer,
        targets: Sequence[Target],
        config: RunConfig,
        paths: Mapping[str, Mapping[str, Path]],
        base: Record,
        temp_dir: Path | None,
    ) -> None:
        self.explainer = explainer
        self.targets = list(targets)
        self.config = config
        self.paths = paths
        self.base = base
        self.temp_dir = temp_dir
        self.sampling = Sampling(every=config.every, fps=config.fps)
        self.stop = threading.Event()
        self.writers: list[Any] = []

    def run(self, path: Path) -> list[Record]:
        """Raises InputError for a file that is not a readable video, and OSError where an
        output cannot be written; any exception leaves none of the video's files."""
        loaded = self.explainer.loaded
        max_pixels = None if loaded.spec is None else loaded.spec.max_pixels
        with VideoReader(path, max_pixels) as reader:
            self.name = reader.name
            try:
                return self._run(reader)
            except BaseException:
                self.stop.set()
                for writer in self.writers:
                    writer.abort()
                raise

    def _run(self, reader: VideoReader) -> list[Record]:
        info = reader.info
        size = max(1, self.config.batch_size)
        decoded: queue.Queue[Any] = queue.Queue(maxsize=2 * size)
        explained: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.videos: dict[str, VideoWriter] = {}
        self.logs: dict[str, PredictionLog] = {}
        for tag, paths in self.paths.items():  # each in ``writers`` at once: aborted on failure
            if "mp4" in paths:
                self.videos[tag] = VideoWriter(paths["mp4"], self.temp_dir, info, reader.path)
                self.writers.append(self.videos[tag])
            self.logs[tag] = PredictionLog(paths["jsonl"], self.temp_dir)
            self.writers.append(self.logs[tag])
        self.arrays: dict[str, NpyStream] = {}
        self.smoothers = [MapSmoother(self.config.smooth_frames) for _ in self.targets]
        # Per target: how many explained frames had each class, and their scores' sum (a
        # two-hour video's predictions are in the sidecar, not in memory).
        self.counts: list[Counter[int]] = [Counter() for _ in self.targets]
        self.sums: list[Counter[int]] = [Counter() for _ in self.targets]
        self.explained = 0
        box_holder: list[Box] = []

        decode = _Stage("camcli-video-decode",
                        lambda: self._decode(reader, decoded, box_holder))  # fmt: skip
        encode = _Stage("camcli-video-encode",
                        lambda: self._encode(explained, box_holder))  # fmt: skip
        decode.start()
        encode.start()
        try:
            self._explain(decoded, explained, decode, encode, size)
            self._put(explained, _END, encode)
            encode.join()
        finally:
            self.stop.set()
            _drain(decoded)
            decode.join()
            encode.join()
        for stage in (decode, encode):
            if stage.error is not None:
                raise stage.error
        committed: list[Path] = []
        try:
            for writer in self.writers:
                writer.commit()
                committed.append(writer.path)
        except BaseException:  # the video's files come all together or not at all
            for path in committed:
                path.unlink(missing_ok=True)
            raise
        return self._records(info, reader)

    def _put(self, q: queue.Queue[Any], item: Any, consumer: _Stage) -> None:
        """Put ``item`` on ``q``, giving up when the run stops or its consumer has died."""
        while not self.stop.is_set():
            if not consumer.is_alive():
                if consumer.error is not None:
                    raise consumer.error
                return
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _decode(self, reader: VideoReader, out: queue.Queue[Any], box_holder: list[Box]) -> None:
        """Decode every frame onto ``out``; the main thread sees the end when this thread
        has finished and ``out`` is empty (``_get``)."""
        preprocess = self.explainer.loaded.preprocess
        for frame in reader.frames(self.sampling):
            view = None
            if frame.explain:
                view, box = model_view(Image.fromarray(frame.rgb), preprocess)
                if not box_holder:
                    box_holder.append(box)
            while True:
                if self.stop.is_set():
                    return
                try:
                    out.put((frame, view), timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _explain(self, decoded: queue.Queue[Any], out: queue.Queue[Any], decode: _Stage,
                 encode: _Stage, size: int) -> None:  # fmt: skip
        loaded = self.explainer.loaded
        frames: list[Frame] = []
        views: list[np.ndarray] = []
        while True:
            item = _get(decoded, decode, self.stop)
            if item is not _END:
                frame, view = item
                frames.append(frame)
                if view is not None:
                    views.append(view)
            if (item is _END and frames) or len(views) >= size:
                if views:
                    batch = to_model_input(np.stack(views), loaded)
                    result = self.explainer.explain(batch, self.targets)
                    shown = [f.index for f in frames if f.explain]
                    for index, problem in zip(shown, result.problems or (), strict=False):
                        if problem:
                            raise InputError(f"{self.name}: frame {index}: {problem}")
                    maps, classes, scores = result.maps, result.class_indices, result.scores
                else:
                    maps = classes = scores = np.zeros((0,))
                self._put(out, _Explained(frames, maps, classes, scores), encode)
                frames, views = [], []
            if item is _END:
                return

    def _encode(self, q: queue.Queue[Any], box_holder: list[Box]) -> None:
        loaded = self.explainer.loaded
        current: list[np.ndarray] = []
        while not self.stop.is_set():
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return
            k = 0
            for frame in item.frames:
                if frame.explain:
                    current = [self.smoothers[t](item.maps[k, t]) for t in range(len(self.targets))]
                    for t, target in enumerate(self.targets):
                        index, score = int(item.classes[k, t]), float(item.scores[k, t])
                        self.counts[t][index] += 1
                        self.sums[t][index] += score
                        self.logs[target.tag].write({
                            "frame": frame.index, "time": frame.time, "class_index": index,
                            "label": loaded.label(index), "score": round(score, 6),
                        })  # fmt: skip
                    k += 1
                    self.explained += 1
                for t, target in enumerate(self.targets):
                    paths = self.paths[target.tag]
                    if "npy" in paths:
                        if target.tag not in self.arrays:
                            stream = NpyStream(paths["npy"], self.temp_dir, current[t].shape)
                            self.arrays[target.tag] = stream
                            self.writers.append(stream)
                        self.arrays[target.tag].write(current[t])
                    if target.tag in self.videos:
                        rgb = overlay(frame.rgb, current[t], box_holder[0],
                                      alpha=self.config.alpha, colormap=self.config.colormap)  # fmt: skip
                        self.videos[target.tag].write(rgb)

    def _records(self, info: VideoInfo, reader: VideoReader) -> list[Record]:
        loaded = self.explainer.loaded
        audio = next(iter(self.videos.values())).audio_note if self.videos else None
        video = {
            "frames": reader.decoded,
            "explained": self.explained,
            "fps": round(float(info.rate), 6),
            "duration": round(reader.decoded / float(info.rate), 6),
            "width": info.width,
            "height": info.height,
            "rotation": info.rotation,
            "codec": info.codec,
            "audio": audio if self.videos else info.audio,
        }
        records = []
        for t, target in enumerate(self.targets):
            index = self.counts[t].most_common(1)[0][0]
            mean = self.sums[t][index] / self.counts[t][index]
            record = dict(self.base)
            record.update(status="ok", error=None,
                          outputs=[str(p) for p in self.paths[target.tag].values()],
                          target=target.tag, class_index=index, label=loaded.label(index),
                          score=round(mean, 6), video=video,
                          predictions=str(self.paths[target.tag]["jsonl"]))  # fmt: skip
            if reader.cut:
                record["warning"] = (
                    f"cut short: {reader.cut}; the {reader.decoded} frames before it are kept"
                )
            records.append(record)
        return records


def _get(q: queue.Queue[Any], producer: _Stage, stop: threading.Event) -> Any:
    """The next item from ``q``; _END once its producer died (its error is raised later)."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if not producer.is_alive() and q.empty():
                if producer.error is not None:
                    raise producer.error from None
                return _END


def _drain(q: queue.Queue[Any]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
