import json
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camcli.errors import InputError
from camcli.images import (
    DECODED_FORMATS,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    Preprocess,
    load_image,
    model_view,
)
from conftest import random_image


def test_modes_are_converted_not_rejected(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    cases = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((10, 12), 255, np.uint8)]), "RGBA"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "bw.png": Image.fromarray(rgb[..., 0]).convert("1"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == (12, 10), name


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 32768, np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    out = np.asarray(load_image(tmp_path / "deep.png"))
    assert out.shape == (4, 4, 3)
    assert 126 <= out[0, 0, 0] <= 129  # half of full scale, not saturated white


def test_transparent_pixels_become_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    Image.fromarray(arr, "RGBA").save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png")).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all", "not an image"),
        ("trunc.jpg", None, "truncated"),
    ],
)
def test_bad_files_raise_one_line_errors_with_path(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:
        buf = tmp_path / "full.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf)
        content = buf.read_bytes()[:400]
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "gone.png")


def test_model_view_matches_torchvision_preset_and_reports_the_crop_box():
    from torchvision.models import ResNet50_Weights

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (300, 500, 3), np.uint8))
    view, box = model_view(img, Preprocess(224, 256))
    preset = ResNet50_Weights.IMAGENET1K_V1.transforms()
    import torch

    expected = preset(img)
    mean = torch.tensor(preset.mean).view(3, 1, 1)
    std = torch.tensor(preset.std).view(3, 1, 1)
    ours = (torch.from_numpy(view).permute(2, 0, 1).float() / 255 - mean) / std
    assert view.shape == (224, 224, 3)
    assert torch.allclose(ours, expected, atol=1e-5)
    # shorter side 300 -> 256 (scale 300/256), long side 500 -> 426; crop offset (101, 16)
    scale = 300 / 256
    assert box.y0 == pytest.approx(16 * scale) and box.y1 == pytest.approx(240 * scale)
    assert box.x0 == pytest.approx(101 * 500 / 426) and box.x1 == pytest.approx(325 * 500 / 426)


