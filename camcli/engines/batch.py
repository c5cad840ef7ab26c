"""The per-batch work every engine calls: loaded images -> maps -> files + manifest records.

An engine decides how sources are fed (local threads in ``camcli.engines.local``, Ray actors in
``camcli.engines.ray``) and where the records go (the output folder's manifest); what one image
becomes is decided here, once:

- ``read``: a source -> its decoded image and the model's view of it, or its error record;
- ``explain``: a batch of loaded images -> per image, its write job (a callable, so that an
  engine may run it in a thread pool) or its error records;
- ``write``: one image's overlays / maps rendered, encoded and written atomically, and its
  records; any failure is that image's error record, and the files it had written are removed
  (a file on disk always has its record).

Calling a ``BatchWork`` runs all three for one batch in the calling thread.

A video (``camcli.sources.is_video_name``) is one source too: its plan names an overlay video
(``mp4``, for the jpg/png formats), a ``(frames, h, w)`` ``npy`` and a ``jsonl`` of per-frame
predictions per target, and ``video`` runs its frames through the same explainer in batches
(``camcli.video.work``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camcli.config import RunConfig, Summary
from camcli.errors import CamcliError, InputError
from camcli.explain import Explainer, to_model_input
from camcli.images import Box, Preprocess, load_image, model_view
from camcli.models import LoadedModel
from camcli.models.onnx.graph import is_onnx_path
from camcli.outfolder import Key, OutputFolder, Record
from camcli.render import Rect, draw_box, image_box, overlay, saliency_images
from camcli.sources import Source, is_video_name
from camcli.stages.tensor_path import TensorStages, tensor_stages
from camcli.targets import NOTHING_FOUND, DetectionHead, Target
from camcli.writers import encode_image, encode_npy, output_path, write_atomic

__all__ = ["BatchWork", "Loaded", "Plan", "WriteJob", "load", "pixel_limit"]

#: One image's files written, returning its records.
WriteJob = Callable[[], list[Record]]


@dataclass
class Loaded:
    source: Source
    image: np.ndarray | torch.Tensor | None  # full-size RGB, only when an overlay is written
    view: np.ndarray | torch.Tensor  # (S, S, 3) array, or (3, S, S) from the tensor stages
    box: Box


class Plan:
    """The outputs one source will have: per target, per format.

    Pixel-space methods (guided backprop) write, per image format, the colour saliency as
    ``<rel>.<method>.<tag>.<fmt>`` and the gray one as ``<rel>.<method>.<tag>.gray.<fmt>``.
    """

    def __init__(self, source: Source, config: RunConfig, method: str, targets: Sequence[Target],
                 pixel_space: bool = False, layer: str | None = None):  # fmt: skip
        self.source = source
        formats = list(config.formats)
        self.video = is_video_name(source.path)
        if self.video:
            # One overlay video for the image formats; the maps; the per-frame predictions.
            formats = [*(["mp4"] if set(formats) - {"npy"} else []),
                       *(["npy"] if "npy" in formats else []), "jsonl"]  # fmt: skip
        elif pixel_space:
            formats += [f"gray.{f}" for f in config.formats if f != "npy"]
        self.paths = {
            t.tag: {
                f: output_path(config.out, source.rel, method, t.tag, f, layer) for f in formats
            }
            for t in targets
        }


class RecordSink:
    """Where every engine sends one input's records, in this order: the manifest (the files
    are on disk, so is their record), the run's tally, the caller's ``on_record`` (until it
    fails once: a closed ``--json`` pipe is not called again while the run stops), and one
    step of progress."""

    def __init__(
        self,
        folder: OutputFolder,
        summary: Summary,
        on_record: Callable[[Record], None],
        on_progress: Callable[[int], None],
    ) -> None:
        self.folder = folder
        self.summary = summary
        self.on_record = on_record
        self.on_progress = on_progress
        self.listening = True

    def __call__(self, records: list[Record]) -> None:
        self.folder.append(records)
        self.summary.count(records)
        if self.listening:
            try:
                for record in records:
                    self.on_record(record)
            except BaseException:
                self.listening = False
                raise
        self.on_progress(1)


def pixel_limit(loaded: LoadedModel) -> int | None:
    """The largest image ``loaded``'s run reads (``ModelSpec.max_pixels``); None, the default
    limit, for a model built without a spec."""
    return None if loaded.spec is None else loaded.spec.max_pixels


def load(
    source: Source,
    preprocess: Preprocess,
    keep_image: bool,
    max_pixels: int | None,
    stages: TensorStages | None = None,
) -> Loaded | str:
    """The source decoded, with the model's view of it; or why not, as one line naming it.

    Needs no model (only its preprocessing), so an engine may decode where no model lives.
    With ``stages`` the image and view are tensors on the stages' device.
    """
    try:
        if source.error:
            raise InputError(f"{source.display}: {source.error}")
        if stages is not None:
            pixels, tensor_view, tensor_box = stages.load(source.path)
            return Loaded(source, pixels if keep_image else None, tensor_view, tensor_box)
        image = load_image(source.path, max_pixels=max_pixels)
        view, box = model_view(image, preprocess)
    except InputError as exc:
        return str(exc)
    except Exception as exc:  # a decoder bug must not stop the batch
        return f"{source.display}: cannot read image ({type(exc).__name__}: {exc})"
    return Loaded(source, np.asarray(image) if keep_image else None, view, box)


class BatchWork:
    """One explainer, its targets and output settings, applied to batches of sources.

    ``name_layers``: the layers were chosen by the user (``--layer``), so they go in the output
    names. ``settings`` go in every record (``--skip-existing`` compares them). ``temp_dir``:
    the output folder's temp folder (``OutputFolder.temp_dir``) that files are written through.
    """

    def __init__(
        self,
        explainer: Explainer,
        targets: Sequence[Target],
        config: RunConfig,
        settings: Mapping[str, Any],
        *,
        name_layers: bool = False,
        temp_dir: Path | None = None,
    ) -> None:
        self.explainer = explainer
        self.targets = list(targets)
        self.config = config
        self.settings = dict(settings)
        self.keep_image = any(f in ("jpg", "png") for f in config.formats)
        self.layer = "+".join(explainer.layer_names)
        self.name_layer = self.layer if name_layers else None
        self.pixel_space = explainer.method.pixel_space
        self.temp_dir = temp_dir
        model = explainer.loaded
        self.max_pixels = pixel_limit(model)
        # Decode, view, draw and encode as tensors on the model's device (CUDA), or not.
        self.stages = tensor_stages(model.device, model.preprocess, self.pixel_space,
                                    self.max_pixels)  # fmt: skip

    def plan(self, source: Source) -> Plan:
        return Plan(source, self.config, self.explainer.method_name, self.targets,
                    self.pixel_space, self.name_layer)  # fmt: skip

    def read(self, plan: Plan) -> Loaded | list[Record]:
        """The source of ``plan`` loaded, or its error records."""
        loaded = load(plan.source, self.explainer.loaded.preprocess, self.keep_image,
                      self.max_pixels, self.stages)  # fmt: skip
        return self.error(plan.source, loaded) if isinstance(loaded, str) else loaded

    @property
    def files_per_read(self) -> int:
        """How many sources one ``read_many`` job should get: a batched decode's worth on the
        tensor stages, else one."""
        return self.stages.files_per_read if self.stages is not None else 1

    def read_many(self, plans: Sequence[Plan]) -> list[Loaded | list[Record]]:
        """``read`` for several sources; on the tensor stages their JPEGs are decoded in one
        batched call. Per plan, its loaded image or its error records."""
        if self.stages is None or len(plans) < 2:
            return [self.read(plan) for plan in plans]
        readable = [plan for plan in plans if not plan.source.error]
        try:
            decoded = iter(self.stages.load_many([plan.source.path for plan in readable]))
        except Exception:  # a decoder bug: each file alone, so only the bad one fails
            return [self.read(plan) for plan in plans]
        results: list[Loaded | list[Record]] = []
        for plan in plans:
            if plan.source.error:
                results.append(self.read(plan))  # its error record
                continue
            result = next(decoded)
            if isinstance(result, InputError):
                results.append(self.error(plan.source, str(result)))
            else:
                image, view, box = result
                results.append(Loaded(plan.source, image if self.keep_image else None, view, box))
        return results

    def video(self, plan: Plan) -> list[Record]:
        """A video's files written and its records (one per target), or its error record;
        any failure leaves none of its files (``camcli.video.work``)."""
        from camcli.video.work import VideoJob

        source = plan.source
        job = VideoJob(self.explainer, self.targets, self.config, plan.paths,
                       self._base(source) | {"settings": self.settings}, self.temp_dir)  # fmt: skip
        try:
            if source.error:
                raise InputError(f"{source.display}: {source.error}")
            return job.run(source.path)
        except InputError as exc:
            return self.error(source, str(exc))
        except RuntimeError as exc:  # out of memory, a model that fails on this input...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
            return self.error(source, f"{source.display}: model failed ({reason})")
        except Exception as exc:  # a full disk (FFmpeg's writes too), a bug: this video only
            what = "cannot write output" if isinstance(exc, OSError | CamcliError) else "failed"
            reason = str(exc) if isinstance(exc, CamcliError) else f"{type(exc).__name__}: {exc}"
            return self.error(source, f"{source.display}: {what} ({reason})")

    def _base(self, source: Source) -> Record:
        return {
            "input": str(source.path),
            "method": self.explainer.method_name,
            "layer": self.layer,
        }

    def error(self, source: Source, message: str) -> list[Record]:
        """The one error record of a source that gets no files."""
        record = self._base(source)
        record.update(status="error", error=message, outputs=[], target=None)
        record.update(class_index=None, label=None, score=None, settings=self.settings)
        return [record]

    def skipped(self, plan: Plan, previous: Mapping[Key, Record]) -> list[Record] | None:
        """The records of a source whose outputs all exist and were made with these settings
        (their earlier predictions kept), or None: redo it.

        A target with no record was absent from the image (no such box, a label under the
        threshold) when the settings name the targets (heads that can miss one,
        ``run_settings``) and the image has a record made with them: an image's records reach
        the manifest together, in one write. An image that had none of its targets has the one
        record that says so.
        """
        source, method = str(plan.source.path), self.explainer.method_name
        records, missing = [], 0
        for tag, paths in plan.paths.items():
            outputs = [str(p) for p in paths.values()]
            earlier = previous.get((source, method, self.layer, tag))
            if earlier is None:
                missing += 1
                continue
            if (
                earlier.get("status") != "ok"
                or not same_settings(earlier.get("settings"), self.settings)
                or not set(outputs) <= set(earlier.get("outputs") or ())
                or not all(p.exists() for p in paths.values())
            ):
                return None
            records.append({**earlier, "outputs": outputs, "skipped": True})
        if not missing:
            return records
        if "targets" not in self.settings:
            return None  # never done
        if records:
            return records  # the rest were absent
        nothing = previous.get((source, method, self.layer, None))
        if (
            nothing is None
            or nothing.get("status") != "ok"
            or not same_settings(nothing.get("settings"), self.settings)
        ):
            return None
        return [{**nothing, "skipped": True}]

    def write(self, item: Loaded, plan: Plan, maps: np.ndarray, classes: np.ndarray,
              scores: np.ndarray, saliency: np.ndarray | None = None,
              blank: Sequence[str | None] | None = None, present: np.ndarray | None = None,
              boxes: Sequence[Rect | None] | None = None,
              details: Mapping[str, Any] | None = None) -> list[Record]:  # fmt: skip
        """Render, encode and write one image's outputs; its records.

        A target the image does not have (``present``: no such box, a label under the
        threshold) gets no files and no record; an image with none gets one record saying so.

        Any failure is this image's error record, and the files it had written are removed:
        a file on disk always has its record.
        """
        records = []
        written: list[Path] = []
        loaded = self.explainer.loaded
        tensor_view = isinstance(item.view, torch.Tensor)
        view_hw = tuple(item.view.shape[-2:] if tensor_view else item.view.shape[:2])
        try:
            for t, target in enumerate(self.targets):
                if present is not None and not present[t]:
                    continue
                cam = maps[t]
                rect = (
                    None
                    if boxes is None or boxes[t] is None
                    else image_box(boxes[t], item.box, view_hw)
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
                    elif isinstance(item.image, torch.Tensor) and rect is None:
                        assert self.stages is not None
                        data = self.stages.overlay_bytes(item.image, cam, item.box, fmt,
                                                         self.config.alpha, self.config.colormap)  # fmt: skip
                    else:
                        assert item.image is not None
                        image = item.image
                        if isinstance(image, torch.Tensor):  # boxes are drawn on the host
                            image = image.permute(1, 2, 0).cpu().numpy()
                        rgb = overlay(image, cam, item.box, alpha=self.config.alpha,
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
                record.update(details or {})  # a black-box method's masks used
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
            return self.error(item.source, f"{item.source.display}: {what} ({reason})")
        return records

    def explain(self, good: Sequence[tuple[Plan, Loaded]]) -> list[WriteJob | list[Record]]:
        """Explain one batch; returns, per image, its write job (or its error records).

        An image the explainer marks with a problem (``Explanation.problems``: a model output
        that is not finite...) is an error record and gets no files.
        """
        loaded = self.explainer.loaded
        views = [item.view for _, item in good]
        try:
            if self.stages is not None and isinstance(views[0], torch.Tensor):
                batch = self.stages.model_input(views)  # views from the tensor stages
            else:
                batch = to_model_input(np.stack(views), loaded)
            result = self.explainer.explain(batch, self.targets)
        except RuntimeError as exc:  # out of memory, a model that fails on this input...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
            return [
                self.error(plan.source, f"{plan.source.display}: model failed ({reason})")
                for plan, _ in good
            ]
        saliency = result.saliency
        problems = result.problems or [None] * len(good)
        blank = result.blank or [None] * len(good)
        jobs: list[WriteJob | list[Record]] = []
        for i, (plan, item) in enumerate(good):
            if problems[i]:
                jobs.append(self.error(plan.source, f"{plan.source.display}: {problems[i]}"))
                continue
            sal = None if saliency is None else saliency[i]
            present = None if result.present is None else result.present[i]
            boxes = None if result.boxes is None else result.boxes[i]
            details = None if result.details is None else result.details[i]
            jobs.append(partial(self.write, item, plan, result.maps[i], result.class_indices[i],
                                result.scores[i], sal, blank[i], present, boxes, details))  # fmt: skip
        return jobs

    def __call__(self, batch: Sequence[tuple[Plan, Loaded | list[Record]]]) -> list[list[Record]]:
        """A batch of (plan, loaded image or its ready records) explained and written here, in
        this thread; per image, its records, in the batch's order."""
        good = [(plan, item) for plan, item in batch if isinstance(item, Loaded)]
        done = iter(self.explain(good) if good else [])
        results = []
        for _, item in batch:
            job = next(done) if isinstance(item, Loaded) else item
            results.append(job if isinstance(job, list) else job())
        return results


