"""``camcli run`` as one library call: set up (all checks before any work), run, return the tally.

What a run shows (records, progress, warnings) goes to an observer the caller passes in
(``RunObserver``: the command's ``camcli.display.RunDisplay``); the summary line, the report
and the exit code are the command's (``camcli.cli.run``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from camcli.config import ExplainSpec, ModelSpec, RunConfig, Summary
from camcli.engines.batch import run_settings
from camcli.engines.batchsize import AUTO, auto_batch_size
from camcli.engines.local import Pipeline
from camcli.errors import UsageError
from camcli.explain import Explainer, concept_targets, parse_targets
from camcli.methods import get_method_class
from camcli.models import LoadedModel, load_model
from camcli.outfolder import MANIFEST, Record, check_output_folder, part_name
from camcli.render import colormap_lut
from camcli.shards import select_sources
from camcli.sources import collect_sources, is_video_name
from camcli.startup import resume_gc
from camcli.targets import Target, apply_head, head_targets

if TYPE_CHECKING:
    from camcli.engines.ray import RayOptions

ENGINES = ("local", "ray")


class RunObserver(Protocol):
    """Who hears about a run as it goes (``camcli.display.RunDisplay``).

    ``live``: show the weights' download progress; ``warnings_once``: the context the whole
    setup and run happen in (to show each distinct warning once); ``running``: the context of
    the images' processing; ``record``: each manifest record; ``advance``: ``n`` more inputs
    done; ``passes``: ``done`` of ``total`` extra forward passes of one explanation.
    """

    live: bool

    def warnings_once(self) -> AbstractContextManager[Any]: ...

    def running(self, description: str, total: int) -> AbstractContextManager[Any]: ...

    def record(self, record: Record) -> None: ...

    def advance(self, n: int) -> None: ...

    def passes(self, done: int, total: int) -> None: ...


class _Unobserved:
    """A run nobody watches: warnings go their usual way, nothing else is shown."""

    live = False

    def warnings_once(self) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def running(self, description: str, total: int) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def record(self, record: Record) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def passes(self, done: int, total: int) -> None:
        pass


@dataclass
class RunResult:
    """What a run did (``summary``) and where: the output folder and the manifest file its
    records went to (``manifest.jsonl``, or a shard's own part)."""

    summary: Summary
    out: Path
    manifest: str


def run_images(
    paths: Sequence[str],
    model: ModelSpec,
    explain: ExplainSpec,
    config: RunConfig,
    *,
    engine: str = "local",
    ray: RayOptions | None = None,
    observer: RunObserver | None = None,
) -> RunResult:
    """Explain every image in ``paths`` with ``model`` as ``explain`` says and write the
    outputs as ``config`` says; what the run did.

    ``engine``: ``local`` (threads and one model here) or ``ray`` (Ray Data, ``ray`` says
    where and how wide; ``camcli.engines.ray``). Raises a CamcliError (exit 2) for any setup
    problem before a single image is processed; a failed input is a record, not an exception.
    """
    observer = observer or _Unobserved()
    driver_device = _check_engine(engine, ray, model.device)
    with observer.warnings_once():
        get_method_class(explain.method)
        colormap_lut(config.colormap)
        sources = collect_sources(paths, sys.stdin, exclude=(config.out,))
        sources = select_sources(sources, config.shard)  # all of them without --shard
        # A file in the way, not writable, in use: exit 2 now.
        check_output_folder(config.out, config.shard)
        # The Ray actors build the model and the explainer from the same specs (on their own
        # device) as the driver does here.
        loaded = load_model(replace(model, device=driver_device), progress=observer.live)
        apply_head(loaded, model.head)
        explainer = Explainer(loaded, explain, progress=observer.passes)
        targets = _targets(loaded, explainer, explain)
        if config.batch_size == AUTO:
            config = replace(config, batch_size=auto_batch_size(explainer, targets))
        # Videos' frames are not counted before they are read: their jobs count as large.
        videos = any(is_video_name(s.path) for s in sources)
        explainer.use_runtime(config.batch_size, images=None if videos else len(sources))
        resume_gc()

        # Chosen by the user, they go in the output names (a black-box method has none).
        name_layers = bool(explain.layers) and bool(explainer.layer_names)
        runtime = explainer.offload.runtime
        on = "" if runtime == "torch" else f" on {runtime}"
        with observer.running(f"{explainer.method_name} {loaded.name}{on}", total=len(sources)):
            settings = run_settings(explainer, config, model.checkpoint, targets)
            if engine == "ray":
                from camcli.engines.batch import BatchWork
                from camcli.engines.ray import ActorSetup, RayOptions, run_on_ray

                work = BatchWork(explainer, targets, config, settings, name_layers=name_layers)
                # The head the driver resolved, so that every actor reads the output alike.
                actors = replace(model, head=loaded.head)
                chosen = replace(explain, runtime=explainer.offload.runtime)
                setup = ActorSetup(actors, chosen, targets, config, settings,
                                   name_layers=name_layers)  # fmt: skip
                summary = run_on_ray(sources, work, setup, ray or RayOptions(),
                                     on_record=observer.record, on_progress=observer.advance)  # fmt: skip
            else:
                pipeline = Pipeline(
                    explainer,
                    targets,
                    config,
                    on_record=observer.record,
                    on_progress=observer.advance,
                    name_layers=name_layers,
                    settings=settings,
                )
                summary = pipeline.run(sources)
    manifest = part_name(config.shard) if config.shard else MANIFEST
    return RunResult(summary, config.out, manifest)


def _targets(loaded: LoadedModel, explainer: Explainer, explain: ExplainSpec) -> list[Target]:
    """What the run explains: ``--target`` / ``--top-k`` read for the model's head, or a
    concept method's concepts."""
    given, top_k = explain.targets, explain.top_k
    targets = head_targets(
        loaded.head,
        given,
        top_k,
        lambda: parse_targets(given, top_k, loaded.labels, loaded.num_classes),
        loaded.num_classes,
        explain.threshold,
    )
    if getattr(explainer.method, "concepts", None) is not None:
        if given or top_k is not None:
            raise UsageError(
                f"{explain.method}'s targets are its concepts: use --concepts K, not "
                "--target/--top-k"
            )
        targets = concept_targets(explain.concepts)
    return targets


def _check_engine(engine: str, ray: RayOptions | None, device: str) -> str:
    """UsageError unless the engine options fit together; the device the driver loads the
    model on (to check the setup): the CPU when the GPUs belong to Ray's actors."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r} (use {' or '.join(ENGINES)})")
    if engine != "ray":
        if ray is not None:
            raise UsageError("--ray-address, --ray-actors and --num-gpus need --engine ray")
        return device
    from camcli.engines.ray import import_ray

    import_ray()  # not installed: exit 2 with the install command, before the model loads
    if ray is not None and ray.num_gpus > 0:
        if device == "cpu":
            raise UsageError("--num-gpus with --device cpu: the actors would hold GPUs unused")
        return "cpu"
    return device
