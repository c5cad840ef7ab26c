"""The new methods (issue 12) through the real CLI: ``camcli run`` in a subprocess for each
method name, and ``camcli check`` in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from camcli.cli import app
from conftest import ROOT, SYNTHETIC_MODEL, tiny_args

#: Per method: extra ``camcli run`` options for the tiny 64 px CNN (its layers are
#: ``features.N``; refinecam needs two).
RUNS = {
    "fem": ["--layer", "features.5"],
    "kpcacam": [],
    "shapleycam": ["-t", "top1", "-t", "top2"],
    "finercam": ["--top-k", "2"],
    "refinecam": ["--layer", "features.5", "--layer", "features.11"],
    "fullgrad": ["-t", "top1", "-t", "top3"],
    "dff": ["--concepts", "3"],
}

TINY_VIT = """
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer


def tiny_vit(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=num_classes,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model
"""


def camcli_run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camcli", "run", *args, "--quiet"],
        capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", list(RUNS))
def test_run_subprocess_writes_maps_and_records(method, tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    images = [folder / "a" / "img01.png", folder / "b" / "img02.png"]
    out = tmp_path / "out"
    args = [*map(str, images), "--out", str(out), "--method", method, "-f", "npy", "-f", "png"]
    result = camcli_run([*args, *tiny_args(tiny_checkpoint), *RUNS[method]])
    assert result.returncode == 0, result.stderr
    found = records(out)
    tags = sorted({r["target"] for r in found})
    expected = {
        "shapleycam": ["top1", "top2"],
        "finercam": ["top1", "top2"],
        "fullgrad": ["top1", "top3"],
        "dff": ["concept1", "concept2", "concept3"],
    }.get(method, ["top1"])
    assert tags == expected
    assert len(found) == 2 * len(expected)
    for record in found:
        assert record["status"] == "ok" and record["method"] == method
        npy, png = sorted(record["outputs"])
        cam = np.load(npy)
        assert cam.dtype == np.float32 and cam.ndim == 2 and np.isfinite(cam).all()
        assert cam.max() > 0
        assert Path(png).stat().st_size > 0
        assert 0 <= record["score"] <= 1
    if method == "fullgrad":  # layer-free, at the input size
        assert np.load(sorted(found[0]["outputs"])[0]).shape == (64, 64)
    if method == "dff":  # the concept-class table: each concept's class, label and score
        for record in found:
            assert record["label"] in ("red", "green", "blue", "yellow") or record["label"]
            assert isinstance(record["class_index"], int)


def test_legrad_subprocess_on_a_vit(tmp_path):
    factory = tmp_path / "tiny_vit.py"
    factory.write_text(TINY_VIT)
    image = tmp_path / "x.png"
    rng = np.random.default_rng(0)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = camcli_run([
        str(image), "--out", str(out), "--model", f"{factory}:tiny_vit", "--weights", "none",
        "--input-size", "32", "--device", "cpu", "--method", "legrad", "-f", "npy",
        "-t", "top1", "-t", "top2", "--aug-smooth",
    ])  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = records(out)
    assert sorted(r["target"] for r in found) == ["top1", "top2"]
    maps = [np.load(r["outputs"][0]) for r in found]
    assert all(m.shape == (32, 32) and m.max() > 0 for m in maps)  # --aug-smooth: input size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "refinecam"], "refinecam combines the maps of 2 layers or more"),
        (["--method", "dff", "--aug-smooth"], "--aug-smooth does not apply to dff"),
        (["--method", "dff", "-t", "top1"], "dff's targets are its concepts: use --concepts K"),
        (["--method", "fem", "--concepts", "0"], "--concepts"),
    ],
)
def test_setup_errors_are_one_line(args, message, tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    result = CliRunner().invoke(
        app, ["run", str(folder), "--out", str(tmp_path / "o"), *tiny_args(tiny_checkpoint), *args]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("method", ["fullgrad", "dff", "finercam", "fem"])
def test_check_runs_the_new_methods(method, tiny_checkpoint, shapes_dir, tmp_path):
    """``camcli check`` explains each case's class: the maps feed its energy measure."""
    folder, boxes = shapes_dir
    lines = [
        "[model]",
        f"model = {json.dumps(SYNTHETIC_MODEL)}",
        f"checkpoint = {json.dumps(str(tiny_checkpoint['checkpoint']))}",
        f"labels = {json.dumps(str(tiny_checkpoint['labels']))}",
        'input_size = 64\nfit = "stretch"\ndevice = "cpu"',
        f'method = "{method}"',
    ]
    for i, sub in ((1, "a"), (2, "b")):
        lines += [
            "[[case]]",
            f'image = "{folder / sub / f"img{i:02d}.png"}"',
            f"box = {list(boxes[i])}",
            "min_energy = 0.0",
        ]
    spec = tmp_path / "spec.toml"
    spec.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["check", str(spec), "--json"])
    assert result.exit_code in (0, 1), result.output  # 1: a default pointing check failed
    report = json.loads(result.stdout)
    energies = [
        e["measured"]
        for case in report["cases"]
        for e in case["expectations"]
        if e["expectation"] == "energy"
    ]
    assert len(energies) == 2 and all(0 < e <= 1 for e in energies)
