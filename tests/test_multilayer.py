"""Several layers (``--layer`` repeated): every gradient method averages the layers' maps, with
one target and with several, from the Python API and from ``camcli run``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import synthetic
from camcli.cli import app
from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.methods import METHODS
from camcli.models import LoadedModel
from camcli.targets import Target
from conftest import tiny_args

GRADIENT_METHODS = sorted(n for n, info in METHODS.items() if info.needs_grad)
# RefineCAM multiplies its layers' maps (tests/test_methods_new.py); LeGrad needs a ViT.
GRADIENT_METHODS = [n for n in GRADIENT_METHODS if n not in ("refinecam", "legrad")]
LAYERS = ["features.5", "features.11"]  # 32x32 and 16x16 grids of the tiny CNN


def _loaded(model: nn.Module) -> LoadedModel:
    return LoadedModel(
        model, "tiny", None, Preprocess(64, 64), list(synthetic.CLASSES), torch.device("cpu"), 3
    )


@pytest.mark.parametrize("targets", [[Target(rank=1)], [Target(rank=1), Target(index=2)]])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_two_layers_average_the_single_layer_maps(tiny_model, method, targets):
    batch = synthetic.to_tensor(synthetic.dataset(2, seed=5)[0])
    loaded = _loaded(tiny_model)
    both = Explainer(loaded, method=method, layers=LAYERS).explain(batch, targets)
    assert both.maps.shape == (2, len(targets), 64, 64)
    assert np.isfinite(both.maps).all() and both.maps.max() > 0
    singles = []
    for layer in LAYERS:
        one = Explainer(loaded, method=method, layers=[layer]).explain(batch, targets)
        np.testing.assert_array_equal(one.class_indices, both.class_indices)
        up = nn.functional.interpolate(torch.from_numpy(one.maps), size=(64, 64), mode="bilinear")
        singles.append(up.numpy())
    expected = np.mean(singles, axis=0)
    np.testing.assert_allclose(both.maps, expected, atol=1e-4 * max(1.0, float(expected.max())))


def test_cli_two_layers_one_target_writes_the_averaged_map(tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    args = ["run", str(folder), "-o", str(out), "-f", "npy", "--json", "-q"]
    args += ["-l", LAYERS[0], "-l", LAYERS[1], *tiny_args(tiny_checkpoint)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    assert {r["layer"] for r in records} == {"+".join(LAYERS)}
    for record in records:
        cam = np.load(record["outputs"][0])
        assert cam.shape == (64, 64) and cam.max() > 0
