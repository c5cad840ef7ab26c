"""Image files -> (3, H, W) uint8 RGB tensors on a device, EXIF orientation applied.

Baseline and progressive 8-bit JPEGs with 1 or 3 components are decoded in one batched
``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA, libjpeg-turbo on the CPU: bit-exact with
Pillow there). Everything else falls back, per file, to ``camcli.images.load_image``: PNG,
WebP and the other formats, CMYK/YCCK and 12-bit JPEGs, files over ``--max-pixels``, files
the tensor decoder refuses (truncated...), and any file that cannot be read; the fallback
also gives such a file its one-line error, exactly as the CPU path does.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from camcli.errors import InputError
from camcli.images import DEFAULT_MAX_PIXELS, load_image, open_regular

# torchvision 0.29 marks its image codecs deprecated (in favour of torchcodec); they are what
# nvJPEG is reached through today, and the warning is not the user's concern.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")

_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION = 0x0112


@dataclass
class JpegFile:
    """A JPEG the tensor decoder takes: its bytes and its EXIF orientation (1: as stored)."""

    data: torch.Tensor  # 1-D uint8, on the CPU (decode_jpeg wants it there for any device)
    orientation: int


def read_jpeg(path: str | os.PathLike[str], max_pixels: int | None = None) -> JpegFile | None:
    """``path``'s bytes if it is a JPEG the tensor decoder takes, else None (the fallback).

    Only the header is parsed (Pillow's lazy ``Image.open``): the mode (RGB or L: 3 or 1
    components), the bit depth, the size against ``max_pixels`` and the EXIF orientation.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with open_regular(path) as stream:
            data = stream.read()
        if not data.startswith(_JPEG_MAGIC):
            return None
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as header:
            width, height = header.size
            if header.mode not in ("RGB", "L") or getattr(header, "bits", 8) != 8:
                return None
            if width < 1 or height < 1 or (limit and width * height > limit):
                return None
            orientation = int(header.getexif().get(_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError, EOFError, TypeError):
        return None
    array = np.frombuffer(data, dtype=np.uint8).copy()
    return JpegFile(torch.from_numpy(array), orientation if 1 <= orientation <= 8 else 1)


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as EXIF ``orientation`` says it should be shown (Pillow's exif_transpose).

    2: mirrored, 3: rotated 180, 4: flipped, 5: transposed, 6: rotated 90 clockwise,
    7: transversed (transposed, then rotated 180), 8: rotated 90 counter-clockwise.
    """
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.rot90(1, dims=(-2, -1))
    return image


def load_fallback(
    path: str | os.PathLike[str], device: torch.device, max_pixels: int | None = None
) -> torch.Tensor:
    """The CPU loader's image as a (3, H, W) uint8 tensor on ``device``; its InputError as is."""
    rgb = np.array(load_image(path, max_pixels=max_pixels))  # a writable copy for torch
    return torch.from_numpy(rgb).permute(2, 0, 1).to(device)


def _decode_one(jpeg: JpegFile, device: torch.device) -> torch.Tensor | None:
    try:
        image = decode_jpeg(jpeg.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None
    return apply_orientation(image, jpeg.orientation)


def decode_images(
    paths: Sequence[str | os.PathLike[str]],
    device: torch.device | str,
    max_pixels: int | None = None,
) -> list[torch.Tensor | InputError]:
    """Each path as a (3, H, W) uint8 RGB tensor on ``device``, or the InputError saying why not.

    The JPEGs go through one batched decode; when the batch fails (decode_jpeg returns all or
    nothing) each is decoded alone, and a file that still fails takes the CPU loader.
    """
    device = torch.device(device)
    jpegs = [read_jpeg(path, max_pixels) for path in paths]
    batch = [j for j in jpegs if j is not None]
    decoded: list[torch.Tensor | None] = []
    if batch:
        try:
            images = decode_jpeg([j.data for j in batch], mode=ImageReadMode.RGB, device=device)
            decoded = [
                apply_orientation(image, j.orientation)
                for image, j in zip(images, batch, strict=True)
            ]
        except RuntimeError:
            decoded = [_decode_one(j, device) for j in batch]
    results: list[torch.Tensor | InputError] = []
    done = iter(decoded)
    for path, jpeg in zip(paths, jpegs, strict=True):
        image = next(done) if jpeg is not None else None
        if image is None:
            try:
                image = load_fallback(path, device, max_pixels)
            except InputError as exc:
                results.append(exc)
                continue
        results.append(image)
    return results
