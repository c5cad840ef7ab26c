"""``--normalize PRESET``, ``--mean``, ``--std``: the normalisation a model was trained with.

A model source knows its own (torchvision's and timm's weights, a Hugging Face processor); a
model file often does not (an ONNX graph carries no preprocessing), so these set it: a preset
by name, then ``--mean``/``--std`` channel by channel over it. Pixels are scaled to [0, 1]
first, so ``none`` feeds them as they are.
"""

from __future__ import annotations

import math

from camcli.config import ModelSpec
from camcli.errors import UsageError
from camcli.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess

#: name -> (mean, std) per RGB channel of pixels in [0, 1].
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    # Inception, many timm and Hugging Face ViTs: [-1, 1]
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _channels(values: tuple[float, ...], flag: str) -> tuple[float, ...]:
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} takes 3 numbers (R,G,B) or one for all, got {values}")
    return tuple(float(v) for v in values)


def normalized(preprocess: Preprocess, spec: ModelSpec) -> Preprocess:
    """``preprocess`` with the spec's preset, mean and std (each when given) in its place."""
    if spec.normalize is None and spec.mean is None and spec.std is None:
        return preprocess
    mean, std = preprocess.mean, preprocess.std
    if spec.normalize is not None:
        preset = PRESETS.get(spec.normalize.lower())
        if preset is None:
            raise UsageError(f"unknown --normalize {spec.normalize!r} (use {', '.join(PRESETS)})")
        mean, std = preset
    if spec.mean is not None:
        mean = _channels(tuple(spec.mean), "--mean")
    if spec.std is not None:
        std = _channels(tuple(spec.std), "--std")
        if min(std) <= 0:
            raise UsageError(f"--std must be above 0 for every channel, got {std}")
    return Preprocess(preprocess.crop_size, preprocess.resize_size, tuple(mean), tuple(std),
                      preprocess.interpolation, preprocess.fit)  # fmt: skip
