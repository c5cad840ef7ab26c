"""``camcli run`` as one library call: set up (all checks before any work), run, report."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from camcli import resume_gc
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED
from camcli.explain import Explainer, parse_targets
from camcli.methods import get_method_class
from camcli.models import load_model
from camcli.pipeline import Pipeline, Record, RunConfig, Summary
from camcli.render import colormap_lut
from camcli.sources import collect_sources


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s", style="progress.data.speed")


def _failure_table(summary: Summary) -> Table:
    table = Table(title=f"{len(summary.failed)} of {summary.total} inputs failed", box=None)
    table.add_column("input", overflow="fold")
    table.add_column("reason", overflow="fold")
    for path, error in summary.failed:
        reason = error[len(path) + 2 :] if error.startswith(f"{path}: ") else error
        table.add_row(escape(path), escape(reason))
    return table


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
) -> int:
    """Explain every image in ``paths`` and write the outputs; returns the exit code.

    Raises a CamcliError (exit 2) for any setup problem before a single image is processed.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    get_method_class(method)
    colormap_lut(config.colormap)
    sources = collect_sources(paths, sys.stdin)
    loaded = load_model(
        model,
        weights=weights,
        checkpoint=checkpoint,
        num_classes=num_classes,
        labels=labels,
        device=device,
        input_size=input_size,
        fit=fit,
        progress=not quiet and console.is_terminal,
    )
    passes: list = []  # the progress task for the methods' extra passes, made on first use

    def on_passes(done: int, total: int) -> None:
        if not passes:
            passes.append(progress.add_task("  forward passes", total=total))
        progress.update(passes[0], completed=done, total=total)

    explainer = Explainer(
        loaded,
        method=method,
        layers=layers,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        chunk_size=chunk_size,
        progress=on_passes,
        precision=precision,
    )
    parsed = parse_targets(targets, top_k, loaded.labels, loaded.num_classes)
    resume_gc()

    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=False,
    )

    def on_record(record: Record) -> None:
        if json_lines:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        if record["status"] == "error":
            progress.console.print(f"[bold red]error:[/] {escape(record['error'])}")

    with progress:
        task = progress.add_task(f"{explainer.method_name} {loaded.name}", total=len(sources))
        pipeline = Pipeline(
            explainer,
            parsed,
            config,
            on_record=on_record,
            on_progress=lambda n: progress.advance(task, n),
        )
        summary = pipeline.run(sources)

    if summary.failed:
        console.print(_failure_table(summary))
    if not quiet:
        done = summary.ok + summary.skipped
        skipped = f" ({summary.skipped} skipped as existing)" if summary.skipped else ""
        console.print(
            f"{done} of {summary.total} images explained{skipped}; outputs and "
            f"manifest.jsonl in {escape(str(config.out))}"
        )
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK
