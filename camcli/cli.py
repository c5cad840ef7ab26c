"""Typer commands only: parse and validate options, call the library, map errors to exit codes.

Nothing heavy is imported at module level, so ``camcli --help`` answers without loading torch.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import traceback
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from camcli import __version__
from camcli.errors import EXIT_SOME_FAILED, EXIT_USAGE, CamcliError

# What a shell reports for a writer whose reader went away (128 + SIGPIPE): `camcli run --json
# | head -1` is a normal end, not a failure.
EXIT_BROKEN_PIPE = 141

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


class Format(str, Enum):
    jpg = "jpg"
    png = "png"
    npy = "npy"


# Options that ``run`` and ``evaluate`` share: one declaration each, so that both commands
# take and describe them alike (those over the enums below follow them).
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="torchvision classifier name (camcli models), timm:NAME, hf:ID_OR_DIR, or "
        "FILE.py:FACTORY.",
    ),
]
WeightsOption = Annotated[
    str,
    typer.Option(
        "--weights", "-w", help="DEFAULT, a weights enum value such as IMAGENET1K_V1, or none."
    ),
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        help="Your own state dict (.pt/.pth/.safetensors) for the architecture; loaded "
        "with weights_only=True."
    ),
]
NumClassesOption = Annotated[
    int | None,
    typer.Option(help="Size of the head for --checkpoint (inferred when omitted)."),
]
LabelsOption = Annotated[
    Path | None, typer.Option(help="Class names, one per line, in class-index order.")
]
LayerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--layer",
        "-l",
        help="Dotted module name (layer4, features.28); repeat to average several layers. "
        "Default: chosen automatically (camcli layers MODEL).",
        show_default=False,
    ),
]
InputSizeOption = Annotated[
    int | None,
    typer.Option(help="Model input size in pixels (default: the weights' own).", min=16),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
OfflineOption = Annotated[
    bool,
    typer.Option(
        "--offline",
        envvar="CAMCLI_OFFLINE",
        help="Never download: weights that are not in the cache are an error at once "
        "(HF_HUB_OFFLINE=1 does the same). Without it, an uncached download is tried once, "
        "after its host answered within 3 s.",
    ),
]


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Fit(str, Enum):
    crop = "crop"
    stretch = "stretch"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


FitOption = Annotated[
    Fit,
    typer.Option(
        help="crop: the model's resize + centre crop (the map covers what the model saw); "
        "stretch: the whole image squashed to the input size."
    ),
]
MaxPixelsOption = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        help="Refuse (as that file's error) an image of more than N pixels (width x "
        "height); 0: no limit. Default: 100000000 (100 megapixels).",
        metavar="N",
        min=0,
        show_default=False,
    ),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="Forward passes under autocast: bf16 (fast on CPUs with AVX512-BF16/AMX and on "
        "GPUs) or fp16 (GPUs). Maps are always computed in fp32."
    ),
]


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _error(message: str) -> None:
    """``error: message`` on stderr, as one line; the message is text, never markup."""
    from rich.markup import escape

    from camcli.progress import one_line

    _stderr().print(f"[bold red]error:[/] {escape(one_line(message))}", emoji=False)


def _stdout_closed() -> NoReturn:
    """End quietly when the reader of stdout has gone (``--json | head -1``).

    stdout is pointed at /dev/null first: Python's flush at exit would otherwise fail on the
    closed pipe and print "Exception ignored ... BrokenPipeError".
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        pass
    else:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    raise typer.Exit(code=EXIT_BROKEN_PIPE)


