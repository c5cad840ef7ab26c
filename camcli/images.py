"""Path -> RGB image (EXIF orientation applied), with one-line errors that name the reason."""

from __future__ import annotations

import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camcli.errors import InputError

_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """What the model sees: resize the shorter side, centre-crop, normalise.

    With ``fit="stretch"`` the whole image is resized to ``crop_size`` squared instead.
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    fit: str = "crop"

    def with_input_size(self, size: int) -> Preprocess:
        resize = max(size, round(size * self.resize_size / self.crop_size))
        return Preprocess(size, resize, self.mean, self.std, self.interpolation, self.fit)

    def with_fit(self, fit: str) -> Preprocess:
        return Preprocess(
            self.crop_size, self.resize_size, self.mean, self.std, self.interpolation, fit
        )


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images -> 8-bit grayscale, scaled, not clipped."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return img.convert("L")
    arr = arr.astype(np.float64)
    if img.mode == "F":
        top = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
    scaled = np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: palette and alpha composited on white, 16-bit scaled, CMYK converted."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _to_8bit(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large ({exc})"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno != errno.EIO else "I/O error"
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated or corrupt image ({text})"
    return f"cannot decode image ({text})"


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file as an RGB PIL image at its own size, EXIF orientation applied.

    Raises InputError("<path>: <reason>") for anything that is not a readable image.
    """
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise InputError(f"{path}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are not the user's concern
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img) or img
                if img.width < 1 or img.height < 1:
                    raise InputError(f"{path}: image has no pixels")
                return to_rgb(img)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise InputError(f"{path}: {_reason(exc)}") from None


_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def model_view(image: Image.Image, preprocess: Preprocess) -> tuple[np.ndarray, Box]:
    """What the model sees of ``image`` (crop_size^2 RGB uint8) and where that is in the image.

    Follows torchvision's ``ImageClassification`` preset exactly: the shorter side resized to
    ``resize_size`` (long side truncated), then a centre crop with torchvision's rounding. With
    ``fit="stretch"`` the whole image is resized to the square instead.
    """
    resample = _RESAMPLE.get(preprocess.interpolation, Image.Resampling.BILINEAR)
    width, height = image.size
    size = preprocess.crop_size
    if preprocess.fit == "stretch":
        view = image.resize((size, size), resample)
        return np.asarray(view), Box(0.0, 0.0, float(width), float(height))
    short, long = (width, height) if width <= height else (height, width)
    new_short = preprocess.resize_size
    new_long = int(new_short * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_w < size or new_h < size:  # pad-free: grow until the crop fits
        scale = size / min(new_w, new_h)
        new_w, new_h = max(size, round(new_w * scale)), max(size, round(new_h * scale))
    resized = image.resize((new_w, new_h), resample)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    view = np.asarray(resized)[top : top + size, left : left + size]
    sx, sy = width / new_w, height / new_h
    box = Box(left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.ascontiguousarray(view), box


@dataclass(frozen=True)
class Box:
    """A rectangle in the original image's pixel coordinates (x right, y down; floats)."""

    x0: float
    y0: float
    x1: float
    y1: float
