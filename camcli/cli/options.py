"""Every option that more than one command takes, declared once: the same flag, type, default
and help wherever it appears. Commands import these and add only their own."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from camcli.config import ModelSpec
from camcli.errors import UsageError


class Format(str, Enum):
    jpg = "jpg"
    png = "png"
    npy = "npy"


# Options that ``run`` and ``evaluate`` share: one declaration each, so that both commands
# take and describe them alike (those over the enums below follow them).
# Defaults of the model options (model, weights...) come from camcli.config: one place each.
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="torchvision classifier name (camcli models), timm:NAME, hf:ID_OR_DIR, "
        "FILE.py:FACTORY, or an ONNX file (model.onnx).",
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
NormalizeOption = Annotated[
    str | None,
    typer.Option(
        help="The normalisation the model was trained with, in place of its own: imagenet "
        "(what an ONNX file gets by default), inception ([-1, 1]), clip, or none (pixels in "
        "[0, 1]).",
        metavar="PRESET",
        show_default=False,
    ),
]
MeanOption = Annotated[
    str | None,
    typer.Option(
        help="Per-channel mean of pixels in [0, 1], R,G,B (or one number), over --normalize.",
        metavar="R,G,B",
        show_default=False,
    ),
]
StdOption = Annotated[
    str | None,
    typer.Option(
        help="Per-channel standard deviation, R,G,B (or one number), over --normalize.",
        metavar="R,G,B",
        show_default=False,
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


class Runtime(str, Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


RuntimeOption = Annotated[
    Runtime,
    typer.Option(
        help="Where forward-only passes run on the CPU (masked and perturbed inputs, the "
        "model up to the layer): onnxruntime (the onnx extra) or openvino (the openvino extra) "
        "on a cached ONNX export, or torch; auto: the fastest installed one that gives the "
        "same scores (docs/runtimes.md).",
    ),
]


class Metric(str, Enum):
    deletion = "deletion"
    confidence = "confidence"
    road = "road"
    pointing = "pointing"
    sanity = "sanity"


PathsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Image files, directories (walked recursively), glob patterns, or - to read "
        "one path per line from stdin.",
        show_default=False,
    ),
]
TargetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        "-t",
        help="top1 (default), topN, a class index or a class name; repeatable in run.",
        show_default=False,
    ),
]
BatchSizeOption = Annotated[
    str,
    typer.Option(
        "--batch-size",
        "-b",
        help="Images per forward pass, or auto: on a GPU the largest batch that fits and "
        "pays, measured at start-up; on the CPU 16.",
    ),
]
ChunkSizeOption = Annotated[
    int,
    typer.Option(
        "--chunk-size",
        help="Extra forward passes run at once: a method's (Score-CAM family, Ablation-CAM, "
        "Smooth Grad-CAM++) and evaluate's perturbed inputs.",
        min=1,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="JSON on stdout instead of a table: one object per line for run's records and the "
        "listings, one object for check and evaluate.",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar or summary; errors only.")
]


def model_spec(
    model: str,
    weights: str,
    checkpoint: Path | None,
    num_classes: int | None,
    labels: Path | None,
    fit: Fit,
    input_size: int | None,
    device: str,
    max_pixels: int | None,
    head: str = "auto",
    normalize: str | None = None,
    mean: str | None = None,
    std: str | None = None,
) -> ModelSpec:
    """The model options, as every command passes them on."""
    return ModelSpec(model=model, weights=weights, checkpoint=checkpoint, num_classes=num_classes,
                     labels=labels, input_size=input_size, fit=fit.value, device=device,
                     max_pixels=max_pixels, head=head, normalize=normalize,
                     mean=channels(mean, "--mean"), std=channels(std, "--std"))  # fmt: skip


def channels(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``0.5,0.5,0.5`` (or ``0.5``) -> numbers; how many is checked where the model loads."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise UsageError(
            f"{flag} takes numbers separated by commas (R,G,B), got {text!r}"
        ) from None


# The black-box methods' options (rise, drise, occlusion), shared by run and evaluate.
MasksOption = Annotated[
    str,
    typer.Option(
        "--masks",
        help="rise/drise: random masks per image, or auto (add 250 at a time until the map "
        "stops changing; 1000 to 8000).",
        metavar="N|auto",
    ),
]
MaskCellsOption = Annotated[
    int | None,
    typer.Option(
        "--mask-cells",
        help="rise/drise: cells per side of the masks' random grid. Default: 7 (rise), 16 (drise).",
        metavar="S",
        show_default=False,
    ),
]
MaskPOption = Annotated[
    float, typer.Option("--mask-p", help="rise/drise: probability that a cell is kept.")
]
SeedOption = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seed of rise/drise's masks (the same maps on every run) and, in evaluate, of "
        "ROAD's noise, the randomised models and the bootstrap intervals.",
    ),
]
WindowOption = Annotated[
    int, typer.Option("--window", help="occlusion: side of the square window, in pixels.")
]
StrideOption = Annotated[
    int, typer.Option("--stride", help="occlusion: step between windows, in pixels.")
]
BaselineOption = Annotated[
    float,
    typer.Option(
        "--baseline",
        help="occlusion: the value under the window, in the normalised input (0: the mean colour).",
    ),
]
