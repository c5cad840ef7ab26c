"""``camcli run``: heatmaps for images, files or whole folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camcli.cli import options as o
from camcli.cli.edge import command_errors, go_offline
from camcli.config import DEFAULT_METHOD, DEFAULT_MODEL, ExplainSpec, ModelSpec, RunConfig
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError


@command_errors(
    interrupted="interrupted: finished outputs and manifest.jsonl are kept; "
    "rerun with --skip-existing to resume"
)
def run(
    paths: o.PathsArgument,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder; directory trees are mirrored.")
    ] = Path("camcli-out"),
    model: o.ModelOption = DEFAULT_MODEL,
    weights: o.WeightsOption = ModelSpec.weights,
    checkpoint: o.CheckpointOption = None,
    num_classes: o.NumClassesOption = None,
    labels: o.LabelsOption = None,
    method: Annotated[
        str, typer.Option("--method", help="CAM method (camcli methods lists them).")
    ] = DEFAULT_METHOD,
    layer: o.LayerOption = None,
    target: o.TargetOption = None,
    top_k: Annotated[
        int | None,
        typer.Option("--top-k", "-k", help="Maps for the K most likely classes.", min=1),
    ] = None,
    fmt: Annotated[
        list[o.Format] | None,
        typer.Option(
            "--format",
            "-f",
            help="jpg or png (overlay), npy (raw float32 map); repeatable. Default: jpg.",
            show_default=False,
        ),
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Opacity of the heatmap over the image.", min=0.0, max=1.0)
    ] = 0.5,
    colormap: Annotated[
        str, typer.Option(help="Any OpenCV colormap name (jet, viridis, turbo, inferno...).")
    ] = "jet",
    fit: o.FitOption = o.Fit(ModelSpec.fit),
    input_size: o.InputSizeOption = None,
    normalize: o.NormalizeOption = None,
    mean: o.MeanOption = None,
    std: o.StdOption = None,
    batch_size: o.BatchSizeOption = "auto",
    aug_smooth: Annotated[
        bool,
        typer.Option(
            "--aug-smooth",
            help="Average the maps of flipped and rescaled copies (6 passes per image).",
        ),
    ] = False,
    eigen_smooth: Annotated[
        bool,
        typer.Option(
            "--eigen-smooth",
            help="First principal component of the weighted activations instead of their sum.",
        ),
    ] = False,
    chunk_size: o.ChunkSizeOption = ExplainSpec.chunk_size,
    max_pixels: o.MaxPixelsOption = None,
    device: o.DeviceOption = ModelSpec.device,
    offline: o.OfflineOption = False,
    precision: o.PrecisionOption = o.Precision(ExplainSpec.precision),
    runtime: o.RuntimeOption = o.Runtime(ExplainSpec.runtime),
    skip_existing: Annotated[
        bool, typer.Option(help="Skip inputs whose outputs all exist (resume a run).")
    ] = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Explain only shard I of N (0-based; by a hash of each input's relative "
            "name), for job arrays: shards run at once into one OUT, each with its own "
            "manifest part; camcli manifest merge OUT joins them.",
            metavar="I/N",
            show_default=False,
        ),
    ] = None,
    every: Annotated[
        int, typer.Option(help="Videos: explain every N-th frame; the others carry its map.", min=1)
    ] = 1,
    fps: Annotated[
        float | None,
        typer.Option(
            "--fps",
            help="Videos: explain F frames per second of video (instead of --every).",
            metavar="F",
            min=0.001,
            show_default=False,
        ),
    ] = None,
    smooth_frames: Annotated[
        int,
        typer.Option(
            help="Videos: average the maps of the last K explained frames (1: off).",
            metavar="K",
            min=1,
        ),
    ] = 1,
    quiet: o.QuietOption = False,
    json_lines: o.JsonOption = False,
    engine: Annotated[
        o.Engine,
        typer.Option(
            help="local: threads and one model in this process; ray: Ray Data (read tasks, an "
            "actor pool with one model per actor), needs the ray extra (uv sync --extra ray)."
        ),
    ] = o.Engine.local,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --engine ray: the cluster to join (auto: the one this machine is in; "
            "ray://host:10001). Default: a new local Ray instance.",
            metavar="ADDR",
            show_default=False,
        ),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option(
            "--ray-actors",
            help="With --engine ray: a fixed pool of N actors (one model each). Default: from "
            "1 up to what the cluster holds.",
            metavar="N",
            min=1,
            show_default=False,
        ),
    ] = None,
    num_gpus: Annotated[
        float | None,
        typer.Option(
            "--num-gpus",
            help="With --engine ray: GPUs per actor (0.5 shares one GPU between two actors).",
            min=0.0,
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also write OUT/report.html: every input's original and maps with labels "
            "and scores, failures first (camcli report OUT rebuilds it later).",
        ),
    ] = False,
    head: Annotated[
        str,
        typer.Option(
            help="What the classifier's output is: softmax, binary (one logit; targets "
            "positive / negative) or multilabel (sigmoid); auto: binary for one output."
        ),
    ] = ModelSpec.head,
    threshold: Annotated[
        float,
        typer.Option(
            help="Multi-label: a map for every label whose sigmoid reaches this.", min=0, max=1
        ),
    ] = ExplainSpec.threshold,
    score_threshold: Annotated[
        float,
        typer.Option(help="Detection: a map per box scoring at least this.", min=0, max=1),
    ] = ExplainSpec.score_threshold,
    concepts: Annotated[
        int,
        typer.Option(
            "--concepts",
            help="dff: concept maps per image (each recorded with the class it scores "
            "highest); they replace --target.",
            metavar="K",
            min=1,
        ),
    ] = ExplainSpec.concepts,
    masks: o.MasksOption = str(ExplainSpec.masks),
    mask_cells: o.MaskCellsOption = ExplainSpec.mask_cells,
    mask_p: o.MaskPOption = ExplainSpec.mask_p,
    seed: o.SeedOption = ExplainSpec.seed,
    window: o.WindowOption = ExplainSpec.window,
    stride: o.StrideOption = ExplainSpec.stride,
    baseline: o.BaselineOption = ExplainSpec.baseline,
) -> None:
    """Write heatmaps (overlays or raw maps) for images, files or whole folders."""
    go_offline(offline)
    from rich.markup import escape

    from camcli.display import RunDisplay
    from camcli.engines.batchsize import parse_batch_size
    from camcli.engines.ray import RayOptions
    from camcli.run import run_images
    from camcli.shards import parse_shard

    parsed_shard = None if shard is None else parse_shard(shard)
    config = RunConfig(
        out=out,
        formats=tuple(dict.fromkeys(f.value for f in (fmt or [o.Format.jpg]))),
        alpha=alpha,
        colormap=colormap,
        batch_size=parse_batch_size(batch_size),
        skip_existing=skip_existing,
        shard=parsed_shard,
        every=every,
        fps=fps,
        smooth_frames=smooth_frames,
    )
    if fps is not None and every != 1:
        raise UsageError("--fps and --every both choose the frames to explain: give one")
    if report and parsed_shard is not None:
        raise UsageError(
            "--report with --shard: shards write into OUT at once; run camcli report OUT "
            "once they have all finished"
        )
    spec = o.model_spec(model, weights, checkpoint, num_classes, labels, fit, input_size, device,
                        max_pixels, head, normalize, mean, std)  # fmt: skip
    explain = ExplainSpec(method=method, layers=tuple(layer or ()), targets=tuple(target or ()),
                          top_k=top_k, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                          precision=precision.value, chunk_size=chunk_size, threshold=threshold,
                          score_threshold=score_threshold, concepts=concepts, masks=masks,
                          mask_cells=mask_cells, mask_p=mask_p, seed=seed, window=window,
                          stride=stride, baseline=baseline,
                          runtime=runtime.value)  # fmt: skip
    wants_ray = engine is o.Engine.ray or ray_address or ray_actors or num_gpus
    ray = RayOptions(address=ray_address, actors=ray_actors, num_gpus=num_gpus or 0.0)
    display = RunDisplay(quiet=quiet, json_lines=json_lines)
    result = run_images(paths, spec, explain, config, engine=engine.value,
                        ray=ray if wants_ray else None, observer=display)  # fmt: skip
    display.finish(result.summary, result.out, result.manifest)
    if report:
        from camcli.report.run import write_run_report

        path, _, _ = write_run_report(result.out)
        if not quiet:
            display.console.print(f"report: {escape(str(path))}")
    raise typer.Exit(code=EXIT_SOME_FAILED if result.summary.failed else EXIT_OK)
