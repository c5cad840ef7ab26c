"""sources -> load -> explain -> write, in batches, with loading and writing overlapping the model.

Decoding and preprocessing run ahead in a thread pool (a bounded number of images), the model
works on one batch at a time, and rendering, encoding and writing run in another pool. Records
come out in input order; memory stays flat however many images there are.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camcli.errors import CamcliError, InputError
from camcli.explain import Explainer, Target, to_model_input
from camcli.images import Box, load_image, model_view
from camcli.render import overlay, saliency_images
from camcli.sources import Source
from camcli.writers import (
    ManifestWriter,
    encode_image,
    encode_npy,
    output_path,
    read_manifest,
    write_atomic,
)

Record = dict[str, Any]


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
                 pixel_space: bool = False):  # fmt: skip
        self.source = source
        formats = list(config.formats)
        if pixel_space:
            formats += [f"gray.{f}" for f in config.formats if f != "npy"]
        self.paths = {
            t.tag: {f: output_path(config.out, source.rel, method, t.tag, f) for f in formats}
            for t in targets
        }

    def all_exist(self) -> bool:
        return all(p.exists() for paths in self.paths.values() for p in paths.values())


def _load(source: Source, explainer: Explainer, keep_image: bool) -> _Loaded:
    image = load_image(source.path)
    view, box = model_view(image, explainer.loaded.preprocess)
    return _Loaded(source, np.asarray(image) if keep_image else None, view, box)


class Pipeline:
    """Runs one explainer over many sources, calling ``on_record`` for each manifest record."""

    def __init__(
        self,
        explainer: Explainer,
        targets: Sequence[Target],
        config: RunConfig,
        on_record: Callable[[Record], None] = lambda r: None,
        on_progress: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.explainer = explainer
        self.targets = list(targets)
        self.config = config
        self.on_record = on_record
        self.on_progress = on_progress
        self.keep_image = any(f in ("jpg", "png") for f in config.formats)
        self.layer = "+".join(explainer.layer_names)
        self.pixel_space = explainer.method.pixel_space

    def _base(self, source: Source) -> Record:
        return {
            "input": str(source.path),
            "method": self.explainer.method_name,
            "layer": self.layer,
        }

    def _error(self, source: Source, message: str) -> list[Record]:
        record = self._base(source)
        record.update(status="error", error=message, outputs=[], target=None)
        record.update(class_index=None, label=None, score=None)
        return [record]

    def _skipped(self, plan: _Plan, previous: dict[tuple[str, str | None], Record]) -> list[Record]:
        records = []
        for tag, paths in plan.paths.items():
            record = dict(previous.get((str(plan.source.path), tag)) or {})
            if not record:
                record = self._base(plan.source)
                record.update(target=tag, class_index=None, label=None, score=None)
            record.update(status="ok", error=None, skipped=True)
            record["outputs"] = [str(p) for p in paths.values()]
            records.append(record)
        return records

    def _write(self, item: _Loaded, plan: _Plan, maps: np.ndarray, classes: np.ndarray,
               scores: np.ndarray, saliency: np.ndarray | None = None) -> list[Record]:  # fmt: skip
        records = []
        loaded = self.explainer.loaded
        try:
            for t, target in enumerate(self.targets):
                cam = maps[t]
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
                        data = encode_image(rgb, fmt)
                    write_atomic(path, data)
                    outputs.append(str(path))
                record = self._base(item.source)
                index = int(classes[t])
                record.update(status="ok", error=None, outputs=outputs, target=target.tag,
                              class_index=index, label=loaded.label(index),
                              score=round(float(scores[t]), 6))  # fmt: skip
                records.append(record)
        except (OSError, CamcliError) as exc:
            return self._error(item.source, f"{item.source.path}: cannot write output ({exc})")
        return records

    def run(self, sources: Sequence[Source]) -> Summary:
        config = self.config
        config.out.mkdir(parents=True, exist_ok=True)
        previous = read_manifest(config.out) if config.skip_existing else {}
        summary = Summary(total=len(sources))
        pending: deque[Future[list[Record]] | list[Record]] = deque()
        load_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="camcli-load")
        write_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="camcli-write")
        try:
            with ManifestWriter(config.out) as manifest:

                def emit(records: list[Record]) -> None:
                    manifest.write(records)
                    for record in records:
                        self.on_record(record)
                    first = records[0]
                    if first["status"] == "error":
                        summary.failed.append((first["input"], first["error"]))
                    elif first.get("skipped"):
                        summary.skipped += 1
                    else:
                        summary.ok += 1
                    self.on_progress(1)

                def drain(limit: int) -> None:
                    while pending and (
                        len(pending) > limit or isinstance(pending[0], list) or pending[0].done()
                    ):
                        head = pending.popleft()
                        emit(head if isinstance(head, list) else head.result())

                for batch in self._batches(sources, load_pool, previous):
                    good = [(plan, r) for plan, r in batch if not isinstance(r, list)]
                    written = iter(self._explain(good, write_pool) if good else [])
                    for _, result in batch:  # keep input order in the manifest
                        pending.append(result if isinstance(result, list) else next(written))
                    drain(limit=4 * config.batch_size)
                drain(limit=0)
        finally:
            load_pool.shutdown(wait=True, cancel_futures=True)
            write_pool.shutdown(wait=True, cancel_futures=True)
        return summary

    def _batches(
        self, sources: Sequence[Source], pool: ThreadPoolExecutor,
        previous: dict[tuple[str, str | None], Record],
    ) -> Iterator[list[tuple[_Plan, _Loaded | list[Record]]]]:  # fmt: skip
        """Batches of (plan, loaded image or ready records), loading ``2 * batch`` ahead."""
        method = self.explainer.method_name
        size = self.config.batch_size
        ahead: deque[tuple[_Plan, Future[_Loaded] | list[Record]]] = deque()
        feed = iter(sources)

        def submit_next() -> bool:
            source = next(feed, None)
            if source is None:
                return False
            plan = _Plan(source, self.config, method, self.targets, self.pixel_space)
            if self.config.skip_existing and plan.all_exist():
                ahead.append((plan, self._skipped(plan, previous)))
            else:
                ahead.append((plan, pool.submit(_load, source, self.explainer, self.keep_image)))
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
                    message = f"{plan.source.path}: cannot read image ({type(exc).__name__}: {exc})"
                    batch.append((plan, self._error(plan.source, message)))
            if len(batch) >= size or not ahead:
                yield batch
                batch = []

    def _explain(
        self, good: list[tuple[_Plan, _Loaded]], pool: ThreadPoolExecutor
    ) -> list[Future[list[Record]] | list[Record]]:
        """Explain one batch; returns, per image, its write job (or its error records)."""
        loaded = self.explainer.loaded
        views = np.stack([item.view for _, item in good])
        try:
            result = self.explainer.explain(to_model_input(views, loaded), self.targets)
        except RuntimeError as exc:  # out of memory, a model that fails on this input...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
            return [
                self._error(plan.source, f"{plan.source.path}: model failed ({reason})")
                for plan, _ in good
            ]
        saliency = result.saliency
        return [
            pool.submit(
                self._write,
                item,
                plan,
                result.maps[i],
                result.class_indices[i],
                result.scores[i],
                None if saliency is None else saliency[i],
            )
            for i, (plan, item) in enumerate(good)
        ]
