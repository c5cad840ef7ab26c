"""Image + map -> overlay: the map upsampled bilinearly onto exactly the region the model saw."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from camcli.errors import UsageError
from camcli.images import Box

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def colormap_names() -> list[str]:
    return sorted(n[len("COLORMAP_") :].lower() for n in dir(cv2) if n.startswith("COLORMAP_"))


@functools.lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """A (256, 1, 3) RGB lookup table for an OpenCV colormap name (``jet``, ``viridis``...)."""
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if code is None:
        raise UsageError(f"unknown colormap {name!r} (available: {', '.join(colormap_names())})")
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), code)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def normalise(cam: np.ndarray) -> np.ndarray:
    """Negative evidence clipped, then scaled to [0, 1] by the peak. Blank maps stay zero."""
    cam = np.nan_to_num(cam.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    cam = np.maximum(cam, 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0.0:
        return np.zeros_like(cam)
    return cam / peak


def _pixel_span(start: float, stop: float, limit: int) -> tuple[int, int]:
    """The pixel indices whose centres (i + 0.5) fall in [start, stop).

    A box edge thinner than a pixel may hold no centre (a 1 px tall image seen through a
    centre crop): it gets the one pixel its middle lies in, so the model's view always shows.
    """
    first = max(0, int(np.ceil(start - 0.5)))
    last = min(limit, int(np.ceil(stop - 0.5)))
    if last <= first and limit > 0:
        middle = min(limit - 1, max(0, int((start + stop) / 2.0)))
        return middle, middle + 1
    return first, max(first, last)


def upsample(cam: np.ndarray, box: Box, shape: tuple[int, int]) -> tuple[np.ndarray, slice, slice]:
    """The map resampled bilinearly onto the image pixels inside ``box``.

    Map cell (i, j) covers the box's i-th row and j-th column band, exactly as the model's
    input pixels did (half-pixel centres, as in ``F.interpolate(align_corners=False)``).
    Returns the resampled region and the row and column slices of the image it covers.
    """
    height, width = shape
    r0, r1 = _pixel_span(box.y0, box.y1, height)
    c0, c1 = _pixel_span(box.x0, box.x1, width)
    if r1 <= r0 or c1 <= c0:  # OpenCV reads an empty output size as "the input's size"
        return np.zeros((r1 - r0, c1 - c0), np.float32), slice(r0, r1), slice(c0, c1)
    h, w = cam.shape
    sx, sy = w / (box.x1 - box.x0), h / (box.y1 - box.y0)
    matrix = np.array(
        [[sx, 0.0, (c0 + 0.5 - box.x0) * sx - 0.5], [0.0, sy, (r0 + 0.5 - box.y0) * sy - 0.5]],
        dtype=np.float64,
    )
    region = cv2.warpAffine(
        cam.astype(np.float32, copy=False),
        matrix,
        (c1 - c0, r1 - r0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return region, slice(r0, r1), slice(c0, c1)


def overlay(
    image: np.ndarray, cam: np.ndarray, box: Box, *, alpha: float = 0.5, colormap: str = "jet"
) -> np.ndarray:
    """Blend the coloured, normalised map over ``image`` (H, W, 3 RGB uint8) inside ``box``.

    Pixels outside the region the model saw are left as they are.
    """
    # Scaled to 0..255 on the small map; bilinear weights sum to 1, so the region stays in
    # range and one saturating, rounding conversion gives the colormap levels.
    region, rows, cols = upsample(normalise(cam) * 255.0, box, image.shape[:2])
    out = image.copy()
    if region.size == 0:
        return out
    levels = cv2.convertScaleAbs(region)
    heat = cv2.applyColorMap(levels, colormap_lut(colormap))
    out[rows, cols] = cv2.addWeighted(image[rows, cols], 1.0 - alpha, heat, alpha, 0.0)
    return out


def saliency_images(
    saliency: np.ndarray, box: Box, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-space saliency (3, h, w) -> (colour RGB, gray) uint8 images of ``shape``.

    Colour: each channel centred on its mean, scaled by 0.1 / std around mid-gray and clipped
    (pytorch-grad-cam's ``deprocess_image``), so zero evidence is gray. Gray: ``max_rgb |R|``
    divided by its peak. Both are resampled onto exactly the region the model saw, like
    overlays; pixels outside it are mid-gray (colour) or black (gray).
    """
    rgb = np.nan_to_num(saliency.astype(np.float32, copy=False))
    centred = (rgb - rgb.mean()) / (rgb.std() + 1e-5) * 0.1 + 0.5
    colour = np.full((*shape, 3), 128, dtype=np.uint8)
    gray = np.zeros(shape, dtype=np.uint8)
    regions = [upsample(np.clip(c, 0.0, 1.0), box, shape) for c in centred]
    region, rows, cols = regions[0]
    if region.size:
        stacked = np.stack([r for r, _, _ in regions], axis=-1)
        colour[rows, cols] = np.clip(stacked * 255.0 + 0.5, 0, 255).astype(np.uint8)
        level, _, _ = upsample(normalise(np.abs(rgb).max(axis=0)), box, shape)
        gray[rows, cols] = np.clip(level * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return colour, gray


def image_box(rect: Rect, box: Box, view_shape: tuple[int, ...]) -> Rect:
    """A rectangle in model-input pixels (``view_shape``: the view's (h, w, ...)) -> the same
    rectangle in the original image's pixels, through ``box``, the region the model saw."""
    sx = (box.x1 - box.x0) / view_shape[1]
    sy = (box.y1 - box.y0) / view_shape[0]
    x0, y0, x1, y1 = rect
    return (box.x0 + x0 * sx, box.y0 + y0 * sy, box.x0 + x1 * sx, box.y0 + y1 * sy)


def draw_box(image: np.ndarray, rect: Rect, text: str, colour: tuple[int, int, int] = (0, 255, 0)
             ) -> np.ndarray:  # fmt: skip
    """``image`` (H, W, 3 RGB uint8) with ``rect`` outlined and ``text`` on a filled strip
    above it (inside the image when the box touches the top edge)."""
    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    x0, y0, x1, y1 = (round(v) for v in rect)
    x0, x1 = sorted((min(max(x0, 0), width - 1), min(max(x1, 0), width - 1)))
    y0, y1 = sorted((min(max(y0, 0), height - 1), min(max(y1, 0), height - 1)))
    cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
    scale = max(0.3, min(height, width) / 800)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    top = y0 - th - base if y0 - th - base >= 0 else y0
    cv2.rectangle(out, (x0, top), (x0 + tw, top + th + base), colour, cv2.FILLED)
    cv2.putText(out, text, (x0, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                cv2.LINE_AA)  # fmt: skip
    return out
