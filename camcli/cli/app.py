"""The Typer app: the commands in the order ``camcli --help`` lists them, and ``main``.

Nothing heavy is imported at module level, so ``camcli --help`` answers without loading torch.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from camcli import __version__
from camcli.cli import check, evaluate, listings, outfolder, run
from camcli.errors import EXIT_INTERRUPTED, EXIT_USAGE
from camcli.startup import end_gc_pause, pause_gc

app = typer.Typer(
    name="camcli",
    help="Class activation maps (CAM, Grad-CAM) for image classifiers, from the command line.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich help renderer imports markdown-it and rich's layout code,
    # which doubles the start-up of ``camcli --help`` (about 0.3 s more on a 2-core machine).
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"camcli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Class activation maps (CAM, Grad-CAM) for image classifiers, from the command line."""


# The commands, in the order `camcli --help` lists them.
app.command()(run.run)
app.command()(listings.layers)
app.command()(listings.models)
app.command()(listings.methods)
app.command()(check.check)
app.add_typer(outfolder.manifest_app)
app.command("report")(outfolder.report_command)
app.command()(evaluate.evaluate)


def _unsupported_platform() -> str | None:
    """Why camcli cannot run here, or None. Output folders are locked with POSIX ``fcntl``
    locks (camcli/outfolder.py), which Windows lacks: say so at once rather than fail later."""
    if sys.platform.startswith("win"):
        return (
            "Windows is not supported: camcli locks its output folders with POSIX fcntl locks "
            "(Linux, macOS); run it under WSL"
        )
    return None


def main() -> None:
    unsupported = _unsupported_platform()
    if unsupported:  # plain text: rich's console would reach for the Windows console API
        sys.stderr.write(f"error: {unsupported}\n")
        sys.exit(EXIT_USAGE)
    pause_gc()  # until the model is ready (camcli.startup)
    try:
        app()
    except KeyboardInterrupt as exc:
        sys.stderr.write("\ninterrupted: finished outputs are kept; rerun with --skip-existing\n")
        sys.exit(getattr(exc, "exit_code", EXIT_INTERRUPTED))
    finally:
        end_gc_pause()
