"""The per-image work of a run on tensors: load (decode + view), model input, overlay bytes.

Chosen once per run (``tensor_stages``): on CUDA devices by default, so decoding, resizing,
drawing and JPEG encoding run on the GPU; on the CPU the Pillow/OpenCV path stays (it is
faster there), unless ``CAMCLI_TENSOR_STAGES=1`` forces the tensor path (how CI exercises the
code the GPU runs); ``CAMCLI_TENSOR_STAGES=0`` turns it off everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from camcli.errors import InputError
from camcli.images import Box, Preprocess
from camcli.stages.decode import decode_images
from camcli.stages.draw import encode_tensor, tensor_overlay
from camcli.stages.view import supports, tensor_model_input, tensor_view

ENV = "CAMCLI_TENSOR_STAGES"


class TensorStages:
    """Decode, view, normalise, draw and encode on ``device``; the CPU loader per file where
    the tensor decoder cannot read it (``camcli.stages.decode``)."""

    def __init__(
        self, device: torch.device, preprocess: Preprocess, max_pixels: int | None = None
    ) -> None:
        self.device = device
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    #: Files per read job: one batched nvJPEG call decodes them all.
    files_per_read = 8

    def load(self, path: str | os.PathLike[str]) -> tuple[torch.Tensor, torch.Tensor, Box]:
        """(image (3, H, W) uint8, view (3, S, S) uint8, box) on the device; InputError as the
        CPU loader words it."""
        [result] = self.load_many([path])
        if isinstance(result, InputError):
            raise result
        return result

    def load_many(
        self, paths: Sequence[str | os.PathLike[str]]
    ) -> list[tuple[torch.Tensor, torch.Tensor, Box] | InputError]:
        """``load`` for several files, decoded in one batched call; per file, its InputError
        in place of its image."""
        results: list[tuple[torch.Tensor, torch.Tensor, Box] | InputError] = []
        for image in decode_images(paths, self.device, self.max_pixels):
            if isinstance(image, InputError):
                results.append(image)
            else:
                results.append((image, *tensor_view(image, self.preprocess)))
        return results

    def model_input(self, views: list[torch.Tensor]) -> torch.Tensor:
        return tensor_model_input(views, self.preprocess, self.device)

    def overlay_bytes(
        self, image: torch.Tensor, cam: np.ndarray, box: Box, fmt: str, alpha: float, colormap: str
    ) -> bytes:
        picture = tensor_overlay(image, torch.from_numpy(cam), box, alpha=alpha, colormap=colormap)
        return encode_tensor(picture, fmt)


def tensor_stages(
    device: torch.device, preprocess: Preprocess, pixel_space: bool, max_pixels: int | None
) -> TensorStages | None:
    """The tensor stages for this run, or None for the CPU path (see the module docstring).

    Pixel-space methods (guided backprop) draw saliency, not overlays: the CPU path draws
    those; so do preprocessings whose filter torch lacks (lanczos, nearest).
    """
    setting = os.environ.get(ENV, "").strip()
    wanted = device.type == "cuda" if setting == "" else setting != "0"
    if not wanted or pixel_space or not supports(preprocess):
        return None
    return TensorStages(device, preprocess, max_pixels)