def _internal_error(exc: Exception) -> NoReturn:
    """A bug: one line and exit 2, or the traceback too with ``CAMCLI_DEBUG=1``."""
    if os.environ.get("CAMCLI_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc)
    _error(f"internal error: {type(exc).__name__}: {exc} (set CAMCLI_DEBUG=1 for the traceback)")
    raise typer.Exit(code=EXIT_USAGE) from None


@contextlib.contextmanager
def _command_errors(*, interrupted: str = "", each_line: bool = False) -> Iterator[None]:
    """The one place that turns what a command raises into what the user sees and its exit code.

    A camcli error: ``error: message`` on stderr (one line, or each line of a multi-line
    message with ``each_line``) and its exit code; stdout's reader gone (``| head -1``): quiet,
    141; Ctrl-C or SIGTERM: ``interrupted`` (if any) and 130; anything else is a bug: one line
    and 2 (the traceback with ``CAMCLI_DEBUG=1``). typer's own exits pass through.
    """
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except CamcliError as exc:
        for line in exc.message.splitlines() if each_line else [exc.message]:
            _error(line)
        raise typer.Exit(code=exc.exit_code) from None
    except BrokenPipeError:
        _stdout_closed()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as camcli.signals.Interrupted
        if interrupted:
            _stderr().print(interrupted)
        raise typer.Exit(code=getattr(exc, "exit_code", 130)) from None
    except Exception as exc:
        _internal_error(exc)


def _go_offline(offline: bool) -> None:
    """``--offline`` reaches the model sources (and Ray's workers, which inherit the
    environment) as ``CAMCLI_OFFLINE=1``: camcli.models.download reads it."""
    if offline:
        os.environ["CAMCLI_OFFLINE"] = "1"


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


@app.command()
@_command_errors(
    interrupted="interrupted: finished outputs and manifest.jsonl are kept; "
    "rerun with --skip-existing to resume"
)
def run(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, directories (walked recursively), glob patterns, or - to read "
            "one path per line from stdin.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder; directory trees are mirrored.")
    ] = Path("camcli-out"),
    model: ModelOption = "resnet50",
    weights: WeightsOption = "DEFAULT",
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
    method: Annotated[
        str, typer.Option("--method", help="CAM method (camcli methods lists them).")
    ] = "gradcam",
    layer: LayerOption = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help="top1 (default), topN, a class index or a class name; repeatable.",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option("--top-k", "-k", help="Maps for the K most likely classes.", min=1),
    ] = None,
    fmt: Annotated[
        list[Format] | None,
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
    fit: FitOption = Fit.crop,
    input_size: InputSizeOption = None,
    batch_size: Annotated[
        str,
        typer.Option(
            "--batch-size",
            "-b",
            help="Images per forward pass, or auto: on a GPU the largest batch that fits and "
            "pays, measured at start-up; on the CPU 16.",
        ),
    ] = "auto",
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
    chunk_size: Annotated[
        int,
        typer.Option(
            "--chunk-size",
            help="Extra forward passes run at once (Score-CAM family, Ablation-CAM, "
            "Smooth Grad-CAM++).",
            min=1,
        ),
    ] = 32,
    max_pixels: MaxPixelsOption = None,
    device: DeviceOption = "auto",
    offline: OfflineOption = False,
    precision: PrecisionOption = Precision.fp32,
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
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary; errors only.")
    ] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per result on stdout.")
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="local: threads and one model in this process; ray: Ray Data (read tasks, an "
            "actor pool with one model per actor), needs the ray extra (uv sync --extra ray)."
        ),
    ] = Engine.local,
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
    ] = "auto",
    threshold: Annotated[
        float,
        typer.Option(
            help="Multi-label: a map for every label whose sigmoid reaches this.", min=0, max=1
        ),
    ] = 0.5,
    score_threshold: Annotated[
        float,
        typer.Option(help="Detection: a map per box scoring at least this.", min=0, max=1),
    ] = 0.5,
    concepts: Annotated[
        int,
        typer.Option(
            "--concepts",
            help="dff: concept maps per image (each recorded with the class it scores "
            "highest); they replace --target.",
            metavar="K",
            min=1,
        ),
    ] = 5,
) -> None:
    """Write heatmaps (overlays or raw maps) for images, files or whole folders."""
    _go_offline(offline)
    from camcli.engines.ray import RayOptions
    from camcli.pipeline import RunConfig
    from camcli.runner import run_images
    from camcli.shards import parse_shard
    from camcli.stages.batchsize import parse_batch_size

    parsed_shard = None if shard is None else parse_shard(shard)
    parsed_batch_size = parse_batch_size(batch_size)
    config = RunConfig(
        out=out,
        formats=tuple(dict.fromkeys(f.value for f in (fmt or [Format.jpg]))),
        alpha=alpha,
        colormap=colormap,
        batch_size=parsed_batch_size,
        skip_existing=skip_existing,
        max_pixels=max_pixels,  # None: camcli.images.DEFAULT_MAX_PIXELS
        shard=parsed_shard,
    )
    code = run_images(
        paths,
        config,
        model=model,
        weights=weights,
        checkpoint=checkpoint,
        num_classes=num_classes,
        labels=labels,
        method=method,
        layers=layer or [],
        targets=target or [],
        top_k=top_k,
        fit=fit.value,
        input_size=input_size,
        device=device,
        precision=precision.value,
        quiet=quiet,
        json_lines=json_lines,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        chunk_size=chunk_size,
        engine=engine.value,
        ray=(
            RayOptions(address=ray_address, actors=ray_actors, num_gpus=num_gpus or 0.0)
            if engine is Engine.ray or ray_address or ray_actors or num_gpus
            else None
        ),
        report=report,
        head=head,
        threshold=threshold,
        score_threshold=score_threshold,
        concepts=concepts,
    )
    raise typer.Exit(code=code)


