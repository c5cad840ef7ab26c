"""``camcli evaluate``: how faithful each method's maps are, measured on a folder of images.

The flow, one module per step: ``runner`` (images -> model views -> each method's maps ->
every metric family's per-image values), with one module per family: ``deletion`` (RISE
deletion and insertion AUC), ``confidence`` (average drop, increase in confidence), ``road``
(ROAD MoRF, LeRF and combined), ``sanity`` (cascading model randomisation); pointing game
and energy come from ``camcli.metrics.maps``. ``scoring`` runs the perturbed inputs through
the explainer's engine; ``stats`` gives means and 95% intervals; ``report`` the table, JSON
and CSV; ``plots`` the curves as PNG.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from camcli.check.spec import read_boxes
from camcli.display import StdoutConsole, one_line
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from camcli.evaluate.plots import write_plots
from camcli.evaluate.report import report_csv, report_json, table
from camcli.evaluate.runner import FAMILIES, Evaluation, Settings, evaluate_methods, load_items
from camcli.explain import parse_targets
from camcli.machine_output import json_text
from camcli.methods import get_method_class
from camcli.models import load_model
from camcli.sources import collect_sources
from camcli.startup import resume_gc

__all__ = ["FAMILIES", "Evaluation", "ModelOptions", "Settings", "run_evaluate"]


@dataclass(frozen=True)
class ModelOptions:
    """The model and input options shared with ``camcli run``."""

    model: str = "resnet50"
    weights: str = "DEFAULT"
    checkpoint: Path | None = None
    num_classes: int | None = None
    labels: Path | None = None
    fit: str = "crop"
    input_size: int | None = None
    device: str = "auto"
    max_pixels: int | None = None


def run_evaluate(
    paths: Sequence[str],
    methods: Sequence[str],
    model: ModelOptions,
    *,
    families: Sequence[str] = tuple(FAMILIES),
    layers: Sequence[str] = (),
    target: str = "top1",
    steps: int = 20,
    stages: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    chunk_size: int = 32,
    precision: str = "fp32",
    boxes: Path | None = None,
    output: str = "table",
    plots: Path | None = None,
    report: Path | None = None,
    quiet: bool = False,
    console: Console | None = None,
) -> int:
    """Evaluate ``methods`` on the images in ``paths``; print the table (or ``output`` =
    "json" / "csv" on stdout); returns 0, or 1 when some image could not be evaluated (not
    read, or the model's output on it is not finite). With ``report``, also that HTML page
    (``camcli.report.evaluation``).

    Every option is checked (UsageError, exit 2) before any image is explained.
    """
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    for method in methods:
        get_method_class(method)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r} (use {', '.join(FAMILIES)})")
    if steps < 1:
        raise UsageError("--steps must be at least 1")
    if stages < 1:
        raise UsageError("--sanity-stages must be at least 1")
    if plots is not None and plots.exists() and not plots.is_dir():
        raise UsageError(f"--plots {plots}: not a folder")
    if report is not None and (report.is_dir() or not report.parent.is_dir()):
        raise UsageError(f"--report {report}: not a file in an existing folder")
    box_table = read_boxes(boxes) if boxes is not None else None
    sources = collect_sources(paths, sys.stdin)
    loaded = load_model(
        model.model,
        weights=model.weights,
        checkpoint=model.checkpoint,
        num_classes=model.num_classes,
        labels=model.labels,
        device=model.device,
        input_size=model.input_size,
        fit=model.fit,
        progress=console.is_terminal and not quiet,
    )
    (parsed,) = parse_targets([target], None, loaded.labels, loaded.num_classes)
    settings = Settings(
        families=tuple(dict.fromkeys(families)),
        steps=steps,
        stages=stages,
        seed=seed,
        batch_size=batch_size,
        chunk_size=chunk_size,
        precision=precision,
        layers=tuple(layers),
        target=parsed,
    )
    resume_gc()

    def error(message: str) -> None:
        console.print(f"[bold red]error:[/] {escape(one_line(message))}")

    items, errors = load_items(sources, loaded, box_table, model.max_pixels, error)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[passes]} forward passes"),
        console=console,
        disable=quiet or not console.is_terminal,
    )
    with bar:
        task = bar.add_task(f"evaluate {loaded.name}", total=None, passes=0)

        def passes(n: int) -> None:
            bar.update(task, passes=bar.tasks[task].fields["passes"] + n)

        def advance(n: int) -> None:
            if n < 0:  # the runner tells the total first
                bar.update(task, total=-n)
            else:
                bar.update(task, advance=n)

        evaluation = evaluate_methods(
            loaded, methods, items, settings, errors=errors, on_error=error, passes=passes,
            advance=advance,
        )  # fmt: skip
    if plots is not None:
        found = report_json(evaluation)["methods"]
        aucs = {
            m: {c: v["metrics"][f"{c}_auc"]["mean"] for c in v["curves"]} for m, v in found.items()
        }
        write_plots(plots, {m: v["curves"] for m, v in found.items()}, aucs)
    if report is not None:
        from camcli.report.evaluation import write_evaluation_report

        write_evaluation_report(report_json(evaluation), report)
    if output == "json":
        sys.stdout.write(json_text(report_json(evaluation), indent=2) + "\n")
    elif output == "csv":
        sys.stdout.write(report_csv(evaluation))
    else:
        # Piped or redirected, the table keeps its whole width rather than rich's 80 columns.
        screen = StdoutConsole()
        if not screen.is_terminal:
            screen = StdoutConsole(width=400)
        screen.print(table(evaluation))
    sys.stdout.flush()
    failed, count = len(evaluation.errors), len(evaluation.errors) + len(evaluation.items)
    if not evaluation.items:
        error(f"none of the {count} images could be evaluated; every metric is n/a")
    elif failed and not quiet:
        console.print(f"{failed} of {count} images could not be evaluated")
    return EXIT_SOME_FAILED if failed else EXIT_OK
