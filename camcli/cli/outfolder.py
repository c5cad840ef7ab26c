"""``camcli manifest merge`` and ``camcli report``: work on a run's output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camcli.cli.edge import command_errors

manifest_app = typer.Typer(
    name="manifest",
    help="Work on an output folder's manifest.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@manifest_app.command("merge")
@command_errors()
def manifest_merge(
    out: Annotated[Path, typer.Argument(help="The output folder the shards wrote into.")],
) -> None:
    """Join the shards' manifest parts (manifest.shard-I-of-N.jsonl) into manifest.jsonl.

    The merged manifest is compacted (the last record per key) and written before the parts
    are removed. Exit 2 when a run is using the folder.
    """
    from camcli.outfolder import MANIFEST, merge_manifest

    parts, records = merge_manifest(out)
    typer.echo(f"merged {parts} parts ({records} records) into {out / MANIFEST}")


@command_errors()
def report_command(
    out: Annotated[Path, typer.Argument(help="The output folder of a camcli run.")],
) -> None:
    """Write OUT/report.html from OUT/manifest.jsonl (for an earlier, resumed or sharded run).

    Every input's original and maps side by side with labels and scores, failures first;
    thumbnails in OUT/report-thumbs/. Exit 2 when OUT has no manifest or a run is using it.
    """
    from camcli.report.run import write_run_report

    path, shown, failed = write_run_report(out)
    typer.echo(f"wrote {path} ({shown} inputs, {failed} failed)")
