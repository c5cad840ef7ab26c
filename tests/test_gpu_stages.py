"""The device-agnostic stages (camcli.stages) on CPU tensors, against the CPU path they replace.

The same functions run on CUDA; what only CUDA can show (nvJPEG) is in the ``gpu`` tests at the
end, skipped without a GPU.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from camcli.engines.batchsize import find_batch_size
from camcli.errors import InputError
from camcli.images import Box, Preprocess, load_image, model_view
from camcli.render import overlay
from camcli.stages.decode import apply_orientation, decode_images, read_jpeg
from camcli.stages.draw import encode_tensor, tensor_overlay
from camcli.stages.view import tensor_model_input, tensor_view
from camcli.writers import encode_image
from conftest import SAMPLES

CPU = torch.device("cpu")
PHOTOS = sorted(SAMPLES.glob("*.jpg"))


def _photo(size: tuple[int, int] = (48, 32)) -> Image.Image:
    """A small piece of a real photo (JPEG artefacts like a camera's, not white noise)."""
    with Image.open(PHOTOS[0]) as img:
        return img.convert("RGB").resize(size)


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).cpu().numpy().astype(np.int16)


def _exif_jpeg(path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    _photo().save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def test_decode_matches_pillow_on_photos_and_every_exif_orientation(tmp_path):
    paths = [*PHOTOS, *(_exif_jpeg(tmp_path / f"o{o}.jpg", o) for o in range(1, 9))]
    decoded = decode_images(paths, CPU)
    shapes = set()
    for path, image in zip(paths, decoded, strict=True):
        assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
        reference = np.asarray(load_image(path)).astype(np.int16)
        assert _as_array(image).shape == reference.shape, path.name
        # The same libjpeg-turbo IDCT: equal here, and never more than a level apart.
        assert np.abs(_as_array(image) - reference).max() <= 1, path.name
        shapes.add(reference.shape)
    assert {(32, 48, 3), (48, 32, 3)} <= shapes  # orientations 5-8 swap width and height


def test_orientation_ops_are_pillows_transposes():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    methods = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
               6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}  # fmt: skip
    for orientation, name in methods.items():
        expected = np.asarray(Image.fromarray(pixels).transpose(getattr(Image.Transpose, name)))
        got = apply_orientation(tensor, orientation).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=str(orientation))
    assert apply_orientation(tensor, 1) is tensor


