"""``camcli check``: a model against a spec's expectations, for CI.

The command checks that every output path can be written (exit 2 before anything runs), calls
``camcli.check.run_check`` and shows its report: the baselines it wrote, the table of
expectations and the summary on stderr; the ``--json`` object on stdout; the ``--junit`` XML,
the ``--save-failures`` pictures and the ``--report`` page as files.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from camcli.cli import options as o
from camcli.cli.edge import command_errors, go_offline
from camcli.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from camcli.check import CheckReport


def _table(report: CheckReport) -> Table:
    """The stderr table: one row per expectation, the case named on its first row."""
    from rich.markup import escape
    from rich.table import Table

    grid = Table(
        box=None, title=f"camcli check {escape(str(report.spec.path))}", title_justify="left"
    )
    for column in ("case", "expectation", "measured", "threshold", "result"):
        grid.add_column(column, overflow="fold")
    for result in report.results:
        first = True
        for outcome in result.outcomes:
            verdict = (
                "[green]pass[/]"
                if outcome.passed
                else ("[bold red]ERROR[/]" if outcome.error else "[bold red]FAIL[/]")
            )
            grid.add_row(
                escape(result.case.name) if first else "",
                outcome.expectation,
                escape(outcome.measured_text),
                escape(outcome.threshold_text),
                verdict,
            )
            first = False
    return grid


def _show_baselines(console: Console, report: CheckReport) -> None:
    """What ``--update-baselines`` wrote, one line per baseline, or why it wrote none."""
    from rich.markup import escape

    from camcli.check.baselines import baseline_line

    if report.baselines_not_written:
        names = ", ".join(repr(c.name) for c in report.baselines_not_written)
        console.print(f"[bold red]not updating any baseline:[/] no map for {escape(names)}")
        return
    for result in report.results:
        if result.baseline_update is not None:
            console.print(escape(baseline_line(result.baseline_update)))


@command_errors(each_line=True)
def check(
    spec: Annotated[
        Path, typer.Argument(help="The spec file (TOML): the model and the cases to check.")
    ],
    update_baselines: Annotated[
        bool,
        typer.Option(
            "--update-baselines",
            help="Write every case's baseline map from the current model (atomically) and say "
            "what changed, instead of comparing with it.",
        ),
    ] = False,
    junit: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Write a JUnit XML report (one testcase per expectation) to FILE."
        ),
    ] = None,
    json_out: o.JsonOption = False,
    save_failures: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Save the overlays of failing cases into DIR (NN-case_name.png, boxes in "
            "green, the peak as a cross).",
        ),
    ] = None,
    html_report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="FILE",
            help="Write an HTML page of every case (expectations, overlay with boxes and "
            "peak, the baseline beside it) to FILE, its pictures in FILE's <stem>_files/.",
        ),
    ] = None,
    offline: o.OfflineOption = False,
    # Default None: the spec's runtime key, else auto.
    runtime: o.RuntimeOption = None,  # type: ignore[assignment]
) -> None:
    """Check a model's predictions and maps against a spec's expectations (CI smoke test).

    Exit 0 when all pass, 1 when any fails, 2 for a bad spec (nothing is computed then).
    """
    go_offline(offline)
    from camcli.writers import unwritable_reason, write_atomic

    for option, path, folder in (
        ("--junit", junit, False),
        ("--save-failures", save_failures, True),
        ("--report", html_report, False),
    ):
        # Checked first, so that a run is never lost to an output it cannot write.
        reason = None if path is None else unwritable_reason(path, folder=folder)
        if reason is not None:
            raise UsageError(f"{option} {path}: {reason}")

    from rich.markup import escape

    import camcli.check
    from camcli.check.describe import failures_line, junit_suite, report_data, summary_line
    from camcli.check.pictures import write_failure_pictures
    from camcli.display import stderr_console
    from camcli.machine_output import json_text, junit_xml

    console = stderr_console()
    began = time.perf_counter()
    report = camcli.check.run_check(
        spec,
        update_baselines=update_baselines,
        progress=console.is_terminal,
        runtime=None if runtime is None else runtime.value,
    )
    if update_baselines:
        _show_baselines(console, report)
    if save_failures is not None:
        report.failure_folder = save_failures
        if report.exit_code != EXIT_OK:
            write_failure_pictures(report.results, save_failures)
            report.seconds = time.perf_counter() - began  # the pictures count in the run's time
    if report.outcomes:
        console.print(_table(report))
    style = "bold green" if report.exit_code == EXIT_OK else "bold red"
    console.print(f"[{style}]{escape(summary_line(report))}[/]")
    if save_failures is not None:
        console.print(escape(failures_line(report)))
    if json_out:
        sys.stdout.write(json_text(report_data(report), indent=2) + "\n")
        sys.stdout.flush()
    if junit is not None:
        write_atomic(junit, junit_xml("camcli check", junit_suite(report)))
    if html_report is not None:
        from camcli.report.check import write_check_report

        write_check_report(report, html_report)
        console.print(f"report: {escape(str(html_report))}")
    raise typer.Exit(code=report.exit_code)