#: Where the forward passes ran: recorded, but maps are the same on every runtime (to 1e-4 of
#: their peak), so ``--skip-existing`` does not redo an image made on another.
RUNTIME_KEYS = ("runtime", "runtime_reason", "runtime_ms")


def same_settings(earlier: Any, settings: Mapping[str, Any]) -> bool:
    """Whether a record's settings are ``settings``, whichever runtime made each."""
    if not isinstance(earlier, Mapping):
        return False
    strip = lambda found: {k: v for k, v in found.items() if k not in RUNTIME_KEYS}  # noqa: E731
    return strip(earlier) == strip(settings)


def run_settings(
    explainer: Explainer,
    config: RunConfig,
    checkpoint: Path | None = None,
    targets: Sequence[Target] = (),
) -> dict[str, Any]:
    """What decides the pixels of a run's outputs; ``--skip-existing`` redoes an image whose
    records were made with other settings. The checkpoint counts by path, size and mtime.

    Under a head whose targets can be absent from an image (a label under ``--threshold``, no
    such box), the targets asked for and their threshold count too: an image done with the
    same ones and no record for a target did not have it, and is not redone for it.
    """
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
        **explainer.method.settings(),  # a black-box method's masks, window...
        **explainer.offload.settings(),  # where the forward passes ran, and why
    }
    head = explainer.head
    if head.name != "softmax":  # a softmax run's settings stay as they were before heads
        settings["head"] = head.name
        if isinstance(head, DetectionHead):
            settings["score_threshold"] = head.score_threshold
        if targets:
            settings["targets"] = [t.tag for t in targets]
            thresholds = sorted({t.threshold for t in targets if t.threshold is not None})
            if thresholds:
                settings["threshold"] = thresholds[0] if len(thresholds) == 1 else thresholds
    if checkpoint is not None:
        stat = Path(checkpoint).stat()
        settings["checkpoint"] = {
            "path": os.path.abspath(checkpoint),
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
        }
    spec = loaded.spec
    if spec is not None and is_onnx_path(spec.model):  # the model file, as a checkpoint counts
        stat = Path(spec.model).expanduser().stat()
        settings["model_file"] = {
            "path": os.path.abspath(Path(spec.model).expanduser()),
            "size": stat.st_size,
            "mtime": stat.st_mtime_ns,
        }
    if spec is not None and (spec.normalize or spec.mean or spec.std):
        settings.update(mean=list(preprocess.mean), std=list(preprocess.std))
    if not explainer.method.pixel_space and any(f in ("jpg", "png") for f in config.formats):
        settings.update(alpha=config.alpha, colormap=config.colormap)
    # The video options only where set, so that an image's settings stay as they were.
    if config.every != 1:
        settings["every"] = config.every
    if config.fps is not None:
        settings["fps"] = config.fps
    if config.smooth_frames != 1:
        settings["smooth_frames"] = config.smooth_frames
    return settings
