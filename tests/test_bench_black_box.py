"""The reference side of issue 24's benchmark rows (benchmarks/black_box_rows.py,
occlusion_profile.py, incremental_occlusion.py): the plain occlusion loop whose time is the
floor in docs/benchmarks.md computes captum's map, the changed-region probe measures what it
says, and a row names what the camcli it runs lacks."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import black_box_rows
import incremental_occlusion
import known_answer
import occlusion_profile


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()  # fmt: skip


def test_plain_batched_occlusion_equals_captum():
    model = tiny_net()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours, forwarded = occlusion_profile.plain_map(model, x, target=2, batch=7)
    with torch.no_grad():
        ref = occlusion_profile.captum_map(model, x, target=2, ppe=7)[0, 0]
    assert forwarded == 170  # 13 x 13 windows and the unoccluded image
    peak = float(ref.abs().max())
    assert peak > 0
    assert float((ours - ref).abs().max()) <= 1e-5 * peak


def test_extent_is_the_span_of_changed_rows_or_columns():
    diff = torch.zeros(2, 3, 10, 20)
    diff[1, 2, 3:6, 4:8] = 0.5
    diff[0, 0, 5, 11] = 1.0  # a second changed spot widens the columns' span to 4..11
    assert incremental_occlusion.extent(diff, 2) == 3 / 10
    assert incremental_occlusion.extent(diff, 3) == 8 / 20
    assert incremental_occlusion.extent(torch.zeros(1, 1, 4, 4), 2) == 0.0
    assert incremental_occlusion.extent(torch.ones(1, 5), 3) == 1.0  # a linear layer: all of it


def test_a_row_names_the_flag_or_method_camcli_lacks():
    assert black_box_rows.camcli_missing("--top-k", "--no-such-flag", method="gradcam") == (
        "camcli run has no --no-such-flag on this branch"
    )
    assert black_box_rows.camcli_missing("--top-k", method="no-such-method") == (
        "camcli methods does not list no-such-method on this branch"
    )
    assert black_box_rows.camcli_missing("--top-k", method="gradcam") is None


def test_the_known_answer_picture_has_its_square_where_the_box_says():
    pixels, box = known_answer.picture()
    x0, y0, x1, y1 = box
    assert pixels.shape == (224, 224, 3) and x1 - x0 == y1 - y0 >= 48
    square = pixels[y0:y1, x0:x1].astype(int)
    assert (square == square[0, 0]).all()  # one flat colour
    assert square[0, 0, 1] > 150 and square[0, 0, [0, 2]].max() < 60  # green: class 1
    ring = pixels[y1 : y1 + 4, x0:x1].astype(int)  # just below: the gray background
    assert abs(ring[..., 0] - ring[..., 1]).mean() < 40


def test_peak_in_box_reports_where_the_maximum_is():
    saliency = np.zeros((224, 224))
    saliency[50, 150] = 1.0  # row (y) 50, column (x) 150
    assert black_box_rows.peak_in_box(saliency, [137, 33, 200, 96]) == (True, (150, 50))
    assert black_box_rows.peak_in_box(saliency, [0, 0, 150, 50]) == (False, (150, 50))


@pytest.mark.slow
def test_the_known_answer_model_names_the_square_colour():
    """A small build (80 resnet18 forwards at 224 px, 10-25 s here): the frozen random
    features carry the colour."""
    model, accuracy = known_answer.build(n=64, steps=150)
    assert accuracy >= 0.8  # chance is 1/3
    pixels, _box = known_answer.picture()
    with torch.inference_mode():
        probs = model(known_answer.to_tensor(pixels[None])).softmax(1)[0]
    assert int(probs.argmax()) == 1 and float(probs[1]) > 0.6
