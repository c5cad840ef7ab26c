"""Image tensor + map -> overlay tensor -> JPEG bytes, on the image's device.

The same picture as ``camcli.render.overlay``: the map normalised, scaled to 0..255 and
resampled bilinearly onto exactly the image pixels inside the box the model saw, coloured with
the OpenCV colormap's lookup table and blended, ``out = round((1 - a) * image + a * heat)``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision.io import encode_jpeg

from camcli.images import Box
from camcli.render import _pixel_span, colormap_lut
from camcli.writers import JPEG_QUALITY, encode_image

warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")


def _weights(
    start: int, count: int, origin: float, scale: float, cells: int, device: torch.device
) -> torch.Tensor:
    """(count, cells) bilinear weights: output pixel ``start + k`` reads map coordinate
    ``(start + k + 0.5 - origin) * scale - 0.5``, clamped at the edges (border replicate)."""
    position = torch.arange(count, device=device, dtype=torch.float64) + start + 0.5 - origin
    source = position * scale - 0.5
    left = torch.floor(source)
    frac = (source - left).float()
    left = left.long()
    weights = torch.zeros(count, cells, device=device)
    rows = torch.arange(count, device=device)
    weights.index_put_((rows, left.clamp(0, cells - 1)), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, (left + 1).clamp(0, cells - 1)), frac, accumulate=True)
    return weights


def tensor_upsample(
    cam: torch.Tensor, box: Box, shape: tuple[int, int]
) -> tuple[torch.Tensor, slice, slice]:
    """``camcli.render.upsample`` on tensors: the (h, w) map resampled onto the image pixels
    inside ``box``, as ``Wy @ cam @ Wx^T`` (bilinear resampling along an axis-aligned box is
    separable); returns the region and the row and column slices of the image it covers."""
    height, width = shape
    r0, r1 = _pixel_span(box.y0, box.y1, height)
    c0, c1 = _pixel_span(box.x0, box.x1, width)
    h, w = cam.shape
    rows = _weights(r0, r1 - r0, box.y0, h / (box.y1 - box.y0), h, cam.device)
    cols = _weights(c0, c1 - c0, box.x0, w / (box.x1 - box.x0), w, cam.device)
    return rows @ cam.float() @ cols.T, slice(r0, r1), slice(c0, c1)


def tensor_normalise(cam: torch.Tensor) -> torch.Tensor:
    """``camcli.render.normalise``: non-finite -> 0, negatives clipped, divided by the peak."""
    cam = torch.nan_to_num(cam.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_(min=0.0)
    peak = cam.max() if cam.numel() else cam.new_zeros(())
    return torch.where(peak > 0, cam / peak.clamp(min=torch.finfo(cam.dtype).tiny), 0.0)


def tensor_overlay(
    image: torch.Tensor,
    cam: torch.Tensor | np.ndarray,
    box: Box,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> torch.Tensor:
    """The overlay of ``cam`` on ``image`` ((3, H, W) uint8), on the image's device.

    Pixels outside the region the model saw are left as they are.
    """
    device = image.device
    cam = torch.as_tensor(cam, device=device)
    region, rows, cols = tensor_upsample(tensor_normalise(cam) * 255.0, box, image.shape[-2:])
    out = image.clone()
    if region.numel() == 0:
        return out
    levels = region.round().clamp_(0, 255).long()  # OpenCV's convertScaleAbs: round, saturate
    lut = torch.from_numpy(colormap_lut(colormap).reshape(256, 3)).to(device)
    heat = lut[levels].permute(2, 0, 1).float()
    blended = image[:, rows, cols].float() * (1.0 - alpha) + heat * alpha
    out[:, rows, cols] = blended.round_().clamp_(0, 255).to(torch.uint8)
    return out


def encode_tensor(image: torch.Tensor, fmt: str) -> bytes:
    """(3, H, W) uint8 -> JPEG bytes on the image's device (nvJPEG on CUDA), quality as the CPU
    path's; PNG through ``camcli.writers.encode_image`` on the CPU."""
    if fmt == "jpg":
        return encode_jpeg(image.contiguous(), quality=JPEG_QUALITY).cpu().numpy().tobytes()
    return encode_image(image.permute(1, 2, 0).cpu().numpy(), fmt)
