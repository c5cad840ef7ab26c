import numpy as np
import pytest
from PIL import Image

from camcli.errors import InputError
from camcli.images import Preprocess, load_image, model_view


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
