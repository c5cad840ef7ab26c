"""``camcli check``: a model against a spec's expectations, for CI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camcli.cli import options as o
from camcli.cli.edge import command_errors, go_offline


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
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the results as one JSON object on stdout.")
    ] = False,
    save_failures: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Save the overlays of failing cases into DIR (NN-case_name.png, boxes in "
            "green, the peak as a cross).",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="FILE",
            help="Write an HTML page of every case (expectations, overlay with boxes and "
            "peak, the baseline beside it) to FILE, its pictures in FILE's <stem>_files/.",
        ),
    ] = None,
    offline: o.OfflineOption = False,
) -> None:
    """Check a model's predictions and maps against a spec's expectations (CI smoke test).

    Exit 0 when all pass, 1 when any fails, 2 for a bad spec (nothing is computed then).
    """
    go_offline(offline)

    from camcli.check import run_check

    code = run_check(
        spec,
        update_baselines=update_baselines,
        junit=junit,
        json_out=json_out,
        save_failures_to=save_failures,
        html_report=report,
    )
    raise typer.Exit(code=code)
