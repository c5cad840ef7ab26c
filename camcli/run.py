"""``camcli run`` as one library call: set up (all checks before any work), run, report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from camcli.config import RunConfig
from camcli.display import RunDisplay
from camcli.engines.batch import run_settings
from camcli.engines.batchsize import AUTO, auto_batch_size
from camcli.engines.local import Pipeline
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from camcli.explain import Explainer, concept_targets, parse_targets
from camcli.methods import get_method_class
from camcli.models import load_model
from camcli.outfolder import MANIFEST, check_output_folder, part_name
from camcli.render import colormap_lut
from camcli.shards import select_sources
from camcli.sources import collect_sources
from camcli.startup import resume_gc
from camcli.targets import apply_head, head_targets

if TYPE_CHECKING:
    from camcli.engines.ray import RayOptions

ENGINES = ("local", "ray")


def run_images(
    paths: Sequence[str],
    config: RunConfig,
    *,
    model: str = "resnet50",
    weights: str = "DEFAULT",
    checkpoint: Path | None = None,
    num_classes: int | None = None,
    labels: Path | None = None,
    method: str = "gradcam",
    layers: Sequence[str] = (),
    targets: Sequence[str] = (),
    top_k: int | None = None,
    fit: str = "crop",
    input_size: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    quiet: bool = False,
    json_lines: bool = False,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    chunk_size: int = 32,
    engine: str = "local",
    ray: RayOptions | None = None,
    report: bool = False,
    head: str = "auto",
    threshold: float = 0.5,
    score_threshold: float = 0.5,
    concepts: int = 5,
) -> int:
    """Explain every image in ``paths`` and write the outputs; returns the exit code.

    ``engine``: ``local`` (threads and one model here) or ``ray`` (Ray Data, ``ray`` says
    where and how wide; ``camcli.engines.ray``). ``report``: then write ``OUT/report.html``
    (``camcli.report.run``), failed inputs or not. Raises a CamcliError (exit 2) for any setup
    problem before a single image is processed.
    """
    display = RunDisplay(quiet=quiet, json_lines=json_lines)
    if report and config.shard is not None:
        raise UsageError(
            "--report with --shard: shards write into OUT at once; run camcli report OUT "
            "once they have all finished"
        )
    driver_device = _check_engine(engine, ray, device)
    with display.warnings_once():
        get_method_class(method)
        colormap_lut(config.colormap)
        sources = collect_sources(paths, sys.stdin, exclude=(config.out,))
        sources = select_sources(sources, config.shard)  # all of them without --shard
        # A file in the way, not writable, in use: exit 2 now.
        check_output_folder(config.out, config.shard)
        # What builds the model and the explainer, once: the Ray actors rebuild them from the
        # same arguments (on their own device) as the driver does here.
        model_args = dict(name=model, weights=weights, checkpoint=checkpoint,
                          num_classes=num_classes, labels=labels, device=device,
                          input_size=input_size, fit=fit)  # fmt: skip
        explainer_args = dict(method=method, layers=list(layers), aug_smooth=aug_smooth,
                              eigen_smooth=eigen_smooth, chunk_size=chunk_size,
                              precision=precision, score_threshold=score_threshold)  # fmt: skip
        loaded = load_model(**{**model_args, "device": driver_device}, progress=display.live)
        apply_head(loaded, head)
        explainer = Explainer(loaded, **explainer_args, progress=display.passes)
        parsed = head_targets(
            loaded.head,
            targets,
            top_k,
            lambda: parse_targets(targets, top_k, loaded.labels, loaded.num_classes),
            loaded.num_classes,
            threshold,
        )
        if getattr(explainer.method, "concepts", None) is not None:
            if targets or top_k is not None:
                raise UsageError(
                    f"{method}'s targets are its concepts: use --concepts K, not --target/--top-k"
                )
            parsed = concept_targets(concepts)
        if config.batch_size == AUTO:
            config.batch_size = auto_batch_size(explainer, parsed)
        resume_gc()

        with display.running(f"{explainer.method_name} {loaded.name}", total=len(sources)):
            settings = run_settings(explainer, config, checkpoint, parsed)
            if engine == "ray":
                from camcli.engines.batch import BatchWork
                from camcli.engines.ray import ActorSetup, RayOptions, run_on_ray

                work = BatchWork(explainer, parsed, config, settings, name_layers=bool(layers))
                setup = ActorSetup(model_args, explainer_args, parsed, config, settings,
                                   name_layers=bool(layers), head=loaded.head)  # fmt: skip
                summary = run_on_ray(sources, work, setup, ray or RayOptions(),
                                     on_record=display.record, on_progress=display.advance)  # fmt: skip
            else:
                pipeline = Pipeline(
                    explainer,
                    parsed,
                    config,
                    on_record=display.record,
                    on_progress=display.advance,
                    name_layers=bool(layers),
                    settings=settings,
                )
                summary = pipeline.run(sources)
    display.finish(summary, config.out, part_name(config.shard) if config.shard else MANIFEST)
    if report:
        from camcli.report.run import write_run_report

        path, _, _ = write_run_report(config.out)
        if not quiet:
            display.console.print(f"report: {escape(str(path))}")
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


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
