"""Segmentation (torchvision lraspp / deeplabv3 / fcn): a map per class mask, against
pytorch-grad-cam's ``SemanticSegmentationTarget``; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference_cam import assert_close, pgc_raw

from camcli.explain import Explainer, parse_targets
from camcli.models import load_model
from camcli.targets import Target, apply_head
from conftest import ROOT, random_image

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget  # noqa: E402

NAME, SIZE = "lraspp_mobilenet_v3_large", 96


@pytest.fixture(scope="module")
def loaded():
    return apply_head(load_model(NAME, weights="none", device="cpu", input_size=SIZE))


def test_loading_and_default_layer(loaded):
    assert loaded.head == "segmentation" and loaded.num_classes == 21
    assert loaded.labels[15] == "person"  # the VOC categories of torchvision's weights enum
    assert loaded.preprocess.crop_size == SIZE and loaded.preprocess.mean[0] == 0.485
    assert Explainer(loaded, "gradcam").layer_names == ["backbone.16"]


def test_mask_target_against_pytorch_grad_cam(loaded):
    from pytorch_grad_cam import GradCAM

    model = loaded.model
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    explainer = Explainer(loaded, "gradcam", ["backbone.13"])
    targets = [Target(rank=1), *parse_targets(["person"], None, loaded.labels, 21)]
    result = explainer.explain(x, targets)
    with torch.no_grad():
        out = model(x)["out"]
    winners = out.argmax(1)
    top = [int(torch.bincount(w.flatten(), minlength=21).argmax()) for w in winners]
    assert result.class_indices[:, 0].tolist() == top  # top1: the class of largest area
    area = [(winners[i] == top[i]).float().mean().item() for i in range(2)]
    np.testing.assert_allclose(result.scores[:, 0], area, rtol=1e-6)  # its share of pixels

    class Out(torch.nn.Module):  # pytorch-grad-cam's documented wrapper: out["out"]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, batch):
            return self.model(batch)["out"]

    wrapped = Out()
    layer = dict(model.named_modules())["backbone.13"]
    references = [SemanticSegmentationTarget(c, (winners[i] == c).float().numpy())
                  for i, c in enumerate(top)]  # fmt: skip
    reference = pgc_raw(GradCAM, wrapped, layer, x, references)
    assert_close(result.maps[:, 0], reference)
    # "person" is absent from these random predictions: present (asked for), map blank.
    assert result.present[:, 1].all() and not result.maps[:, 1].any()


def test_cli_segmentation(tmp_path):
    image = random_image(tmp_path / "street.png", size=(80, 64))
    result = subprocess.run(
        [sys.executable, "-m", "camcli", "run", str(image), "--out", str(tmp_path / "out"),
         "--model", NAME, "--weights", "none", "--input-size", "64", "--device", "cpu",
         "--top-k", "2", "--json", "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    # A random model paints one class everywhere: top1 has all the pixels, top2 no mask.
    assert [r["target"] for r in records] == ["top1"]
    assert records[0]["score"] == 1.0 and records[0]["layer"] == "backbone.16"
    assert os.path.exists(records[0]["outputs"][0])


def test_check_accepts_segmentation_and_refuses_detection(tmp_path):
    from typer.testing import CliRunner

    from camcli.cli import app

    random_image(tmp_path / "img.png", size=(80, 64))
    spec = tmp_path / "spec.toml"
    text = (
        '[model]\nmodel = "{model}"\nweights = "none"\ninput_size = 64\ndevice = "cpu"\n\n'
        '[[case]]\nname = "noise"\nimage = "img.png"\nexpect_class = "cow"\n'
        "box = [0, 0, 80, 64]\nmin_energy = 0.99\n"
    )
    # This random model paints "cow" over the whole picture: the class is top-1 by area and
    # its map lies inside the whole-image box.
    spec.write_text(text.format(model=NAME))
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 0, result.output
    assert "3 of 3 expectations passed" in " ".join(result.output.split())
    spec.write_text(text.format(model="fasterrcnn_mobilenet_v3_large_320_fpn"))
    result = CliRunner().invoke(app, ["check", str(spec)])
    assert result.exit_code == 2
    assert "fasterrcnn_mobilenet_v3_large_320_fpn is a detector" in result.output
