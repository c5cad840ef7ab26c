"""A decoded image tensor -> what the model sees (resize + centre crop), and the model input.

The geometry is ``camcli.images.crop_geometry``, shared with the CPU path; the resize is
``F.interpolate(antialias=True)``, Pillow's filter (a triangle of support ``max(1, scale)``
around half-pixel centres for bilinear) computed in float32 and rounded, so a level differs
from Pillow's by at most 1 (measured and bounded in tests/test_gpu_stages.py).
"""

from __future__ import annotations

import torch
from PIL import Image
from torch.nn import functional as F

from camcli.images import _RESIZE_WHOLE_MAX_PIXELS, Box, Preprocess, crop_geometry, model_view

# Pillow's filters that torch has (antialiased); others (lanczos, nearest) take the CPU path.
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}


def supports(preprocess: Preprocess) -> bool:
    """Whether the tensor stages can make this preprocessing's view (else: the CPU path)."""
    return preprocess.interpolation in _MODES


def _resize(image: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, height, width) uint8, antialiased like Pillow."""
    pixels = image.unsqueeze(0).float()
    resized = F.interpolate(pixels, size=(height, width), mode=mode, antialias=True)
    return resized.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def tensor_view(image: torch.Tensor, preprocess: Preprocess) -> tuple[torch.Tensor, Box]:
    """What the model sees of ``image`` ((3, H, W) uint8): (3, S, S) uint8 on its device, and
    where that is in the image, as ``camcli.images.model_view`` gives for the same pixels."""
    mode = _MODES[preprocess.interpolation]
    height, width = image.shape[-2:]
    size = preprocess.crop_size
    if preprocess.fit == "stretch":
        return _resize(image, size, size, mode), Box(0.0, 0.0, float(width), float(height))
    new_w, new_h, left, top, box = crop_geometry(width, height, preprocess)
    if new_w * new_h > _RESIZE_WHOLE_MAX_PIXELS:
        # An extreme panorama: the CPU path resamples only the crop box; one such file is rare
        # enough that Pillow doing it costs nothing overall.
        rgb = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        view, box = model_view(rgb, preprocess)
        return torch.from_numpy(view).permute(2, 0, 1).to(image.device), box
    resized = _resize(image, new_h, new_w, mode)
    return resized[:, top : top + size, left : left + size].contiguous(), box


def tensor_model_input(
    views: list[torch.Tensor], preprocess: Preprocess, device: torch.device
) -> torch.Tensor:
    """(3, S, S) uint8 views -> the normalised (N, 3, S, S) float32 batch on ``device``:
    ``(x / 255 - mean) / std`` per channel, as ``camcli.explain.to_model_input``."""
    batch = torch.stack([v.to(device, non_blocking=True) for v in views]).float().div_(255.0)
    mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)
