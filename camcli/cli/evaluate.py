"""``camcli evaluate``: how faithful each method's maps are."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camcli.cli import options as o
from camcli.cli.edge import command_errors, go_offline
from camcli.errors import UsageError


@command_errors(each_line=True)
def evaluate(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, directories (walked recursively), glob patterns, or - to read "
            "one path per line from stdin.",
            show_default=False,
        ),
    ],
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="CAM method to evaluate (camcli methods lists them); repeat for several. "
            "Default: gradcam, with randomcam and sobel as the floor.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        list[o.Metric] | None,
        typer.Option(
            "--metric",
            help="o.Metric family: deletion (deletion/insertion AUC), confidence (average drop, "
            "increase), road, pointing (needs --boxes), sanity (model randomisation); "
            "repeatable. Default: all.",
            show_default=False,
        ),
    ] = None,
    model: o.ModelOption = "resnet50",
    weights: o.WeightsOption = "DEFAULT",
    checkpoint: o.CheckpointOption = None,
    num_classes: o.NumClassesOption = None,
    labels: o.LabelsOption = None,
    layer: o.LayerOption = None,
    target: Annotated[
        str,
        typer.Option("--target", "-t", help="The class explained: top1, topN, an index or a name."),
    ] = "top1",
    boxes: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Object boxes for the pointing game: a TOML file of [[case]] tables with image "
            "and box/boxes, as in camcli check (a check spec works as it is).",
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option(help="Deletion/insertion steps (fractions of the input).", min=1)
    ] = 20,
    sanity_stages: Annotated[
        int,
        typer.Option(
            "--sanity-stages",
            help="Stages of the cascading randomisation, after the head alone.",
            min=1,
        ),
    ] = 4,
    seed: Annotated[
        int,
        typer.Option(
            help="Seed of ROAD's noise, the randomised models and the bootstrap intervals."
        ),
    ] = 0,
    fit: o.FitOption = o.Fit.crop,
    input_size: o.InputSizeOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images explained per batch.", min=1)
    ] = 16,
    chunk_size: Annotated[
        int,
        typer.Option("--chunk-size", help="Perturbed inputs per forward pass.", min=1),
    ] = 32,
    max_pixels: o.MaxPixelsOption = None,
    device: o.DeviceOption = "auto",
    offline: o.OfflineOption = False,
    precision: o.PrecisionOption = o.Precision.fp32,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")
    ] = False,
    csv_out: Annotated[
        bool, typer.Option("--csv", help="Print one CSV row per method on stdout.")
    ] = False,
    plots: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Write the mean deletion/insertion curves as PNG into DIR."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Also write an HTML page: the metric table and the deletion/insertion curves.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar; errors only.")
    ] = False,
) -> None:
    """Measure how faithful each method's maps are: deletion/insertion AUC, average drop,
    ROAD, pointing game, model-randomisation sanity check; one row per method.

    Exit 0 when every image was evaluated, 1 when some could not be read, 2 for bad options.
    """
    go_offline(offline)
    from camcli.evaluate import ModelOptions, run_evaluate

    if json_out and csv_out:
        raise UsageError("--json and --csv: choose one")
    options = ModelOptions(
        model=model,
        weights=weights,
        checkpoint=checkpoint,
        num_classes=num_classes,
        labels=labels,
        fit=fit.value,
        input_size=input_size,
        device=device,
        max_pixels=max_pixels,
    )
    code = run_evaluate(
        paths,
        method or ["gradcam", "randomcam", "sobel"],
        options,
        families=[m.value for m in metric] if metric else [m.value for m in o.Metric],
        layers=layer or [],
        target=target,
        steps=steps,
        stages=sanity_stages,
        seed=seed,
        batch_size=batch_size,
        chunk_size=chunk_size,
        precision=precision.value,
        boxes=boxes,
        output="json" if json_out else "csv" if csv_out else "table",
        plots=plots,
        report=report,
        quiet=quiet,
    )
    raise typer.Exit(code=code)
