import numpy as np
import pytest
import torch
from PIL import Image

from camcli.errors import UsageError
from camcli.images import Box, Preprocess, model_view
from camcli.render import colormap_lut, normalise, overlay, saliency_images, upsample


def test_upsample_equals_bilinear_interpolation_on_the_crop_box():
    rng = np.random.default_rng(0)
    cam = rng.random((7, 7)).astype(np.float32)
    box = Box(100.0, 20.0, 324.0, 244.0)
    region, rows, cols = upsample(cam, box, (300, 400))
    assert (rows, cols) == (slice(20, 244), slice(100, 324))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(cam)[None, None], size=(224, 224), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(region, expected, atol=1e-5)


def test_peak_lands_where_the_model_saw_it():
    cam = np.zeros((7, 7), np.float32)
    cam[2, 5] = 1.0
    box = Box(100.0, 20.0, 324.0, 244.0)  # 32 px per cell
    region, rows, cols = upsample(cam, box, (300, 400))
    y, x = np.unravel_index(region.argmax(), region.shape)
    y, x = y + rows.start, x + cols.start
    assert 100 + 5 * 32 <= x < 100 + 6 * 32
    assert 20 + 2 * 32 <= y < 20 + 3 * 32


def test_overlay_leaves_pixels_outside_the_crop_untouched():
    image = np.full((300, 400, 3), 77, np.uint8)
    cam = np.ones((7, 7), np.float32)
    out = overlay(image, cam, Box(100.0, 20.0, 324.0, 244.0), alpha=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[:, :100] == 77).all() and (out[:, 324:] == 77).all()
    assert (out[:20] == 77).all() and (out[244:] == 77).all()
    assert (out[20:244, 100:324] != 77).any()


def test_overlay_colours_are_rgb_and_alpha_one_shows_only_the_heat():
    image = np.zeros((8, 8, 3), np.uint8)
    cam = np.ones((2, 2), np.float32)  # uniform peak -> the top colour of jet: dark red
    out = overlay(image, cam, Box(0.0, 0.0, 8.0, 8.0), alpha=1.0, colormap="jet")
    assert tuple(out[4, 4]) == tuple(colormap_lut("jet")[255, 0])
    assert out[4, 4, 0] > 100 and out[4, 4, 2] == 0  # red channel first: RGB, not BGR


def test_normalise_clips_negatives_and_keeps_blank_maps_blank():
    np.testing.assert_allclose(normalise(np.array([[-1.0, 0.0], [1.0, 2.0]])), [[0, 0], [0.5, 1]])
    assert not normalise(np.zeros((3, 3))).any()
    assert not normalise(np.full((3, 3), -2.0)).any()
    nan = normalise(np.array([[np.nan, 1.0]]))
    assert np.isfinite(nan).all() and nan.max() == 1.0


def test_unknown_colormap_is_a_usage_error():
    with pytest.raises(UsageError, match=r"unknown colormap 'nope'.*viridis"):
        colormap_lut("nope")


@pytest.mark.parametrize("fit", ["crop", "stretch"])
@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (2, 2)])
def test_images_one_or_two_pixels_wide_or_tall_render_at_their_own_size(size, fit):
    width, height = size
    image = np.full((height, width, 3), 77, np.uint8)
    view, box = model_view(Image.fromarray(image), Preprocess(64, 73, fit=fit))
    assert view.shape == (64, 64, 3) and (view == 77).all()
    out = overlay(image, np.ones((7, 7), np.float32), box, alpha=1.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    heated = (out != 77).any(axis=2)
    assert (out[heated] == colormap_lut("jet")[255, 0]).all()
    if fit == "stretch":
        assert heated.all()
    else:  # a centre crop sees about one pixel of a thin image's long side: that one shows
        rows, cols = np.nonzero(heated)
        assert rows.size
        assert height != 300 or set(rows) == {150}
        assert width != 300 or set(cols) == {150}
    colour, gray = saliency_images(np.ones((3, 64, 64), np.float32), box, (height, width))
    assert colour.shape == (height, width, 3) and gray.shape == (height, width)
    assert (gray[heated] == 255).all() and not gray[~heated].any()
