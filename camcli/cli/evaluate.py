"""``camcli evaluate``: how faithful each method's maps are.

The library (``camcli.evaluate``) measures and returns an ``Evaluation``; this command shows
it: the progress bar and the error lines on stderr, the table, ``--json`` or ``--csv`` on
stdout, ``--plots`` and the ``--report`` page, the closing line and the exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from camcli.cli import options as o
from camcli.cli.edge import command_errors, go_offline
from camcli.config import DEFAULT_METHOD, DEFAULT_MODEL, ExplainSpec, ModelSpec
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from camcli.evaluate import Evaluation

#: What the table and the CSV show of each metric's summary, in their order.
PARTS = ("mean", "low", "high")


@command_errors(each_line=True)
def evaluate(
    paths: o.PathsArgument,
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
            help="Metric family: deletion (deletion/insertion AUC), confidence (average drop, "
            "increase), road, pointing (needs --boxes), sanity (model randomisation); "
            "repeatable. Default: all.",
            show_default=False,
        ),
    ] = None,
    model: o.ModelOption = DEFAULT_MODEL,
    weights: o.WeightsOption = ModelSpec.weights,
    checkpoint: o.CheckpointOption = None,
    num_classes: o.NumClassesOption = None,
    labels: o.LabelsOption = None,
    layer: o.LayerOption = None,
    target: o.TargetOption = None,
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
    seed: o.SeedOption = ExplainSpec.seed,
    masks: o.MasksOption = str(ExplainSpec.masks),
    mask_cells: o.MaskCellsOption = ExplainSpec.mask_cells,
    mask_p: o.MaskPOption = ExplainSpec.mask_p,
    window: o.WindowOption = ExplainSpec.window,
    stride: o.StrideOption = ExplainSpec.stride,
    baseline: o.BaselineOption = ExplainSpec.baseline,
    fit: o.FitOption = o.Fit(ModelSpec.fit),
    input_size: o.InputSizeOption = None,
    normalize: o.NormalizeOption = None,
    mean: o.MeanOption = None,
    std: o.StdOption = None,
    batch_size: o.BatchSizeOption = "auto",
    chunk_size: o.ChunkSizeOption = ExplainSpec.chunk_size,
    max_pixels: o.MaxPixelsOption = None,
    device: o.DeviceOption = ModelSpec.device,
    offline: o.OfflineOption = False,
    precision: o.PrecisionOption = o.Precision(ExplainSpec.precision),
    runtime: o.RuntimeOption = o.Runtime(ExplainSpec.runtime),
    json_out: o.JsonOption = False,
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
    quiet: o.QuietOption = False,
) -> None:
    """Measure how faithful each method's maps are: deletion/insertion AUC, average drop,
    ROAD, pointing game, model-randomisation sanity check; one row per method.

    Exit 0 when every image was evaluated, 1 when some could not be read, 2 for bad options.
    """
    go_offline(offline)
    from camcli.display import error_line, stderr_console
    from camcli.engines.batchsize import parse_batch_size
    from camcli.evaluate import check_options, evaluate_methods, prepare, results_dict

    if json_out and csv_out:
        raise UsageError("--json and --csv: choose one")
    methods = method or [DEFAULT_METHOD, "randomcam", "sobel"]  # and the floor (methods/floors)
    families = [m.value for m in metric] if metric else [m.value for m in o.Metric]
    explain = ExplainSpec(method=methods[0], layers=tuple(layer or ()),
                          targets=tuple(target or ()), chunk_size=chunk_size,
                          precision=precision.value, masks=masks, mask_cells=mask_cells,
                          mask_p=mask_p, seed=seed, window=window, stride=stride,
                          baseline=baseline, runtime=runtime.value)  # fmt: skip
    parsed_batch_size = parse_batch_size(batch_size)
    check_options(methods, explain, families, steps, sanity_stages)
    if plots is not None and plots.exists() and not plots.is_dir():
        raise UsageError(f"--plots {plots}: not a folder")
    if report is not None and (report.is_dir() or not report.parent.is_dir()):
        raise UsageError(f"--report {report}: not a file in an existing folder")
    console = stderr_console()

    def error(message: str) -> None:
        error_line(console, message)

    spec = o.model_spec(model, weights, checkpoint, num_classes, labels, fit, input_size,
                        device, max_pixels, normalize=normalize, mean=mean, std=std)  # fmt: skip
    ready = prepare(
        paths, methods, spec, explain, families=families, steps=steps, stages=sanity_stages,
        seed=seed, batch_size=parsed_batch_size, boxes=boxes,
        progress=console.is_terminal and not quiet, on_error=error,
    )  # fmt: skip
    bar = _progress_bar(console, quiet)
    with bar:
        task = bar.add_task(f"evaluate {ready.loaded.name}", total=None, passes=0)

        def passes(n: int) -> None:
            bar.update(task, passes=bar.tasks[task].fields["passes"] + n)

        def advance(n: int) -> None:
            if n < 0:  # the library tells the total first
                bar.update(task, total=-n)
            else:
                bar.update(task, advance=n)

        evaluation = evaluate_methods(
            ready.loaded, ready.methods, ready.items, ready.settings, errors=ready.errors,
            on_error=error, passes=passes, advance=advance,
        )  # fmt: skip
    found = results_dict(evaluation)
    _write_files(found, plots, report)
    _print_results(evaluation, found, "json" if json_out else "csv" if csv_out else "table")
    failed, count = len(evaluation.errors), len(evaluation.errors) + len(evaluation.items)
    if not evaluation.items:
        error(f"none of the {count} images could be evaluated; every metric is n/a")
    elif failed and not quiet:
        console.print(f"{failed} of {count} images could not be evaluated")
    raise typer.Exit(code=EXIT_SOME_FAILED if failed else EXIT_OK)


def _progress_bar(console: Console, quiet: bool) -> Progress:
    """Images done of the (method, image, phase) steps, and the forward passes run so far; on a
    terminal only, and never with ``--quiet``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[passes]} forward passes"),
        console=console,
        disable=quiet or not console.is_terminal,
    )


