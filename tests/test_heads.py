"""Binary (one logit) and multi-label (sigmoid) heads: targets, scores, maps against
pytorch-grad-cam's ``BinaryClassifierOutputTarget`` / ``ClassifierOutputTarget``, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference_cam import assert_close, pgc_raw
from torch import nn
from typer.testing import CliRunner

from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import Explainer, parse_targets
from camcli.images import Preprocess
from camcli.models import LoadedModel
from camcli.targets import Target, apply_head, head_targets, resolve_head
from conftest import ROOT, SYNTHETIC_MODEL, random_image

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    BinaryClassifierOutputTarget,
    ClassifierOutputTarget,
)

SIZE = 32


def _net(outputs: int, bias: list[float] | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, outputs),
    ).eval()  # fmt: skip
    if bias is not None:
        with torch.no_grad():
            model[-1].bias.copy_(torch.tensor(bias))
    return model


def _loaded(model: nn.Module, outputs: int, head: str = "auto") -> LoadedModel:
    loaded = LoadedModel(
        model, "net", None, Preprocess(SIZE, SIZE), None, torch.device("cpu"), outputs
    )
    return apply_head(loaded, head)


def _x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE)


def test_head_resolution():
    assert resolve_head("auto", "softmax", 1) == "binary"
    assert resolve_head("auto", "softmax", 10) == "softmax"
    assert resolve_head("multilabel", "softmax", 10) == "multilabel"
    assert resolve_head("auto", "segmentation", 21) == "segmentation"
    with pytest.raises(UsageError, match="--head binary needs a model with one output"):
        resolve_head("binary", "softmax", 10)
    with pytest.raises(UsageError, match="does not apply to a detection model"):
        resolve_head("multilabel", "detection", 91)
    with pytest.raises(UsageError, match="unknown --head 'sigmoid'"):
        resolve_head("sigmoid", "softmax", 10)


def test_binary_positive_negative_against_pytorch_grad_cam():
    from pytorch_grad_cam import GradCAM

    model, x = _net(1), _x()
    loaded = _loaded(model, 1)
    assert loaded.head == "binary" and loaded.labels == ["negative", "positive"]
    explainer = Explainer(loaded, "gradcam", ["2"])
    targets = parse_targets(["positive", "negative"], None, loaded.labels, loaded.num_classes)
    assert targets == [Target(index=1), Target(index=0)]
    result = explainer.explain(x, targets)
    with torch.no_grad():
        z = model(x)[:, 0].double()
    # Scores are sigmoid probabilities: sigmoid(z) for positive, 1 - sigmoid(z) for negative.
    np.testing.assert_allclose(result.scores[:, 0], torch.sigmoid(z).numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.scores[:, 1], 1 - torch.sigmoid(z).numpy(), rtol=1e-6)
    for column, category in ((0, 1), (1, 0)):
        reference = pgc_raw(
            GradCAM, model, model[2], x, [BinaryClassifierOutputTarget(category)] * 2
        )
        assert_close(result.maps[:, column], reference)


def test_multilabel_maps_every_label_above_threshold():
    from pytorch_grad_cam import GradCAM

    # Biases put labels 0 and 2 well above 0.5 and labels 1 and 3 well below it.
    model, x = _net(4, bias=[6.0, -6.0, 6.0, -6.0]), _x()
    loaded = _loaded(model, 4, "multilabel")
    targets = head_targets("multilabel", [], None, lambda: [], loaded.num_classes, 0.5)
    assert [t.tag for t in targets] == ["class0", "class1", "class2", "class3"]
    result = Explainer(loaded, "gradcam", ["2"]).explain(x, targets)
    assert result.present.tolist() == [[True, False, True, False]] * 2
    with torch.no_grad():
        probabilities = torch.sigmoid(model(x)).numpy()
    np.testing.assert_allclose(result.scores, probabilities, rtol=1e-6)
    assert not result.maps[:, [1, 3]].any()  # absent labels: zeros, and no file (pipeline)
    for column in (0, 2):
        reference = pgc_raw(GradCAM, model, model[2], x, [ClassifierOutputTarget(column)] * 2)
        assert_close(result.maps[:, column], reference)
    # --target or --top-k replace the threshold: the classes asked for, present or not.
    ranked = head_targets("multilabel", [], 2, lambda: [Target(rank=1), Target(rank=2)], 4)
    assert ranked == [Target(rank=1), Target(rank=2)]


def test_softmax_head_is_the_default_and_unchanged():
    model, x = _net(5), _x()
    loaded = _loaded(model, 5)
    assert loaded.head == "softmax"
    result = Explainer(loaded, "gradcam", ["2"]).explain(x, [Target(rank=1)])
    with torch.no_grad():
        logits = model(x)
    assert result.class_indices[:, 0].tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(result.scores[:, 0], logits.softmax(1).amax(1).numpy(), rtol=1e-6)


def _camcli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camcli", "run", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
    )  # fmt: skip


def test_cli_binary_and_multilabel(tmp_path):
    image = random_image(tmp_path / "img.png", size=(48, 40))
    common = ["--model", SYNTHETIC_MODEL, "--weights", "none", "--input-size", "32",
              "--device", "cpu", "--json", "--quiet"]  # fmt: skip
    binary = _camcli(str(image), "--out", str(tmp_path / "b"), *common, "--num-classes", "1",
                     "--target", "positive", "--target", "negative")  # fmt: skip
    assert binary.returncode == 0, binary.stderr
    records = [json.loads(line) for line in binary.stdout.splitlines()]
    assert [(r["target"], r["label"]) for r in records] == [
        ("class1", "positive"),
        ("class0", "negative"),
    ]
    assert abs(records[0]["score"] + records[1]["score"] - 1.0) < 1e-5  # sigmoid(z), 1 - it
    assert all(os.path.exists(r["outputs"][0]) for r in records)

    # In-process from here (the real app, without another interpreter's start-up).
    runner = CliRunner()

    def run(out: str, *args: str):
        return runner.invoke(app, ["run", str(image), "--out", str(tmp_path / out), *common,
                                   *args])  # fmt: skip

    # A threshold of 0: every label; of 1: none (one record that says so, no file).
    multi = ["--num-classes", "3", "--head", "multilabel", "--format", "npy"]
    every = run("m0", *multi, "--threshold", "0")
    assert every.exit_code == 0, every.output
    tags = [json.loads(line)["target"] for line in every.stdout.splitlines()]
    assert tags == ["class0", "class1", "class2"]
    none = run("m1", *multi, "--threshold", "1")
    assert none.exit_code == 0, none.output
    (record,) = [json.loads(line) for line in none.stdout.splitlines()]
    assert record["outputs"] == [] and record["warning"] == "no label reaches --threshold"
    assert list((tmp_path / "m1").glob("*.npy")) == []

    wrong = run("w", "--num-classes", "3", "--head", "binary")
    assert wrong.exit_code == 2
    assert "error: --head binary needs a model with one output; this one has 3" in wrong.stderr


def test_skip_existing_keeps_images_whose_targets_were_absent(tmp_path):
    """A multi-label run where some labels (or none) reach --threshold, rerun with
    --skip-existing: nothing is redone (every image was redone before); another threshold
    redoes them."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        random_image(folder / f"{i}.png", size=(40, 40), seed=i)
    common = ["--model", SYNTHETIC_MODEL, "--weights", "none", "--input-size", "32",
              "--device", "cpu", "--json", "--quiet", "--num-classes", "3",
              "--head", "multilabel", "--format", "npy"]  # fmt: skip
    runner = CliRunner()

    def run(out: str, *args: str) -> list[dict]:
        result = runner.invoke(app, ["run", str(folder), "--out", str(tmp_path / out),
                                     *common, *args])  # fmt: skip
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    scores = sorted(r["score"] for r in run("all", "--threshold", "0"))
    middle = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    for threshold in (str(middle), "1"):
        out = f"t{threshold}"
        first = run(out, "--threshold", threshold)
        if threshold == "1":
            assert {r["warning"] for r in first} == {"no label reaches --threshold"}
        else:
            assert 0 < sum(len(r["outputs"]) for r in first) < 9  # some labels, not all
        files = {p: p.stat().st_mtime_ns for p in (tmp_path / out).rglob("*.npy")}
        again = run(out, "--threshold", threshold, "--skip-existing")
        assert [r["skipped"] for r in again] == [True] * len(first)
        assert [{**r, "skipped": None} for r in again] == [{**r, "skipped": None} for r in first]
        assert {p: p.stat().st_mtime_ns for p in (tmp_path / out).rglob("*.npy")} == files
    # Another threshold decides presence anew: every image is redone.
    other = run(f"t{middle}", "--threshold", "0", "--skip-existing")
    assert not any(r.get("skipped") for r in other)
    assert len(other) == 9
