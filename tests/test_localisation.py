"""A GAP + linear CNN trained in the suite must point at the object: the CAM sanity check."""

import numpy as np
import pytest
import torch

import synthetic
from camcli.explain import Explainer, Target
from camcli.images import Box, Preprocess
from camcli.models import LoadedModel
from camcli.render import upsample


def peak_hit_rate(maps: np.ndarray, boxes) -> float:
    hits = 0
    for cam, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        region, rows, cols = upsample(cam, Box(0, 0, synthetic.SIZE, synthetic.SIZE), (64, 64))
        y, x = np.unravel_index(region.argmax(), region.shape)
        hits += x0 <= x + cols.start < x1 and y0 <= y + rows.start < y1
    return hits / len(boxes)


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_peaks_fall_inside_the_shape(tiny_model, method):
    images, _, boxes = synthetic.dataset(150, seed=2024)  # held out: training used seed 0
    loaded = LoadedModel(
        tiny_model,
        "tiny",
        None,
        Preprocess(64, 64),
        list(synthetic.CLASSES),
        torch.device("cpu"),
        3,
    )
    result = Explainer(loaded, method).explain(synthetic.to_tensor(images), [Target(rank=1)])
    assert result.maps.shape == (150, 1, 16, 16)
    assert peak_hit_rate(result.maps[:, 0], boxes) >= 0.9