def _write_files(found: dict[str, Any], plots: Path | None, report: Path | None) -> None:
    """``--plots``: the mean curves as PNG; ``--report``: the HTML page."""
    if plots is not None:
        from camcli.evaluate.plots import write_plots

        methods = found["methods"]
        aucs = {
            m: {c: v["metrics"][f"{c}_auc"]["mean"] for c in v["curves"]}
            for m, v in methods.items()
        }
        write_plots(plots, {m: v["curves"] for m, v in methods.items()}, aucs)
    if report is not None:
        from camcli.report.evaluation import write_evaluation_report

        write_evaluation_report(found, report)


def _print_results(evaluation: Evaluation, found: dict[str, Any], output: str) -> None:
    """The results on stdout: the JSON object, the CSV rows or the table."""
    from camcli.display import StdoutConsole
    from camcli.evaluate import metric_names
    from camcli.machine_output import csv_text, json_text

    names = metric_names(evaluation)
    if output == "json":
        sys.stdout.write(json_text(found, indent=2) + "\n")
    elif output == "csv":
        header = ["method", *(f"{n}_{part}" for n in names for part in PARTS)]
        rows = [
            [method, *(info["metrics"][n][part] for n in names for part in PARTS)]
            for method, info in found["methods"].items()
        ]
        sys.stdout.write(csv_text(header, rows))
    else:
        # Piped or redirected, the table keeps its whole width rather than rich's 80 columns.
        screen = StdoutConsole()
        if not screen.is_terminal:
            screen = StdoutConsole(width=400)
        screen.print(_table(found, names))
    sys.stdout.flush()


def _cell(summary: dict[str, Any]) -> str:
    if summary["mean"] is None:
        return "n/a"
    return f"{summary['mean']:.3f} [{summary['low']:.3f}, {summary['high']:.3f}]"


def _table(found: dict[str, Any], names: list[str]) -> Table:
    """One row per method: each metric's mean and [95% interval]; arrows say which way is
    better; the sanity column says pass or fail."""
    from rich.table import Table

    from camcli.evaluate import HIGHER_IS_BETTER

    count = len(found["images"])
    grid = Table(
        title=f"{found['model']}: {count} image{'s' * (count != 1)}, mean [95% interval]",
        box=None,
    )
    grid.add_column("method", overflow="fold")
    for name in names:
        arrow = "↑" if HIGHER_IS_BETTER[name] else "↓"
        grid.add_column(f"{name} {arrow}", justify="right", overflow="fold")
    if "sanity_rho" in names:
        grid.add_column("sanity")
    for method, info in found["methods"].items():
        row = [method, *(_cell(info["metrics"][name]) for name in names)]
        if "sanity_rho" in names:
            passed = found["sanity"].get(method, {}).get("passed")
            row.append({True: "pass", False: "FAIL", None: "-"}[passed])
        grid.add_row(*row)
    return grid
