"""Images (paths, PIL images, arrays) -> maps, with the model's own resize and crop: one call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from camcli.config import DEFAULT_METHOD, ExplainSpec, ModelSpec
from camcli.errors import UsageError
from camcli.explain import Explanation, explain, to_model_input
from camcli.images import Box, load_image, model_view, to_rgb
from camcli.models import LoadedModel, load_model

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray


@dataclass
class ExplainedImages:
    """The explanation of N images, each image as RGB pixels, and the box the model saw of it.

    ``explanation.maps[i, t]`` covers ``boxes[i]`` of ``images[i]`` (the centre crop, or the
    whole image with ``fit="stretch"``), so ``camcli.render.overlay(images[i],
    explanation.maps[i, t], boxes[i])`` draws it where the model looked.
    """

    explanation: Explanation
    images: list[np.ndarray]
    boxes: list[Box]


def _rgb(image: ImageLike, position: int) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UsageError(
                f"image {position}: expected an H x W x 3 uint8 array (RGB), got "
                f"{image.dtype} of shape {image.shape}"
            )
        return Image.fromarray(np.ascontiguousarray(image))
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    raise UsageError(
        f"image {position}: expected a path, a PIL image or an H x W x 3 uint8 array, "
        f"got {type(image).__name__}"
    )


def explain_images(
    model: str | ModelSpec | LoadedModel,
    images: ImageLike | Sequence[ImageLike],
    *,
    method: str = DEFAULT_METHOD,
    layers: Sequence[str] | None = None,
    targets: Sequence[str] = ("top1",),
    top_k: int | None = None,
    weights: str | None = "DEFAULT",
    device: str = "auto",
    input_size: int | None = None,
    fit: str = "crop",
    precision: str = "fp32",
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    chunk_size: int = 32,
    runtime: str = "auto",
) -> ExplainedImages:
    """Explain images as the CLI does: each resized and cropped as the model expects.

    ``model`` is a name (loaded with ``weights``, ``device``, ``input_size`` and ``fit``), a
    ``ModelSpec`` or a ``LoadedModel`` (which keep their own; those four are then ignored).
    ``images`` are paths, PIL images or H x W x 3 uint8 RGB arrays, alone or in a sequence; all
    are explained in one batch. A path that is not a readable image raises ``InputError``.
    ``runtime``: where forward-only passes run, as ``--runtime`` (``camcli.runtimes``).
    """
    if isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, ModelSpec):
        loaded = load_model(model, progress=False)
    else:
        spec = ModelSpec(model, weights, device=device, input_size=input_size, fit=fit)
        loaded = load_model(spec, progress=False)
    how = ExplainSpec(method=method, layers=tuple(layers or ()), targets=tuple(targets),
                      top_k=top_k, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth,
                      chunk_size=chunk_size, precision=precision, runtime=runtime)  # fmt: skip
    single = isinstance(images, (str, os.PathLike, Image.Image, np.ndarray))
    items: Sequence[ImageLike] = [images] if single else list(images)  # type: ignore[list-item]
    if not items:
        raise UsageError("no images to explain")
    pictures = [_rgb(image, i) for i, image in enumerate(items)]
    views, boxes = zip(*(model_view(p, loaded.preprocess) for p in pictures), strict=True)
    explanation = explain(loaded, to_model_input(np.stack(views), loaded), how)
    return ExplainedImages(explanation, [np.asarray(p) for p in pictures], list(boxes))