def test_files_the_tensor_decoder_cannot_take_fall_back_per_file(tmp_path):
    photo = _photo()
    png = tmp_path / "a.png"
    photo.save(png)
    cmyk = tmp_path / "cmyk.jpg"
    photo.convert("CMYK").save(cmyk, "JPEG")
    progressive = tmp_path / "progressive.jpg"
    photo.save(progressive, "JPEG", progressive=True)
    gray = tmp_path / "gray.jpg"
    photo.convert("L").save(gray, "JPEG")
    good = tmp_path / "good.jpg"
    photo.save(good, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    png_named_jpg = tmp_path / "png-named.jpg"
    shutil.copy(png, png_named_jpg)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    missing = tmp_path / "missing.jpg"

    # The header decides: PNG, CMYK and files that are not there go to the CPU loader.
    assert read_jpeg(png) is None and read_jpeg(cmyk) is None and read_jpeg(missing) is None
    assert read_jpeg(png_named_jpg) is None and read_jpeg(folder) is None
    assert read_jpeg(progressive) is not None and read_jpeg(gray) is not None
    assert read_jpeg(good, max_pixels=100) is None  # over --max-pixels: the loader says so

    paths = [good, png, cmyk, progressive, gray, truncated, png_named_jpg, folder, missing]
    decoded = decode_images(paths, CPU)
    for path, result in zip(paths, decoded, strict=True):
        try:
            expected = np.asarray(load_image(path)).astype(np.int16)
        except InputError as exc:
            assert isinstance(result, InputError), path.name
            assert str(result) == str(exc)  # the same one-line error as the CPU path
            continue
        assert isinstance(result, torch.Tensor), path.name
        # CMYK: Pillow converts it on both paths; the others: the same IDCT.
        assert np.abs(_as_array(result) - expected).max() <= 1, path.name
    errors = [isinstance(r, InputError) for r in decoded]
    assert errors == [False] * 5 + [True, False, True, True]  # a PNG named .jpg is read
    assert "truncated" in str(decoded[5])
    [limited] = decode_images([good], CPU, max_pixels=100)
    assert isinstance(limited, InputError) and "--max-pixels" in str(limited)


@pytest.mark.parametrize(
    ("preprocess", "worst", "mean"),
    [
        (Preprocess(), 1, 0.3),
        (Preprocess(48, 55), 1, 0.3),
        (Preprocess(fit="stretch"), 1, 0.3),
        (Preprocess(interpolation="bicubic"), 8, 0.3),
    ],
)
def test_view_matches_the_cpu_preprocessing(preprocess, worst, mean):
    """Measured on the sample photos: bilinear levels differ from Pillow's by at most 1
    (Pillow works in fixed point, torch in float32); bicubic's overshoot by up to 7."""
    for path in PHOTOS:
        image = load_image(path)
        expected, box = model_view(image, preprocess)
        [tensor] = decode_images([path], CPU)
        view, tensor_box = tensor_view(tensor, preprocess)
        assert tensor_box == box
        difference = np.abs(_as_array(view) - expected.astype(np.int16))
        assert view.shape == (3, preprocess.crop_size, preprocess.crop_size)
        assert difference.max() <= worst and difference.mean() < mean, path.name


def test_view_of_an_extreme_panorama_is_the_cpu_one():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 40_000, 3), dtype=np.uint8)
    preprocess = Preprocess(32, 36)  # resized whole it would be 720,000 x 36 px
    expected, box = model_view(Image.fromarray(pixels), preprocess)
    view, tensor_box = tensor_view(torch.from_numpy(pixels).permute(2, 0, 1), preprocess)
    assert tensor_box == box
    np.testing.assert_array_equal(view.permute(1, 2, 0).numpy(), expected)


def test_model_input_is_the_cpu_one():
    from camcli.explain import to_model_input
    from camcli.models import LoadedModel

    views = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    loaded = LoadedModel(torch.nn.Identity(), "x", None, Preprocess(8, 8), None, CPU, 2)
    expected = to_model_input(views.copy(), loaded)
    got = tensor_model_input(
        [torch.from_numpy(v).permute(2, 0, 1) for v in views], loaded.preprocess, CPU
    )
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("colormap", ["jet", "viridis"])
def test_overlay_matches_render_overlay(colormap):
    rng = np.random.default_rng(2)
    maps = [
        rng.random((7, 7), dtype=np.float32) - 0.3,  # negatives clipped
        rng.random((1, 1), dtype=np.float32),
        np.zeros((7, 7), np.float32),  # blank: the image shows through
        np.full((7, 7), np.nan, np.float32),
        rng.random((64, 64), dtype=np.float32),  # pixel-space size
    ]
    for path in PHOTOS[:2]:
        image = np.asarray(load_image(path))
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)
        for preprocess in (Preprocess(), Preprocess(fit="stretch")):
            _, box = model_view(Image.fromarray(image), preprocess)
            for cam in maps:
                expected = overlay(image, cam, box, alpha=0.4, colormap=colormap)
                got = tensor_overlay(tensor, torch.from_numpy(cam), box, alpha=0.4,
                                     colormap=colormap)  # fmt: skip
                difference = np.abs(_as_array(got) - expected.astype(np.int16))
                # float32 rounding of the same sums: now and then a pixel one map level off
                # (a jet step is up to 4 levels, times alpha) or one level off in the blend.
                assert difference.max() <= 2, (path.name, cam.shape)
                assert (difference > 0).mean() < 0.01, (path.name, cam.shape)


def test_overlay_of_a_box_thinner_than_a_pixel():
    image = np.full((1, 40, 3), 100, np.uint8)
    box = Box(10.0, -0.4, 30.0, 0.3)  # a centre crop of a 1 px tall image
    cam = np.array([[0.0, 1.0]], np.float32)
    expected = overlay(image, cam, box)
    got = tensor_overlay(torch.from_numpy(image.copy()).permute(2, 0, 1), cam, box)
    assert np.abs(_as_array(got) - expected.astype(np.int16)).max() <= 1
    assert (expected != 100).any()  # the map shows on the one row


