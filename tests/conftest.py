"""Shared fixtures: a tiny CAM model trained once per session, images on disk, a clean env."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import synthetic

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
SYNTHETIC_MODEL = f"{Path(synthetic.__file__).resolve()}:TinyCAMNet"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Tests never download: TORCH_HOME points at an empty per-session cache; nor do they
    write to the user's caches."""
    home = tmp_path_factory.getbasetemp() / "torch-home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    # --runtime's ONNX exports (camcli.runtimes.export) go to a per-session cache, inherited by
    # the CLI subprocesses, never to the user's ~/.cache/camcli.
    exports = tmp_path_factory.getbasetemp() / "camcli-cache"
    exports.mkdir(exist_ok=True)
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(exports))


@pytest.fixture(scope="session")
def tiny_model() -> synthetic.TinyCAMNet:
    """The synthetic-shapes GAP + linear CNN, trained in seconds with a fixed seed."""
    model = synthetic.train()
    assert synthetic.accuracy(model) >= 0.95
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> dict[str, Path | str]:
    """The trained tiny model as a state dict on disk, plus its labels file, for CLI tests.

    CLI use: ``--model <model> --checkpoint <checkpoint> --labels <labels> --input-size 64
    --fit stretch``.
    """
    folder = tmp_path_factory.mktemp("tiny-ckpt")
    checkpoint = folder / "tiny.pt"
    torch.save(tiny_model.state_dict(), checkpoint)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(synthetic.CLASSES) + "\n")
    return {"model": SYNTHETIC_MODEL, "checkpoint": checkpoint, "labels": labels}


@pytest.fixture(scope="session")
def broken_checkpoints(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model's checkpoint as a training run that diverged saves it (``nan``: every
    weight NaN) and with an all-zero head (``zero_head``: every score equal)."""
    folder = tmp_path_factory.mktemp("broken-ckpt")
    state = tiny_model.state_dict()
    diverged = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
                for k, v in state.items()}  # fmt: skip
    zero_head = {**state, "fc.weight": torch.zeros_like(state["fc.weight"]),
                 "fc.bias": torch.zeros_like(state["fc.bias"])}  # fmt: skip
    paths = {"nan": folder / "nan.pt", "zero_head": folder / "zero_head.pt"}
    torch.save(diverged, paths["nan"])
    torch.save(zero_head, paths["zero_head"])
    return paths


def strict_json(text: str):
    """``text`` read as standard JSON: a ``NaN``, ``Infinity`` or ``-Infinity`` token fails."""

    def refuse(token: str):
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def strict_junit(path: Path) -> ET.Element:
    """A JUnit XML report parsed strictly (malformed XML raises), its counts checked against
    its test cases; returns the root ``<testsuites>``."""
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    cases = list(root.iter("testcase"))
    for kind in ("failures", "errors"):
        tag = kind[:-1]
        assert int(root.get(kind)) == sum(1 for c in cases if c.find(tag) is not None)
    assert int(root.get("tests")) == len(cases)
    return root


def tiny_args(ckpt: dict) -> list[str]:
    """The ``camcli run`` options that load the tiny synthetic model."""
    return [
        "--model", str(ckpt["model"]), "--checkpoint", str(ckpt["checkpoint"]),
        "--labels", str(ckpt["labels"]), "--input-size", "64", "--fit", "stretch",
        "--device", "cpu",
    ]  # fmt: skip


@pytest.fixture
def shapes_dir(tmp_path: Path) -> tuple[Path, list[tuple]]:
    """Twelve synthetic shape images in a folder tree, with their boxes."""
    images, _labels, boxes = synthetic.dataset(12, seed=123)
    folder = tmp_path / "shapes"
    for i, img in enumerate(images):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(sub / f"img{i:02d}.png")
    return folder, boxes


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A copy of the repo's sample photos (so tests never write beside the originals)."""
    target = tmp_path / "samples"
    shutil.copytree(SAMPLES, target, ignore=shutil.ignore_patterns("*.md"))
    return target


def camcli_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m camcli ARGS`` in a subprocess from the repository, one OpenMP thread, ``env``
    over this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "camcli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=600,
    )


def closed_port() -> int:
    """A local TCP port that nothing listens on (bound, then released): a proxy there refuses
    every connection at once, whatever network the machine running the tests has."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_without_network(tmp_path: Path, model: str, *, offline: bool) -> str:
    """``camcli run`` of one image with ``model`` (uncached) where nothing can be downloaded:
    with ``--offline``, else behind a proxy that refuses every connection. Asserts exit 2,
    nothing on stdout and one line on stderr, and returns that line."""
    image = random_image(tmp_path / "a.png", size=(40, 32))
    env = {"HF_HUB_OFFLINE": "0", "HTTPS_PROXY": f"http://127.0.0.1:{closed_port()}"}
    env.update(NO_PROXY="", no_proxy="")
    flags = ["--offline"] if offline else []
    args = ("run", str(image), "--model", model, "-o", str(tmp_path / "out"), *flags)
    done = camcli_cli(*args, env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    if offline:
        assert "(--offline is set, so nothing is downloaded)" in line
    else:
        assert "(cannot reach 127.0.0.1:" in line and "refused" in line
    return line


def random_image(path: Path, size=(80, 60), mode="RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path