@app.command()
@_command_errors()
def layers(
    model: Annotated[
        str, typer.Argument(help="torchvision classifier name, timm:NAME or hf:ID_OR_DIR.")
    ],
    input_size: Annotated[
        int | None, typer.Option(help="Input size for the dummy forward.", min=16)
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="JSON lines instead of a table.")
    ] = False,
    offline: OfflineOption = False,
) -> None:
    """List a model's layers: name, type, output shape, the grid it gives; marks the default."""
    _go_offline(offline)
    from camcli.layers import known_default_layer, trace_layers
    from camcli.models import input_too_small, load_model
    from camcli.writers import json_text

    loaded = load_model(model, weights="none", device="cpu", input_size=input_size)
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

    from camcli.progress import StdoutConsole

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


@app.command()
@_command_errors()
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
        _stderr().print(f"no model matches {pattern!r}")
        raise typer.Exit(code=EXIT_SOME_FAILED)
    for name in names:
        typer.echo(name)


@app.command()
@_command_errors()
def methods(
    json_out: Annotated[
        bool, typer.Option("--json", help="JSON lines instead of a table.")
    ] = False,
) -> None:
    """List the CAM methods, whether each needs gradients, and its paper."""
    from camcli.methods import METHODS
    from camcli.writers import json_text

    if json_out:
        for info in METHODS.values():
            row: dict[str, Any] = {"name": info.name, "needs_grad": info.needs_grad}
            typer.echo(json_text({**row, "summary": info.summary, "paper": info.paper}))
        return
    from rich.table import Table

    from camcli.progress import StdoutConsole

    table = Table(box=None)
    for column in ("method", "gradients", "what it computes", "paper"):
        table.add_column(column)
    for info in METHODS.values():
        table.add_row(info.name, "yes" if info.needs_grad else "no", info.summary, info.paper)
    StdoutConsole().print(table)


@app.command()
@_command_errors(each_line=True)
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
    offline: OfflineOption = False,
) -> None:
    """Check a model's predictions and maps against a spec's expectations (CI smoke test).

    Exit 0 when all pass, 1 when any fails, 2 for a bad spec (nothing is computed then).
    """
    _go_offline(offline)

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


manifest_app = typer.Typer(
    name="manifest",
    help="Work on an output folder's manifest.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(manifest_app)


@manifest_app.command("merge")
@_command_errors()
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


@app.command("report")
@_command_errors()
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


class Metric(str, Enum):
    deletion = "deletion"
    confidence = "confidence"
    road = "road"
    pointing = "pointing"
    sanity = "sanity"


@app.command()
@_command_errors(each_line=True)
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
        list[Metric] | None,
        typer.Option(
            "--metric",
            help="Metric family: deletion (deletion/insertion AUC), confidence (average drop, "
            "increase), road, pointing (needs --boxes), sanity (model randomisation); "
            "repeatable. Default: all.",
            show_default=False,
        ),
    ] = None,
    model: ModelOption = "resnet50",
    weights: WeightsOption = "DEFAULT",
    checkpoint: CheckpointOption = None,
    num_classes: NumClassesOption = None,
    labels: LabelsOption = None,
    layer: LayerOption = None,
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
    fit: FitOption = Fit.crop,
    input_size: InputSizeOption = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images explained per batch.", min=1)
    ] = 16,
    chunk_size: Annotated[
        int,
        typer.Option("--chunk-size", help="Perturbed inputs per forward pass.", min=1),
    ] = 32,
    max_pixels: MaxPixelsOption = None,
    device: DeviceOption = "auto",
    offline: OfflineOption = False,
    precision: PrecisionOption = Precision.fp32,
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
    _go_offline(offline)
    from camcli.evaluate import ModelOptions, run_evaluate

    if json_out and csv_out:
        _error("--json and --csv: choose one")
        raise typer.Exit(code=EXIT_USAGE)
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
        families=[m.value for m in metric] if metric else [m.value for m in Metric],
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
    # Importing torch and torchvision makes about a million Python objects, and the cyclic
    # garbage collector would walk them all again and again while the rest of start-up
    # allocates (~0.3 s of a one-image run). It is paused here; `camcli run` resumes it
    # (``resume_gc``) once the model is ready, with the start-up objects frozen out of it.
    gc.disable()
    try:
        app()
    except KeyboardInterrupt as exc:
        sys.stderr.write("\ninterrupted: finished outputs are kept; rerun with --skip-existing\n")
        sys.exit(getattr(exc, "exit_code", 130))
    finally:
        # Hand every object back to the collector for interpreter shutdown: extension modules
        # (triton's nanobind bindings) report frozen, never-freed objects as leaks at exit.
        gc.unfreeze()
        gc.enable()


__all__ = ["EXIT_USAGE", "app", "main"]
