"""One shape for each set of options: the model, what to explain, where to write, and a run's tally.

Every command, the Python API and the Ray actors pass these objects; no dict carries options
between modules. They hold values only (checked where they are used: ``camcli.models`` for the
model, ``camcli.explain`` for the method), so this module imports nothing of camcli's but the
type of a ``--shard``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from camcli.shards import Shard

DEFAULT_MODEL = "resnet50"
DEFAULT_METHOD = "gradcam"
#: Images per forward pass on the CPU, and what ``--batch-size auto`` means there.
CPU_BATCH_SIZE = 16


@dataclass(frozen=True)
class ModelSpec:
    """Which model, with which weights, fed how: what ``--model`` and its options say.

    ``model``: a torchvision name, ``timm:NAME``, ``hf:ID_OR_DIR``, ``FILE.py:FACTORY`` or an
    ONNX file (``model.onnx``);
    ``weights``: ``DEFAULT``, an enum value or ``none``; ``checkpoint``: the user's state dict
    (with ``num_classes`` for its head, inferred when None); ``labels``: class names, one per
    line; ``input_size``/``fit``: the model's view of each image; ``max_pixels``: the largest
    image (width x height) read, None for ``camcli.images.DEFAULT_MAX_PIXELS``, 0 for no
    limit; ``head``: what the output is (``camcli.targets``: auto, softmax, binary,
    multilabel); ``normalize``: a preset (``camcli.models.normalize.PRESETS``: imagenet,
    inception, clip, none) in place of the model's own normalisation, and ``mean``/``std``
    (per RGB channel, pixels in [0, 1]) over it; None keeps the model's own.
    """

    model: str = DEFAULT_MODEL
    weights: str | None = "DEFAULT"
    checkpoint: Path | None = None
    num_classes: int | None = None
    labels: Path | None = None
    input_size: int | None = None
    fit: str = "crop"
    device: str = "auto"
    max_pixels: int | None = None
    head: str = "auto"
    normalize: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ExplainSpec:
    """What to explain and how: the method, its layers and targets, smoothing, precision.

    ``layers``: dotted module names, empty for the method's default; ``targets``: ``top1``,
    ``topN``, class indices or names (empty: ``top1``, or the head's own); ``top_k``: maps for
    the K most likely classes; ``chunk_size``: extra forward passes run at once;
    ``threshold``: multi-label's sigmoid cut; ``score_threshold``: a detector's box score;
    ``concepts``: ``dff``'s concept maps per image. The black-box methods'
    (``camcli.methods.blackbox``): ``masks`` (a count or ``auto``), ``mask_cells`` (None: the
    method's own), ``mask_p`` and ``seed`` for ``rise`` / ``drise``; ``window``, ``stride``
    and ``baseline`` (in the normalised input: 0 is the mean colour) for ``occlusion``.
    ``runtime``: where the forward-only passes run (``camcli.runtimes``: auto, torch,
    onnxruntime, openvino).
    """

    method: str = DEFAULT_METHOD
    layers: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    top_k: int | None = None
    aug_smooth: bool = False
    eigen_smooth: bool = False
    precision: str = "fp32"
    chunk_size: int = 32
    threshold: float = 0.5
    score_threshold: float = 0.5
    concepts: int = 5
    masks: int | str = 4000
    mask_cells: int | None = None
    mask_p: float = 0.5
    seed: int = 0
    window: int = 32
    stride: int = 16
    baseline: float = 0.0
    runtime: str = "auto"

    def __post_init__(self) -> None:  # lists from a caller become tuples: the spec is frozen
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "targets", tuple(self.targets))


def all_cores() -> int:
    """The CPU cores this process may run on (its affinity, as a job scheduler sets it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass
class RunConfig:
    """Where and how ``camcli run`` writes: formats, overlay look, batching, resuming, shard."""

    out: Path
    formats: Sequence[str] = ("jpg",)
    alpha: float = 0.5
    colormap: str = "jet"
    batch_size: int = CPU_BATCH_SIZE
    skip_existing: bool = False
    workers: int = field(default_factory=all_cores)
    shard: Shard | None = None  # --shard I/N: its own manifest part, lock and temp folder
    # Videos: explain every N-th frame, or F frames per second (None: by ``every``); the maps
    # of the last K explained frames averaged (1: no smoothing).
    every: int = 1
    fps: float | None = None
    smooth_frames: int = 1


@dataclass
class Summary:
    """What a run did: inputs seen, explained, skipped (``--skip-existing``), failed."""

    total: int = 0
    ok: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    #: Of those explained or skipped, the videos (their records carry a "video" entry).
    videos: int = 0

    def count(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Tally one input by its records (an error record, skipped ones, or its maps)."""
        first = records[0]
        if first["status"] != "error" and "video" in first:
            self.videos += 1
        if first["status"] == "error":
            self.failed.append((first["input"], first["error"]))
        elif first.get("skipped"):
            self.skipped += 1
        else:
            self.ok += 1
