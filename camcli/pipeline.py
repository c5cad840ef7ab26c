"""sources -> load -> explain -> write, in batches, with loading and writing overlapping the model.

Decoding and preprocessing run ahead in a thread pool (a bounded number of images), the model
works on one batch at a time, and rendering, encoding and writing run in another pool. Records
come out in input order; memory stays flat however many images there are.

Every output file on disk has its manifest record: records are appended as soon as an image's
files are written, and when a run stops early (Ctrl-C, SIGTERM, a full disk, a broken
``--json`` pipe) the write jobs already running finish and get their records, the others are
cancelled, and only then does the exception go on.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camcli.errors import CamcliError, InputError
from camcli.explain import Explainer, Target, to_model_input
from camcli.images import Box, load_image, model_view
from camcli.outfolder import Key, OutputFolder, Record
from camcli.render import Rect, draw_box, image_box, overlay, saliency_images
from camcli.shards import Shard
from camcli.signals import interrupts_ignored, interrupts_raise
from camcli.sources import Source
from camcli.targets import NOTHING_FOUND, DetectionHead
from camcli.writers import encode_image, encode_npy, output_path, write_atomic

Job = Future[list[Record]] | list[Record]


@dataclass
class RunConfig:
    """Where and how to write: formats, overlay look, batching."""

    out: Path
    formats: Sequence[str] = ("jpg",)
    alpha: float = 0.5
    colormap: str = "jet"
    batch_size: int = 16
    skip_existing: bool = False
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    max_pixels: int | None = None  # None: the images module's default
    shard: Shard | None = None  # --shard I/N: its own manifest part, lock and temp folder


def run_settings(
    explainer: Explainer, config: RunConfig, checkpoint: Path | None = None
) -> dict[str, Any]:
    """What decides the pixels of a run's outputs; ``--skip-existing`` redoes an image whose
    records were made with other settings. The checkpoint counts by path, size and mtime."""
    loaded = explainer.loaded
    preprocess = loaded.preprocess
    settings: dict[str, Any] = {
        "model": loaded.name,
        "weights": loaded.weights,
        "checkpoint": None,
        "method": explainer.method_name,
        "layers": explainer.layer_names,
        "fit": preprocess.fit,
        "input_size": preprocess.crop_size,
        "resize_size": preprocess.resize_size,
        "precision": str(explainer.autocast_dtype or "fp32").removeprefix("torch."),
        "aug_smooth": explainer.aug_smooth,
        "eigen_smooth": explainer.eigen_smooth,
    }
    head = explainer.head
    if head.name != "softmax":  # a softmax run's settings stay as they were before heads
        settings["head"] = head.name
        if isinstance(head, DetectionHead):
            settings["score_threshold"] = head.score_threshold
    if checkpoint is not None:
        stat = Path(checkpoint).stat()
        settings["checkpoint"] = {
            "path": os.path.abspath(checkpoint),
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
        }
    if not explainer.method.pixel_space and any(f in ("jpg", "png") for f in config.formats):
        settings.update(alpha=config.alpha, colormap=config.colormap)
    return settings


@dataclass
class Summary:
    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Loaded:
    source: Source
    image: np.ndarray | None  # full-size RGB, only when an overlay is written
    view: np.ndarray
    box: Box


class _Plan:
    """The outputs one source will have: per target, per format.

    Pixel-space methods (guided backprop) write, per image format, the colour saliency as
    ``<rel>.<method>.<tag>.<fmt>`` and the gray one as ``<rel>.<method>.<tag>.gray.<fmt>``.
    """

    def __init__(self, source: Source, config: RunConfig, method: str, targets: Sequence[Target],
                 pixel_space: bool = False, layer: str | None = None):  # fmt: skip
        self.source = source
        formats = list(config.formats)
        if pixel_space:
            formats += [f"gray.{f}" for f in config.formats if f != "npy"]
        self.paths = {
            t.tag: {
                f: output_path(config.out, source.rel, method, t.tag, f, layer) for f in formats
            }
            for t in targets
        }


def _load(
    source: Source, explainer: Explainer, keep_image: bool, max_pixels: int | None
) -> _Loaded:
    if source.error:
        raise InputError(f"{source.display}: {source.error}")
    image = load_image(source.path, max_pixels=max_pixels)
    view, box = model_view(image, explainer.loaded.preprocess)
    return _Loaded(source, np.asarray(image) if keep_image else None, view, box)


class Pipeline:
    """Runs one explainer over many sources, calling ``on_record`` for each manifest record.

    ``name_layers``: the layers were chosen by the user (``--layer``), so they go in the
    output names and maps of different layers live side by side. ``settings`` (default:
    ``run_settings``) go in every record, and ``--skip-existing`` compares them.
    """

    def __init__(
        self,
        explainer: Explainer,
        targets: Sequence[Target],
        config: RunConfig,
        on_record: Callable[[Record], None] = lambda r: None,
        on_progress: Callable[[int], None] = lambda n: None,
        *,
        name_layers: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.explainer = explainer
        self.targets = list(targets)
        self.config = config
        self.on_record = on_record
        self.on_progress = on_progress
        self.keep_image = any(f in ("jpg", "png") for f in config.formats)
        self.layer = "+".join(explainer.layer_names)
        self.name_layer = self.layer if name_layers else None
        self.pixel_space = explainer.method.pixel_space
        self.settings = dict(settings if settings is not None else run_settings(explainer, config))
        self.temp_dir: Path | None = None

    def _base(self, source: Source) -> Record:
        return {
            "input": str(source.path),
            "method": self.explainer.method_name,
            "layer": self.layer,
        }

    def _error(self, source: Source, message: str) -> list[Record]:
        record = self._base(source)
        record.update(status="error", error=message, outputs=[], target=None)
        record.update(class_index=None, label=None, score=None, settings=self.settings)
        return [record]

    def _skipped(self, plan: _Plan, previous: Mapping[Key, Record]) -> list[Record] | None:
        """The records of a source whose outputs all exist and were made with these settings
        (their earlier predictions kept), or None: redo it."""
        records = []
        for tag, paths in plan.paths.items():
            outputs = [str(p) for p in paths.values()]
            key = (str(plan.source.path), self.explainer.method_name, self.layer, tag)
            earlier = previous.get(key)
            if (
                earlier is None
                or earlier.get("status") != "ok"
                or earlier.get("settings") != self.settings
                or not set(outputs) <= set(earlier.get("outputs") or ())
                or not all(p.exists() for p in paths.values())
            ):
                return None
            records.append({**earlier, "outputs": outputs, "skipped": True})
        return records

    def _write(self, item: _Loaded, plan: _Plan, maps: np.ndarray, classes: np.ndarray,
               scores: np.ndarray, saliency: np.ndarray | None = None,
               blank: Sequence[str | None] | None = None, present: np.ndarray | None = None,
               boxes: Sequence[Rect | None] | None = None) -> list[Record]:  # fmt: skip
        """Render, encode and write one image's outputs; its records.

        A target the image does not have (``present``: no such box, a label under the
        threshold) gets no files and no record; an image with none gets one record saying so.

        Any failure is this image's error record, and the files it had written are removed:
        a file on disk always has its record.
        """
        records = []
        written: list[Path] = []
        loaded = self.explainer.loaded
        try:
            for t, target in enumerate(self.targets):
                if present is not None and not present[t]:
                    continue
                cam = maps[t]
                rect = (
                    None
                    if boxes is None or boxes[t] is None
                    else image_box(boxes[t], item.box, item.view.shape)
                )
                outputs = []
                pictures = None
                if saliency is not None and item.image is not None:
                    pictures = saliency_images(saliency[t], item.box, item.image.shape[:2])
                for fmt, path in plan.paths[target.tag].items():
                    if fmt == "npy":
                        data = encode_npy(cam)
                    elif pictures is not None:
                        gray = fmt.startswith("gray.")
                        data = encode_image(pictures[1] if gray else pictures[0], fmt[-3:])
                    else:
                        assert item.image is not None
                        rgb = overlay(item.image, cam, item.box, alpha=self.config.alpha,
                                      colormap=self.config.colormap)  # fmt: skip
                        if rect is not None:
                            caption = f"{loaded.label(int(classes[t])) or int(classes[t])} "
                            rgb = draw_box(rgb, rect, f"{caption}{float(scores[t]):.2f}")
                        data = encode_image(rgb, fmt)
                    write_atomic(path, data, self.temp_dir)
                    written.append(path)
                    outputs.append(str(path))
                record = self._base(item.source)
                index = int(classes[t])
                record.update(status="ok", error=None, outputs=outputs, target=target.tag,
                              class_index=index, label=loaded.label(index),
                              score=round(float(scores[t]), 6))  # fmt: skip
                if blank is not None and blank[t]:
                    record["warning"] = blank[t]
                if rect is not None:
                    record["box"] = [round(v, 2) for v in rect]
                record["settings"] = self.settings
                records.append(record)
            if not records:
                record = self._base(item.source)
                record.update(status="ok", error=None, outputs=[], target=None, class_index=None,
                              label=None, score=None, warning=NOTHING_FOUND[self.explainer.head.name],
                              settings=self.settings)  # fmt: skip
                records.append(record)
        except BaseException as exc:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            if not isinstance(exc, Exception):
                raise  # an interrupt: the run stops
            what = "cannot write output" if isinstance(exc, OSError | CamcliError) else "failed"
            reason = str(exc) if isinstance(exc, CamcliError) else f"{type(exc).__name__}: {exc}"
            return self._error(item.source, f"{item.source.display}: {what} ({reason})")
        return records

    def run(self, sources: Sequence[Source], folder: OutputFolder | None = None) -> Summary:
        """Explain and write every source into ``folder`` (default: ``config.out``, opened and
        locked here). SIGINT and SIGTERM stop the run as ``camcli.signals.Interrupted``."""
        with contextlib.ExitStack() as stack:
            if folder is None:
                folder = stack.enter_context(OutputFolder(self.config.out, self.config.shard))
            stack.enter_context(interrupts_raise())
            return self._run(sources, folder)

    def _run(self, sources: Sequence[Source], folder: OutputFolder) -> Summary:
        config = self.config
        self.temp_dir = folder.temp_dir
        previous = folder.previous() if config.skip_existing else {}
        summary = Summary(total=len(sources))
        pending: deque[Job] = deque()
        listening = [True]  # False once on_record has failed (a closed --json pipe)
        load_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="camcli-load")
        write_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="camcli-write")

        def emit(records: list[Record]) -> None:
            folder.append(records)  # first: the files are on disk, so is their record
            first = records[0]
            if first["status"] == "error":
                summary.failed.append((first["input"], first["error"]))
            elif first.get("skipped"):
                summary.skipped += 1
            else:
                summary.ok += 1
            if listening[0]:
                try:
                    for record in records:
                        self.on_record(record)
                except BaseException:
                    listening[0] = False
                    raise
            self.on_progress(1)

        def drain(limit: int) -> None:
            while pending and (
                len(pending) > limit or isinstance(pending[0], list) or pending[0].done()
            ):
                head = pending[0]
                records = head if isinstance(head, list) else head.result()
                emit(records)
                # Popped only once recorded: an interrupt in between records it twice (the
                # manifest keeps the last), never not at all.
                pending.popleft()

        try:
            for batch in self._batches(sources, load_pool, previous):
                good = [(plan, r) for plan, r in batch if not isinstance(r, list)]
                written = iter(self._explain(good, write_pool) if good else [])
                for _, result in batch:  # keep input order in the manifest
                    pending.append(result if isinstance(result, list) else next(written))
                drain(limit=4 * config.batch_size)
            drain(limit=0)
            folder.compact()
        except BaseException:
            with interrupts_ignored():
                self._finish(pending, folder, emit)
            raise
        finally:
            load_pool.shutdown(wait=True, cancel_futures=True)
            write_pool.shutdown(wait=True, cancel_futures=True)
        return summary

    @staticmethod
    def _finish(
        pending: deque[Job], folder: OutputFolder, emit: Callable[[list[Record]], None]
    ) -> None:
        """After an early stop: the write jobs not started are cancelled, those running are
        waited for, and every image whose files were written gets its records."""
        for job in pending:
            if isinstance(job, Future):
                job.cancel()
        for job in pending:
            if isinstance(job, list):
                records = job
            elif job.cancelled() or job.exception() is not None:
                continue  # nothing written, or its files removed (``_write``)
            else:
                records = job.result()
            try:
                emit(records)
            except CamcliError:
                return  # the manifest cannot be written (a full disk): nothing more to save
            except Exception:  # on_record failed: the stop under way goes on regardless
                continue

    def _batches(
        self, sources: Sequence[Source], pool: ThreadPoolExecutor, previous: Mapping[Key, Record]
    ) -> Iterator[list[tuple[_Plan, _Loaded | list[Record]]]]:
        """Batches of (plan, loaded image or ready records), loading ``2 * batch`` ahead."""
        method = self.explainer.method_name
        size = self.config.batch_size
        ahead: deque[tuple[_Plan, Future[_Loaded] | list[Record]]] = deque()
        feed = iter(sources)

        def submit_next() -> bool:
            source = next(feed, None)
            if source is None:
                return False
            plan = _Plan(source, self.config, method, self.targets, self.pixel_space,
                         self.name_layer)  # fmt: skip
            skipped = self._skipped(plan, previous) if self.config.skip_existing else None
            if skipped is not None:
                ahead.append((plan, skipped))
            else:
                ahead.append((plan, pool.submit(_load, source, self.explainer, self.keep_image,
                                                self.config.max_pixels)))  # fmt: skip
            return True

        while len(ahead) < 2 * size and submit_next():
            pass
        batch: list[tuple[_Plan, _Loaded | list[Record]]] = []
        while ahead:
            plan, job = ahead.popleft()
            submit_next()
            if isinstance(job, list):
                batch.append((plan, job))
            else:
                try:
                    batch.append((plan, job.result()))
                except InputError as exc:
                    batch.append((plan, self._error(plan.source, str(exc))))
                except Exception as exc:  # a decoder bug must not stop the batch
                    message = (
                        f"{plan.source.display}: cannot read image ({type(exc).__name__}: {exc})"
                    )
                    batch.append((plan, self._error(plan.source, message)))
            if len(batch) >= size or not ahead:
                yield batch
                batch = []

    def _explain(self, good: list[tuple[_Plan, _Loaded]], pool: ThreadPoolExecutor) -> list[Job]:
        """Explain one batch; returns, per image, its write job (or its error records).

        An image the explainer marks with a problem (``Explanation.problems``: a model output
        that is not finite...) is an error record and gets no files.
        """
        loaded = self.explainer.loaded
        views = np.stack([item.view for _, item in good])
        try:
            result = self.explainer.explain(to_model_input(views, loaded), self.targets)
        except RuntimeError as exc:  # out of memory, a model that fails on this input...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
            return [
                self._error(plan.source, f"{plan.source.display}: model failed ({reason})")
                for plan, _ in good
            ]
        saliency = result.saliency
        problems = result.problems or [None] * len(good)
        blank = result.blank or [None] * len(good)
        jobs: list[Job] = []
        for i, (plan, item) in enumerate(good):
            if problems[i]:
                jobs.append(self._error(plan.source, f"{plan.source.display}: {problems[i]}"))
                continue
            sal = None if saliency is None else saliency[i]
            present = None if result.present is None else result.present[i]
            boxes = None if result.boxes is None else result.boxes[i]
            jobs.append(pool.submit(self._write, item, plan, result.maps[i],
                                    result.class_indices[i], result.scores[i], sal, blank[i],
                                    present, boxes))  # fmt: skip
        return jobs