def test_stretch_covers_the_whole_image():
    img = Image.new("RGB", (90, 30))
    view, box = model_view(img, Preprocess(64, 73, fit="stretch"))
    assert view.shape == (64, 64, 3)
    assert (box.x0, box.y0, box.x1, box.y1) == (0.0, 0.0, 90.0, 30.0)


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` but holds one byte of image data (cheap)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
    path.write_bytes(data + chunk(b"IEND", b""))
    return path


def test_declared_size_over_the_limit_fails_before_decoding(tmp_path):
    huge = _png_header(tmp_path / "huge.png", 12000, 12000)
    with pytest.raises(InputError) as info:
        load_image(huge)
    limit = "100.0 MP limit (--max-pixels)"
    assert str(info.value) == f"{huge}: 12000 x 12000 = 144.0 MP is over the {limit}"
    assert DEFAULT_MAX_PIXELS == 100_000_000
    small = random_image(tmp_path / "small.png", size=(100, 60))
    with pytest.raises(InputError, match=r"100 x 60 = 6,000 px is over the 5,999 px limit"):
        load_image(small, max_pixels=5999)
    assert load_image(small, max_pixels=6000).size == (100, 60)
    assert load_image(small, max_pixels=0).size == (100, 60)


def test_pillows_own_pixel_limit_never_gets_in_the_way(tmp_path):
    # 200 MP is over Pillow's decompression-bomb error (179 MP): camcli's limit decides alone
    big = _png_header(tmp_path / "big.png", 20000, 10000)
    with pytest.raises(InputError, match=r"200\.0 MP is over the 150\.0 MP limit"):
        load_image(big, max_pixels=150_000_000)
    for raised in (300_000_000, 0):  # decoded (and found truncated), not refused by Pillow
        with pytest.raises(InputError) as info:
            load_image(big, max_pixels=raised)
        assert "MP limit" not in str(info.value) and "bomb" not in str(info.value)
        assert "truncated" in str(info.value) or "cannot decode" in str(info.value)


def _load_error_within(path: Path, seconds: float = 5.0) -> str | None:
    """load_image's error for ``path``, or None if it blocks (a reader stuck on a FIFO)."""
    result: list[str] = []

    def load() -> None:
        try:
            load_image(path)
            result.append("loaded")
        except InputError as exc:
            result.append(str(exc))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():  # open a writer so the blocked reader returns and the test ends
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
        return None
    return result[0]


def test_fifos_sockets_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert _load_error_within(fifo) == f"{fifo}: not a regular file"
    sock = tmp_path / "sock.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    try:
        assert _load_error_within(sock) == f"{sock}: not a regular file"
    finally:
        server.close()
    assert _load_error_within(Path(os.devnull)) == f"{os.devnull}: not a regular file"
    (tmp_path / "dir.png").mkdir()
    assert _load_error_within(tmp_path / "dir.png") == f"{tmp_path / 'dir.png'}: is a directory"


def test_symlink_loops_and_dangling_links_are_one_line_errors(tmp_path):
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "dangling.jpg").symlink_to("gone.jpg")
    with pytest.raises(InputError, match=r"loop\.jpg: Too many levels of symbolic links$"):
        load_image(tmp_path / "loop.jpg")
    with pytest.raises(InputError, match=r"dangling\.jpg: no such file$"):
        load_image(tmp_path / "dangling.jpg")


def test_a_name_that_is_not_utf8_loads_and_its_errors_print_anywhere(tmp_path):
    folder = os.fsencode(tmp_path)
    good = os.fsdecode(folder + b"/caf\xe9.png")
    Image.new("RGB", (5, 4), (1, 2, 3)).save(good, format="PNG")
    assert load_image(good).size == (5, 4)
    bad = os.fsdecode(folder + b"/bad\xff.jpg")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(InputError) as info:
        load_image(bad)
    message = str(info.value)
    assert message == f"{tmp_path}/bad\\xff.jpg: not an image, or a format camcli does not read"
    message.encode("utf-8")


def test_only_the_listed_formats_are_decoded(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript must never run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    eps = tmp_path / "x.jpg"
    eps.write_bytes(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
        b"0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )
    with pytest.raises(InputError) as info:
        load_image(eps)
    assert str(info.value) == f"{eps}: not an image, or a format camcli does not read"


def test_every_listed_suffix_can_be_decoded(tmp_path):
    assert IMAGE_SUFFIXES and set(DECODED_FORMATS) <= set(Image.OPEN)
    for suffix in sorted(IMAGE_SUFFIXES):
        path = tmp_path / f"img{suffix}"
        Image.new("RGB", (8, 6), (200, 100, 50)).save(path)
        assert load_image(path).size == (8, 6), suffix


_VIEW_MEMORY = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a regression fails, not swaps
from camcli.images import Preprocess, load_image, model_view
view, box = model_view(load_image(sys.argv[1]), Preprocess(224, 256))
# VmHWM, not ru_maxrss: the latter carries over the forking parent's peak across exec
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak = int(status.split()[0]) // 1024
colours = sorted({tuple(int(c) for c in p) for p in view.reshape(-1, 3)})
print(json.dumps({"shape": view.shape, "colours": colours, "box": vars(box), "peak_mb": peak}))
"""


@pytest.mark.parametrize("size", [(65000, 1), (1, 65000)])
def test_model_view_of_an_extreme_aspect_ratio_resizes_only_the_crop(tmp_path, size):
    path = tmp_path / "thin.png"
    Image.new("RGB", size, (200, 30, 30)).save(path)
    assert path.stat().st_size < 1000
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _VIEW_MEMORY, str(path)], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["shape"] == [224, 224, 3] and result["colours"] == [[200, 30, 30]]
    assert result["peak_mb"] < 300  # resizing the whole image first would take 17 GB
    # the crop box: 224 of int(256 * 65000) resized pixels along the long side, centred
    box = result["box"]
    x0, x1 = (box["x0"], box["x1"]) if size[0] > 1 else (box["y0"], box["y1"])
    assert x1 - x0 == pytest.approx(224 * 65000 / (256 * 65000))
    assert (x0 + x1) / 2 == pytest.approx(32500, abs=1e-3)


def test_loading_in_threads_never_silences_other_warnings(tmp_path):
    """The loader threads must not touch the warnings filters: ``catch_warnings`` exits that
    overlap restore a stale list, leaving "ignore" in force for CamcliWarning too."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from camcli.errors import CamcliWarning

    path = random_image(tmp_path / "x.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CamcliWarning)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: load_image(path), range(3000)))
        warnings.warn("heard", CamcliWarning, stacklevel=1)
    assert [str(w.message) for w in caught if w.category is CamcliWarning] == ["heard"]
