"""Path -> RGB image (EXIF orientation applied), with one-line errors that name the reason."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from camcli.errors import InputError

DEFAULT_MAX_PIXELS = 100_000_000
# Pillow's EXIF, palette and size warnings are not the user's concern. One filter at import:
# ``warnings.catch_warnings`` in the loader threads would race (each exit restores the filter
# list it saw on entry, so a late exit can leave "ignore" in force for every warning).
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")


def _allow_pillow(limit: int) -> None:
    """Lift Pillow's process-wide limit (an error at 2 x 89 MP, also checked by the GIF, TIFF,
    ICO and WebP plugins) only when the user raised ours above it: load_image checks the
    declared size itself, before decoding, with its own message."""
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and (limit == 0 or limit > 2 * pillow):
        Image.MAX_IMAGE_PIXELS = None


# Suffix -> (Pillow format, the Pillow module or codec that decodes it). Only these formats
# are ever decoded: Image.open gets them as ``formats=``, so a file that is really EPS (which
# Pillow hands to Ghostscript) or any other plugin's format is refused whatever its name.
_SUFFIX_FORMATS = {
    ".jpg": ("JPEG", "jpg"), ".jpeg": ("JPEG", "jpg"), ".jpe": ("JPEG", "jpg"),
    ".png": ("PNG", "zlib"), ".bmp": ("BMP", None), ".gif": ("GIF", None),
    ".tif": ("TIFF", None), ".tiff": ("TIFF", None), ".webp": ("WEBP", "webp"),
    ".ppm": ("PPM", None), ".pgm": ("PPM", None), ".pbm": ("PPM", None), ".pnm": ("PPM", None),
    ".tga": ("TGA", None), ".jp2": ("JPEG2000", "jpg_2000"), ".j2k": ("JPEG2000", "jpg_2000"),
    ".ico": ("ICO", None), ".avif": ("AVIF", "avif"),
}  # fmt: skip


def _decodable(feature: str | None) -> bool:
    if feature is None:
        return True
    known = feature in features.modules or feature in features.codecs
    return known and bool(features.check(feature))


_AVAILABLE = {suffix: fmt for suffix, (fmt, need) in _SUFFIX_FORMATS.items() if _decodable(need)}
IMAGE_SUFFIXES = frozenset(_AVAILABLE)
DECODED_FORMATS = tuple(sorted(set(_AVAILABLE.values())))

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


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that prints and encodes anywhere: bytes of a file name that are not
    UTF-8 (kept by Python as lone surrogates) are shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "not an image, or a format camcli does not read"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ENXIO:  # opening a socket
        return "not a regular file"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno) if exc.errno != errno.EIO else "I/O error"
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated or corrupt image ({text})"
    return f"cannot decode image ({text})"


class NotRegularFile(ValueError):
    """From ``open_regular``: a directory, FIFO, socket or device; the message says which."""


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading without ever blocking, refusing all but regular files.

    O_NONBLOCK makes opening a FIFO or a device return at once instead of waiting for a
    writer; the type is then checked on the open descriptor itself (no race with a file
    swapped in between), and the caller reads from that same descriptor. Raises OSError when
    the file cannot be opened, NotRegularFile ("is a directory", "not a regular file").
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise NotRegularFile("is a directory")
        if not stat.S_ISREG(mode):
            raise NotRegularFile("not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _image_file(path: str | os.PathLike[str], name: str) -> BinaryIO:
    """``open_regular`` with the loader's one-line errors; an empty file is refused too."""
    try:
        stream = open_regular(path)
    except NotRegularFile as exc:
        raise InputError(f"{name}: {exc}") from None
    if os.fstat(stream.fileno()).st_size == 0:
        stream.close()
        raise InputError(f"{name}: empty file")
    return stream


def pixel_count(pixels: int) -> str:
    """``144.0 MP``, or the exact count where one decimal of megapixels would read 0.0."""
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels:,} px"


def _check_pixels(size: tuple[int, int], limit: int, name: str) -> None:
    width, height = size
    if limit and width * height > limit:
        raise InputError(
            f"{name}: {width} x {height} = {pixel_count(width * height)} is over the "
            f"{pixel_count(limit)} limit (--max-pixels)"
        )


def load_image(
    path: str | os.PathLike[str], max_pixels: int | None = None, draft: int | None = None
) -> Image.Image:
    """Read an image file as an RGB PIL image at its own size, EXIF orientation applied.

    ``draft`` (thumbnails): a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size, as long as
    both sides stay at least ``draft`` pixels (libjpeg's DCT scaling, several times faster
    than decoding it whole); other formats are decoded whole.

    ``max_pixels`` bounds width x height as the file declares it, checked before anything is
    decoded (None: ``DEFAULT_MAX_PIXELS``; 0: no limit). Only regular files are read, and only
    in the formats of ``IMAGE_SUFFIXES``; a FIFO or a device never blocks.
    Raises InputError("<path>: <reason>") for anything that is not a readable image.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    name = display_path(path)
    try:
        _allow_pillow(limit)
        with (
            _image_file(path, name) as stream,
            Image.open(stream, formats=DECODED_FORMATS) as img,
        ):
            _check_pixels(img.size, limit, name)
            if draft is not None:
                img.draft("RGB", (draft, draft))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            if img.width < 1 or img.height < 1:
                raise InputError(f"{name}: image has no pixels")
            return to_rgb(img)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(f"{name}: {_reason(exc)}") from None


# Up to this many pixels model_view resizes the whole image and crops, bit-exact with
# torchvision (a 64:1 panorama at 256 px); beyond, it resamples only the crop box.
_RESIZE_WHOLE_MAX_PIXELS = 1 << 22
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
    size = preprocess.crop_size
    if preprocess.fit == "stretch":
        view = image.resize((size, size), resample)
        return np.asarray(view), Box(0.0, 0.0, float(image.width), float(image.height))
    new_w, new_h, left, top, box = crop_geometry(image.width, image.height, preprocess)
    if new_w * new_h <= _RESIZE_WHOLE_MAX_PIXELS:
        view = np.asarray(image.resize((new_w, new_h), resample))[
            top : top + size, left : left + size
        ]
    else:
        # Resampling only the crop box (the same source centres and filter supports; Pillow
        # takes the box in float32, so levels may differ by rounding) never makes the whole
        # resized image, which for a 65000 x 1 px image would be 256 x 16.6M px.
        crop = (box.x0, box.y0, box.x1, box.y1)
        view = np.asarray(image.resize((size, size), resample, box=crop))
    return np.ascontiguousarray(view), box


def crop_geometry(
    width: int, height: int, preprocess: Preprocess
) -> tuple[int, int, int, int, Box]:
    """``fit="crop"``: the resized size (new_w, new_h), the crop's left and top in it, and the
    crop as a box in the image; shared by ``model_view`` and the tensor stages."""
    size = preprocess.crop_size
    short, long = (width, height) if width <= height else (height, width)
    new_short = preprocess.resize_size
    new_long = int(new_short * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_w < size or new_h < size:  # pad-free: grow until the crop fits
        scale = size / min(new_w, new_h)
        new_w, new_h = max(size, round(new_w * scale)), max(size, round(new_h * scale))
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    sx, sy = width / new_w, height / new_h
    box = Box(left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return new_w, new_h, left, top, box


@dataclass(frozen=True)
class Box:
    """A rectangle in the original image's pixel coordinates (x right, y down; floats)."""

    x0: float
    y0: float
    x1: float
    y1: float