def test_encode_round_trip():
    image = np.asarray(_photo((64, 40)))
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)
    jpeg = encode_tensor(tensor, "jpg")
    assert jpeg[:3] == b"\xff\xd8\xff"
    back = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    cpu = cv2.imdecode(np.frombuffer(encode_image(image, "jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert back.shape == image.shape
    error = np.abs(back.astype(np.int16) - image).mean()
    cpu_error = np.abs(cpu[:, :, ::-1].astype(np.int16) - image).mean()
    assert error < 1.2 * cpu_error  # the same quality as the CPU path's writer
    png = encode_tensor(tensor, "png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), image)


class _FakeGpu:
    """A probe whose time per batch is ``overhead + n * per_image``, out of memory above
    ``fits``; the clock advances only when the probe runs."""

    def __init__(self, overhead: float, per_image: float, fits: int) -> None:
        self.now = 0.0
        self.overhead, self.per_image, self.fits = overhead, per_image, fits
        self.sizes: list[int] = []

    def clock(self) -> float:
        return self.now

    def probe(self, n: int) -> None:
        self.sizes.append(n)
        if n > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.now += self.overhead + n * self.per_image


def test_batch_size_auto_stops_when_throughput_stops_improving():
    gpu = _FakeGpu(overhead=0.01, per_image=0.0001, fits=10_000)
    # img/s: 16 -> 1379, 32 -> 2424, 64 -> 3902, 128 -> 5614, 256 -> 7191, 512 -> 8366
    # (x1.16), 1024 -> 9110 (x1.09: does not pay)
    assert find_batch_size(gpu.probe, clock=gpu.clock, limit=4096) == 512
    assert gpu.sizes == [16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 512, 512, 1024, 1024]


def test_batch_size_auto_stops_at_out_of_memory_and_frees_it():
    gpu = _FakeGpu(overhead=0.01, per_image=0.00001, fits=100)
    freed = []
    size = find_batch_size(gpu.probe, clock=gpu.clock, on_out_of_memory=lambda: freed.append(1))
    assert size == 64 and freed == [1] and gpu.sizes[-1] == 128


def test_batch_size_auto_respects_its_limit_and_reraises_other_errors():
    gpu = _FakeGpu(overhead=1.0, per_image=0.0, fits=10_000)  # pays to the end
    assert find_batch_size(gpu.probe, clock=gpu.clock, limit=64) == 64

    def broken(n: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        find_batch_size(broken)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_decode_and_encode_match_the_cpu(tmp_path):
    cuda = torch.device("cuda")
    paths = [*PHOTOS, _exif_jpeg(tmp_path / "o6.jpg", 6)]
    for path, gpu, cpu in zip(paths, decode_images(paths, cuda), decode_images(paths, CPU),
                              strict=True):  # fmt: skip
        assert isinstance(gpu, torch.Tensor) and gpu.device.type == "cuda"
        assert isinstance(cpu, torch.Tensor)
        difference = np.abs(_as_array(gpu) - _as_array(cpu))
        assert gpu.shape == cpu.shape and difference.mean() < 1.0, path.name  # nvJPEG's IDCT
        view, _ = tensor_view(gpu, Preprocess())
        assert view.device.type == "cuda"
        back = cv2.imdecode(np.frombuffer(encode_tensor(gpu, "jpg"), np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(back[:, :, ::-1].astype(np.int16) - _as_array(cpu)).mean() < 4


@pytest.mark.gpu
@needs_cuda
def test_overlay_on_cuda_matches_the_cpu_tensors():
    image = torch.from_numpy(np.asarray(load_image(PHOTOS[0])).copy()).permute(2, 0, 1)
    cam = torch.rand(7, 7, generator=torch.Generator().manual_seed(0))
    _, box = model_view(load_image(PHOTOS[0]), Preprocess())
    cpu = tensor_overlay(image, cam, box)
    gpu = tensor_overlay(image.cuda(), cam.cuda(), box)
    assert np.abs(_as_array(gpu) - _as_array(cpu)).max() <= 1
