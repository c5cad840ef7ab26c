"""``camcli run --engine ray``: the same run on Ray Data, and a callable for your own pipeline.

The driver lists the inputs and owns the output folder (lock, manifest log, compaction,
``--skip-existing``, shards), exactly as a local run. Ray does the work::

    ray.data.from_items(sources)                  the listed inputs, split into blocks
      .map_batches(_read_batch)                   tasks: read + decode + the model's view
      .map_batches(_ExplainActor, compute=ActorPoolStrategy(...), num_gpus=...)
                                                  actors, one model each: BatchWork explains
                                                  and writes the files into OUT
    -> records (JSON lines) back to the driver -> OutputFolder.append

Workers write into ``OUT`` themselves (through ``OUT/.camcli-tmp``, atomically), so on a
cluster ``OUT``, the inputs and any ``--checkpoint`` / ``--labels`` file must be on a file
system every node sees under the same path.

``ExplainBatch`` is the public piece for a pipeline of your own: a callable class for
``Dataset.map_batches`` that takes images and returns maps, predictions and, optionally,
encoded overlays, writing nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from camcli.config import DEFAULT_MODEL, ExplainSpec, ModelSpec, RunConfig, Summary
from camcli.engines.batch import BatchWork, Loaded, RecordSink, load
from camcli.errors import CamcliError, UsageError, install_extra
from camcli.explain import Explainer, parse_targets
from camcli.images import Box, Preprocess, model_view, to_rgb
from camcli.machine_output import json_line
from camcli.outfolder import OutputFolder, Record
from camcli.signals import interrupts_deferred, interrupts_ignored
from camcli.sources import Source, is_video_name
from camcli.targets import Target
from camcli.writers import encode_image

__all__ = ["INSTALL", "ExplainBatch", "RayOptions", "import_ray", "run_on_ray"]

INSTALL = install_extra("ray")


def import_ray() -> Any:
    """The ``ray`` module with ``ray.data``; UsageError (exit 2) saying how to install it."""
    try:
        import ray
        import ray.data  # the engine's API: ray alone does not import it
    except ImportError as exc:
        raise UsageError(
            f"--engine ray needs Ray Data ({exc}); install it with {INSTALL}"
        ) from None
    return ray


@dataclass
class RayOptions:
    """Where and how wide: the cluster, the actor pool, GPUs per actor.

    ``address``: None starts a local Ray instance (or joins the one ``RAY_ADDRESS`` names);
    ``"auto"`` joins the cluster this machine belongs to (``ray start``); ``ray://host:10001``
    a remote one. ``actors``: a fixed pool of that many actors, or None: from 1 up to what the
    cluster holds. Each actor takes ``num_cpus`` CPUs and ``num_gpus`` GPUs.
    """

    address: str | None = None
    actors: int | None = None
    num_gpus: float = 0.0
    num_cpus: float = 1.0


@dataclass
class ActorSetup:
    """What each actor needs to build the model and the per-batch work the driver checked.

    ``model``'s head is the one the driver resolved (``camcli.targets.apply_head``), so that
    every actor reads the model's output alike.
    """

    model: ModelSpec
    explain: ExplainSpec
    targets: list[Target]
    config: RunConfig
    settings: dict[str, Any]
    name_layers: bool = False
    temp_dir: Path | None = None


def _build_work(setup: ActorSetup) -> BatchWork:
    from camcli.models import load_model
    from camcli.targets import apply_head

    loaded = apply_head(load_model(setup.model, progress=False), setup.model.head)
    explainer = Explainer(loaded, setup.explain)
    if loaded.device.type == "cpu":  # the driver's choice of runtime (explicit: no measuring)
        explainer.use_runtime(setup.config.batch_size)
    return BatchWork(explainer, setup.targets, setup.config, setup.settings,
                     name_layers=setup.name_layers, temp_dir=setup.temp_dir)  # fmt: skip


def _item(index: int, source: Source) -> dict[str, Any]:
    # Paths as bytes: a file name that is not UTF-8 survives Arrow's string columns so.
    return {
        "index": index,
        "path": os.fsencode(source.path),
        "rel": os.fsencode(source.rel.as_posix()),
        "listing_error": source.error or "",
    }


def _source(batch: Mapping[str, np.ndarray], i: int) -> Source:
    error = str(batch["listing_error"][i]) if "listing_error" in batch else ""
    return Source(
        Path(os.fsdecode(batch["path"][i])),
        PurePosixPath(os.fsdecode(batch["rel"][i])),
        error or None,
    )


def _read_batch(
    batch: dict[str, np.ndarray], preprocess: Preprocess, keep_image: bool, max_pixels: int | None
) -> dict[str, np.ndarray]:
    """Ray task: read and decode a block of sources (``camcli.engines.batch.load``).

    Out: the model's views (N, S, S, 3) uint8, the boxes (N, 4), per row the error (or ""),
    and with overlays the full images (any size per row).
    """
    size = preprocess.crop_size
    views, boxes, errors, images = [], [], [], []
    for i in range(len(batch["index"])):
        source = _source(batch, i)
        # A video is read by the actor that explains it, frame batch by frame batch.
        loaded = (
            "" if is_video_name(source.path) else load(source, preprocess, keep_image, max_pixels)
        )
        if isinstance(loaded, str):
            views.append(np.zeros((size, size, 3), np.uint8))
            boxes.append((0.0, 0.0, 1.0, 1.0))
            errors.append(loaded)
            images.append(np.zeros((1, 1, 3), np.uint8))
        else:
            views.append(loaded.view)
            boxes.append((loaded.box.x0, loaded.box.y0, loaded.box.x1, loaded.box.y1))
            errors.append("")
            images.append(
                loaded.image if loaded.image is not None else np.zeros((1, 1, 3), np.uint8)
            )
    out = {
        "index": batch["index"],
        "path": batch["path"],
        "rel": batch["rel"],
        "view": np.stack(views),
        "box": np.asarray(boxes, np.float64),
        "error": np.asarray(errors, dtype=object),
    }
    if keep_image:
        column = np.empty(len(images), dtype=object)
        column[:] = images
        out["image"] = column
    return out


class _ExplainActor:
    """Ray actor: builds the model once, then runs ``BatchWork`` on each batch it is given.

    Returns per input its records as JSON lines (``records``): a failing image is its error
    record, and so is every image of a batch that fails as a whole.
    """

    def __init__(self, setup: ActorSetup) -> None:
        with warnings.catch_warnings():
            # The driver already checked and warned about this setup once.
            warnings.simplefilter("ignore")
            self.work = _build_work(setup)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        work = self.work
        items: list[tuple[Any, Loaded | list[Record]]] = []
        for i in range(len(batch["index"])):
            source = _source(batch, i)
            plan = work.plan(source)
            if batch["error"][i]:
                items.append((plan, work.error(source, str(batch["error"][i]))))
                continue
            if plan.video:  # the whole video here, on this actor's model
                items.append((plan, work.video(plan)))
                continue
            image = batch["image"][i] if "image" in batch else None
            box = Box(*(float(v) for v in batch["box"][i]))
            items.append((plan, Loaded(source, image, batch["view"][i], box)))
        try:
            results = work(items)
        except Exception as exc:  # a bug must not fail the job: each image gets its record
            results = [
                work.error(
                    plan.source, f"{plan.source.display}: failed ({type(exc).__name__}: {exc})"
                )
                for plan, _ in items
            ]
        lines = ["\n".join(json_line(r) for r in records) for records in results]
        return {"index": batch["index"], "records": np.asarray(lines, dtype=object)}


@contextlib.contextmanager
def _connected(ray: Any, options: RayOptions) -> Iterator[None]:
    """Ray initialised for this run (and shut down after it), unless it already was: then the
    caller's Ray is used and left running."""
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if options.address is None and "RAY_ADDRESS" not in os.environ:
        # A local instance: logical CPUs enough for the pool and one reading task; no
        # metrics (the driver would complain on stderr that it has no exporter for them).
        wanted = (options.actors or 1) * options.num_cpus + 1
        kwargs["num_cpus"] = max(os.cpu_count() or 1, int(np.ceil(wanted)))
        kwargs["include_dashboard"] = False
        kwargs["_system_config"] = {"enable_metrics_collection": False}
    try:
        with warnings.catch_warnings():
            # Ray's notice about a future change of CUDA_VISIBLE_DEVICES, on every start.
            warnings.simplefilter("ignore", FutureWarning)
            ray.init(address=options.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or "a local instance"
        raise UsageError(f"--ray-address: cannot start or reach Ray ({where}): {exc}") from None
    try:
        yield
    finally:
        with interrupts_ignored():
            ray.shutdown()


def run_on_ray(
    sources: Sequence[Source],
    work: BatchWork,
    setup: ActorSetup,
    options: RayOptions,
    on_record: Callable[[Record], None] = lambda r: None,
    on_progress: Callable[[int], None] = lambda n: None,
) -> Summary:
    """Explain and write every source on Ray; the driver appends the records to the manifest.

    ``work`` is the driver's own per-batch work (the setup the actors rebuild, checked here
    before anything starts): it plans the outputs and answers ``--skip-existing``. SIGINT and
    SIGTERM stop the run as ``camcli.signals.Interrupted``, Ray shut down first.
    """
    ray = import_ray()
    config = setup.config
    summary = Summary(total=len(sources))
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(OutputFolder(config.out, config.shard))
        setup.temp_dir = work.temp_dir = folder.temp_dir

        emit = RecordSink(folder, summary, on_record, on_progress)

        previous = folder.previous() if config.skip_existing else {}
        todo = []
        for index, source in enumerate(sources):
            skipped = work.skipped(work.plan(source), previous) if config.skip_existing else None
            if skipped is not None:
                emit(skipped)
            else:
                todo.append(_item(index, source))
        if todo:
            done, unrecorded = 0, []
            # A signal stops the run between batches, never inside Ray's client (whose
            # shutdown after an exception inside it can end the process with status 1).
            with _connected(ray, options):
                with (
                    interrupts_deferred() as stop,
                    contextlib.closing(_records(ray, todo, work, setup, options)) as batches,
                ):
                    for batch in batches:
                        for records in batch:
                            emit(records)
                        done += len(batch)
                        if stop.signum is not None:
                            break
                if stop.signum is not None:
                    # The iterator is closed, but the pool's actors may still be finishing the
                    # batches in flight: let them, before Ray shuts down. A shutdown racing
                    # them ended the driver with status 1 (no message, no 130) in 2 of 9
                    # interrupted runs here, none of 10 with this pause (docs/scale.md).
                    time.sleep(_SETTLE_S)
                    left = [sources[item["index"]] for item in todo[done:]]
                    unrecorded = _unrecorded_outputs(folder, work, left)
                    _remove(unrecorded)
            _remove(unrecorded)  # again with the actors gone: files they wrote during shutdown
            stop.check()
        folder.compact()
    return summary


#: Seconds an interrupted run waits between stopping Ray Data's pool and shutting Ray down.
_SETTLE_S = 1.0


def _unrecorded_outputs(
    folder: OutputFolder, work: BatchWork, sources: Sequence[Source]
) -> list[Path]:
    """After an interrupt, the output paths of ``sources`` (inputs whose records never came
    back: their batch was in flight) that no manifest record lists; removed, every file on
    disk keeps its record."""
    listed = {out for record in folder.previous().values() for out in record.get("outputs") or ()}
    return [
        path
        for source in sources
        for paths in work.plan(source).paths.values()
        for path in paths.values()
        if str(path) not in listed
    ]


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _records(
    ray: Any, items: list[dict[str, Any]], work: BatchWork, setup: ActorSetup, options: RayOptions
) -> Iterator[list[list[Record]]]:
    """Per batch, the records of each of its inputs, in input order, as the actors finish
    them."""
    from ray.data import ActorPoolStrategy, DataContext

    # Ray Data's console log narrates the execution plan and tunes; camcli's own display says
    # what matters (progress, each failure); the full log stays in the Ray session's folder.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.ERROR)
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # the manifest in input order
    context.enable_progress_bars = False  # camcli's own bar counts the images
    size = setup.config.batch_size
    pool = (
        ActorPoolStrategy(min_size=1, max_size=None)
        if options.actors is None
        else ActorPoolStrategy(size=options.actors)
    )
    dataset = (
        ray.data.from_items(items)
        .map_batches(
            _read_batch,
            batch_size=size,
            batch_format="numpy",
            fn_kwargs={
                "preprocess": work.explainer.loaded.preprocess,
                "keep_image": work.keep_image,
                "max_pixels": work.max_pixels,
            },
        )
        .map_batches(
            _ExplainActor,
            batch_size=size,
            batch_format="numpy",
            fn_constructor_kwargs={"setup": setup},
            compute=pool,
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
        )
    )
    batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
    try:
        for batch in batches:
            yield [
                [json.loads(line) for line in str(text).split("\n")] for text in batch["records"]
            ]
    except ray.exceptions.RayError as exc:
        reason = str(exc).strip().splitlines()
        raise CamcliError(
            f"the Ray run failed: {reason[-1] if reason else type(exc).__name__}"
        ) from None
    finally:
        with interrupts_ignored():
            close = getattr(batches, "close", None)
            if close is not None:
                close()


class ExplainBatch:
    """A callable class for ``ray.data.Dataset.map_batches``: images in, maps and predictions
    out (nothing is written). Each actor builds the model once::

        import ray
        from camcli.config import ExplainSpec, ModelSpec
        from camcli.engines.ray import ExplainBatch

        ds = ray.data.read_images("s3://bucket/photos", include_paths=True, mode="RGB")
        maps = ds.map_batches(
            ExplainBatch,
            fn_constructor_kwargs={"model": ModelSpec("resnet50"),
                                   "explain": ExplainSpec(targets=("top1",)), "overlay": "jpg"},
            compute=ray.data.ActorPoolStrategy(size=4),
            num_gpus=1,  # per actor, on a GPU cluster
            batch_size=32,
            batch_format="numpy",
        )

    In: an ``image`` column, H x W x 3 uint8 RGB per row (any size; ``read_images`` makes it),
    and any other columns (``path``...), which are passed through. Out, per row, for the T
    targets: ``map`` (T, h, w) float32, the raw map at the layer's resolution (as the
    ``.npy`` files); ``class_index`` (T,) int64; ``score`` (T,) float32, the softmax
    probability; ``label`` (T,) class names ("" without labels); with ``overlay`` ("jpg" or
    "png"), ``overlay`` (T,) the encoded heatmaps over the image at its own size; and
    ``error``: "" or why the row's outputs cannot be trusted (its map is then zeros).

    ``model`` is a ModelSpec and ``explain`` an ExplainSpec (``camcli run``'s options), or
    ``model`` a name with the fields of both as keywords (``{"model": "resnet50", "targets":
    ["top1"]}``). The images arrive decoded and the output is read as the model's own, so the
    model spec's ``max_pixels`` and ``head`` do not apply. CAM needs gradients: the model runs
    with autograd on, never under ``torch.inference_mode()``.
    """

    def __init__(
        self,
        model: str | ModelSpec = DEFAULT_MODEL,
        explain: ExplainSpec | None = None,
        *,
        overlay: str | None = None,
        alpha: float = 0.5,
        colormap: str = "jet",
        **options: Any,
    ) -> None:
        from camcli.models import load_model
        from camcli.render import colormap_lut

        model_spec, explain_spec = _specs(model, explain, options)
        if overlay not in (None, "jpg", "png"):
            raise UsageError(f"overlay {overlay!r}: use jpg, png or None")
        colormap_lut(colormap)
        self.loaded = load_model(model_spec, progress=False)
        self.explainer = Explainer(self.loaded, explain_spec)
        self.targets = parse_targets(explain_spec.targets, explain_spec.top_k,
                                     self.loaded.labels, self.loaded.num_classes)  # fmt: skip
        self.overlay = overlay
        self.alpha = alpha
        self.colormap = colormap

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        from camcli.explain import to_model_input
        from camcli.render import overlay

        if "image" not in batch:
            raise UsageError("ExplainBatch: the batch has no 'image' column")
        images = [np.asarray(image) for image in batch["image"]]
        views, boxes = [], []
        for image in images:
            view, box = model_view(to_rgb(Image.fromarray(image)), self.loaded.preprocess)
            views.append(view)
            boxes.append(box)
        result = self.explainer.explain(to_model_input(np.stack(views), self.loaded), self.targets)
        out = {k: v for k, v in batch.items() if k != "image"}
        out["map"] = result.maps.astype(np.float32)
        out["class_index"] = result.class_indices.astype(np.int64)
        out["score"] = result.scores.astype(np.float32)
        out["label"] = np.asarray(
            [[self.loaded.label(int(c)) or "" for c in row] for row in result.class_indices]
        )
        out["error"] = np.asarray([p or "" for p in (result.problems or [None] * len(images))])
        if self.overlay is not None:
            encoded = [
                [
                    encode_image(
                        overlay(image, cam, box, alpha=self.alpha, colormap=self.colormap),
                        self.overlay,
                    )
                    for cam in maps
                ]
                for image, maps, box in zip(images, result.maps, boxes, strict=True)
            ]
            out["overlay"] = np.asarray(encoded, dtype=object)
        return out


def _specs(
    model: str | ModelSpec, explain: ExplainSpec | None, options: Mapping[str, Any]
) -> tuple[ModelSpec, ExplainSpec]:
    """``ExplainBatch``'s model and explain specs: those given, or built from the keywords
    (each to the spec that has a field of its name)."""
    model_fields = {f.name for f in fields(ModelSpec)}
    explain_fields = {f.name for f in fields(ExplainSpec)}
    for name in options:
        if name not in model_fields | explain_fields:
            raise TypeError(f"ExplainBatch got an unexpected keyword argument {name!r}")
    for_model = {k: v for k, v in options.items() if k in model_fields}
    for_explain = {k: v for k, v in options.items() if k in explain_fields}
    if isinstance(model, ModelSpec) and for_model:
        raise TypeError("ExplainBatch: a ModelSpec or its fields as keywords, not both")
    if explain is not None and for_explain:
        raise TypeError("ExplainBatch: an ExplainSpec or its fields as keywords, not both")
    model_spec = model if isinstance(model, ModelSpec) else ModelSpec(model=model, **for_model)
    return model_spec, explain or ExplainSpec(**for_explain)
