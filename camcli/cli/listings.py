"""``camcli layers``, ``models``, ``methods``: what camcli can load and compute."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from camcli.cli import options as o
from camcli.cli.edge import command_errors, go_offline
from camcli.errors import EXIT_SOME_FAILED


@command_errors()
def layers(
    model: Annotated[
        str,
        typer.Argument(help="torchvision classifier name, timm:NAME, hf:ID_OR_DIR or model.onnx."),
    ],
    input_size: o.InputSizeOption = None,
    json_out: o.JsonOption = False,
    offline: o.OfflineOption = False,
) -> None:
    """List a model's layers: name, type, output shape, the grid it gives; marks the default."""
    go_offline(offline)
    from camcli.config import ModelSpec
    from camcli.layers import known_default_layer, trace_layers
    from camcli.machine_output import json_text
    from camcli.models import input_too_small, load_model

    # The layers do not depend on the weights: a random model, on the CPU, downloads nothing.
    loaded = load_model(ModelSpec(model, weights="none", device="cpu", input_size=input_size))
    size = loaded.preprocess.crop_size
    try:
        infos, default = trace_layers(loaded.model, size, loaded.device)
    except RuntimeError as exc:
        too_small = input_too_small(exc, size, loaded.name)
        if too_small is None:
            raise
        raise too_small from None
    default = known_default_layer(loaded.model) or default  # what `camcli run` picks
    if json_out:
        for info in infos:
            shape = list(info.shape) if info.shape else None
            row = {"name": info.name, "type": info.type, "shape": shape}
            grid = list(info.grid) if info.grid else None
            layout = info.layout.kind if info.layout else None
            row.update(grid=grid, layout=layout, default=info.name == default)
            typer.echo(json_text(row))
        return
    from rich.table import Table

    from camcli.display import StdoutConsole

    table = Table(title=f"{loaded.name} at {loaded.preprocess.crop_size} px", box=None)
    table.add_column("layer", overflow="fold")
    for column in ("type", "output shape", "grid", ""):
        table.add_column(column)
    for info in infos:
        shape = "x".join(map(str, info.shape)) if info.shape else "-"
        grid = info.layout.describe() if info.layout else "-"
        mark = "default" if info.name == default else ""
        style = "bold green" if mark else None
        table.add_row(info.name, info.type, shape, grid, mark, style=style)
    StdoutConsole().print(table)


@command_errors()
def models(
    pattern: Annotated[
        str | None,
        typer.Argument(
            help="Substring or glob (resnet*, *vit*) to filter by; timm:*vit* lists timm's models.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List the torchvision classification models camcli can load (timm:PATTERN: timm's)."""
    import fnmatch

    from camcli.models import (
        classification_models,
        detection_models,
        segmentation_models,
        source_models,
    )

    sourced = source_models(pattern) if pattern else None  # timm:*vit*
    torchvision_names = classification_models() + segmentation_models() + detection_models()
    names = torchvision_names if sourced is None else sourced
    if pattern and sourced is None:
        if any(c in pattern for c in "*?["):
            names = [n for n in names if fnmatch.fnmatch(n, pattern.lower())]
        else:
            names = [n for n in names if pattern.lower() in n]
    if not names:
        from camcli.display import stderr_console

        stderr_console().print(f"no model matches {pattern!r}")
        raise typer.Exit(code=EXIT_SOME_FAILED)
    for name in names:
        typer.echo(name)


@command_errors()
def methods(json_out: o.JsonOption = False) -> None:
    """List the CAM methods, whether each needs gradients, and its paper."""
    from camcli.machine_output import json_text
    from camcli.methods import METHODS

    if json_out:
        for info in METHODS.values():
            row: dict[str, Any] = {"name": info.name, "needs_grad": info.needs_grad}
            typer.echo(json_text({**row, "summary": info.summary, "paper": info.paper}))
        return
    from rich.table import Table

    from camcli.display import StdoutConsole

    table = Table(box=None)
    for column in ("method", "gradients", "what it computes", "paper"):
        table.add_column(column)
    for info in METHODS.values():
        table.add_row(info.name, "yes" if info.needs_grad else "no", info.summary, info.paper)
    StdoutConsole().print(table)
