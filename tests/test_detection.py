"""Detection (torchvision Faster R-CNN and friends): a map per box, against pytorch-grad-cam's
``FasterRCNNBoxScoreTarget``; Eigen-CAM; overlays with boxes; one manifest record per box."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference_cam import assert_close, pgc_raw

from camcli.explain import Explainer
from camcli.models import load_model
from camcli.targets import Target, apply_head
from conftest import ROOT, random_image

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget  # noqa: E402

NAME, SIZE = "fasterrcnn_mobilenet_v3_large_320_fpn", 128
LAYER = "backbone.body.13"


def boxed(model: torch.nn.Module) -> torch.nn.Module:
    """A random-weight detector made to find boxes of class 1: its classifier's bias for
    class 1 raised (random weights score every class about 1/91, under any threshold)."""
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
    return model


@pytest.fixture(scope="module")
def loaded():
    loaded = apply_head(load_model(NAME, weights="none", device="cpu", input_size=SIZE))
    boxed(loaded.model)
    return loaded


def test_loading_and_default_layer(loaded):
    assert loaded.head == "detection" and loaded.labels[1] == "person"
    assert loaded.preprocess.mean == (0.0, 0.0, 0.0)  # the detector normalises itself
    assert loaded.model.transform.min_size == (SIZE,) and loaded.model.transform.max_size == SIZE
    assert Explainer(loaded, "eigencam").layer_names == ["backbone.body.16"]


def test_box_target_against_pytorch_grad_cam(loaded):
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    x = torch.rand(2, 3, SIZE, SIZE)
    explainer = Explainer(loaded, "gradcam", [LAYER], score_threshold=0.3)
    result = explainer.explain(x, [Target(box=1), Target(box=2)])
    assert result.present.all()
    with torch.no_grad():
        detections = loaded.model(x)
    for i, found in enumerate(detections):
        keep = found["scores"] >= 0.3
        best = found["scores"][keep].argsort(descending=True)[0]  # box1: the highest score
        np.testing.assert_allclose(
            result.boxes[i][0], found["boxes"][keep][best].numpy(), rtol=1e-5
        )
        assert result.class_indices[i, 0] == int(found["labels"][keep][best])
        assert result.scores[i, 0] == pytest.approx(float(found["scores"][keep][best]), rel=1e-5)
    layer = dict(loaded.model.named_modules())[LAYER]
    targets = [FasterRCNNBoxScoreTarget([int(result.class_indices[i, 0])],
                                        [np.array(result.boxes[i][0])]) for i in range(2)]  # fmt: skip
    reference = pgc_raw(GradCAM, loaded.model, layer, x, targets)
    assert_close(result.maps[:, 0], reference)


def test_eigencam_and_no_box(loaded):
    torch.manual_seed(0)
    x = torch.rand(1, 3, SIZE, SIZE)
    eigen = Explainer(loaded, "eigencam", score_threshold=0.3).explain(x, [Target(box=1)])
    assert eigen.present.all() and eigen.maps.max() > 0  # gradient-free: the same map per box
    none = Explainer(loaded, "gradcam", score_threshold=1.0).explain(x, [Target(box=1)])
    assert not none.present.any() and not none.maps.any() and none.boxes == [[None]]


def test_cli_detection_boxes_and_records(tmp_path):
    image = random_image(tmp_path / "scene.png", size=(160, 128))
    out = tmp_path / "out"
    # The real CLI in a subprocess, its random detector given boxes as in ``boxed``.
    code = (
        "import sys, test_detection as t\n"
        "from camcli.models import segmentation as s\n"
        "build = s.seeded_dense\n"
        "s.seeded_dense = lambda name, n: t.boxed(build(name, n))\n"
        "from camcli.cli import app\n"
        "sys.argv = ['camcli'] + sys.argv[1:]\n"
        "app()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "run", str(image), "--out", str(out), "--model", NAME,
         "--weights", "none", "--input-size", str(SIZE), "--device", "cpu", "--fit", "stretch",
         "--score-threshold", "0.3", "--top-k", "2", "--json", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["target"] for r in records] == ["box1", "box2"]
    for record in records:
        assert record["label"] == "person" and record["score"] >= 0.3
        x0, y0, x1, y1 = record["box"]  # in the original image's pixels (160 x 128)
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 128
        assert os.path.exists(record["outputs"][0])


def test_layers_and_models_commands():
    from typer.testing import CliRunner

    from camcli.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "fasterrcnn*"])
    assert listed.exit_code == 0 and NAME in listed.stdout.split()
    layers = runner.invoke(app, ["layers", NAME, "--input-size", "64", "--json"])
    rows = [json.loads(line) for line in layers.stdout.splitlines()]
    assert [r["name"] for r in rows if r["default"]] == ["backbone.body.16"]
