"""``camcli run`` as one library call: set up (all checks before any work), run, report."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from camcli import resume_gc
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from camcli.explain import Explainer, concept_targets, parse_targets
from camcli.methods import get_method_class
from camcli.models import load_model
from camcli.outfolder import MANIFEST, check_output_folder, part_name
from camcli.pipeline import Pipeline, RunConfig, run_settings
from camcli.progress import RunDisplay
from camcli.render import colormap_lut
from camcli.shards import select_sources
from camcli.sources import collect_sources


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
    concepts: int = 5,
) -> int:
    """Explain every image in ``paths`` and write the outputs; returns the exit code.

    Raises a CamcliError (exit 2) for any setup problem before a single image is processed.
    """
    display = RunDisplay(quiet=quiet, json_lines=json_lines)
    with display.warnings_once():
        get_method_class(method)
        colormap_lut(config.colormap)
        sources = collect_sources(paths, sys.stdin, exclude=(config.out,))
        sources = select_sources(sources, config.shard)  # all of them without --shard
        # A file in the way, not writable, in use: exit 2 now.
        check_output_folder(config.out, config.shard)
        loaded = load_model(
            model,
            weights=weights,
            checkpoint=checkpoint,
            num_classes=num_classes,
            labels=labels,
            device=device,
            input_size=input_size,
            fit=fit,
            progress=display.live,
        )
        explainer = Explainer(
            loaded,
            method=method,
            layers=layers,
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
            chunk_size=chunk_size,
            progress=display.passes,
            precision=precision,
        )
        parsed = parse_targets(targets, top_k, loaded.labels, loaded.num_classes)
        if getattr(explainer.method, "concepts", None) is not None:
            if targets or top_k is not None:
                raise UsageError(
                    f"{method}'s targets are its concepts: use --concepts K, not --target/--top-k"
                )
            parsed = concept_targets(concepts)
        resume_gc()

        with display.running(f"{explainer.method_name} {loaded.name}", total=len(sources)):
            pipeline = Pipeline(
                explainer,
                parsed,
                config,
                on_record=display.record,
                on_progress=display.advance,
                name_layers=bool(layers),
                settings=run_settings(explainer, config, checkpoint),
            )
            summary = pipeline.run(sources)
    display.finish(summary, config.out, part_name(config.shard) if config.shard else MANIFEST)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK
