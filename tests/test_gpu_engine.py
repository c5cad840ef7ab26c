"""The local pipeline on the tensor stages (forced on the CPU, as CI has no GPU), and
``--batch-size auto``: same names, same manifest, overlays within a level or so of the CPU
path's, memory bounded whatever the folder's size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camcli.engines.batch
from camcli.cli import app
from camcli.config import RunConfig
from camcli.engines.batchsize import AUTO, auto_batch_size, parse_batch_size
from camcli.engines.local import Pipeline
from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.models import load_model
from camcli.sources import collect_sources
from camcli.stages.tensor_path import ENV, TensorStages, tensor_stages
from camcli.targets import Target
from conftest import ROOT, SAMPLES, tiny_args


def _inputs(folder: Path) -> Path:
    """Two photos, a PNG, a CMYK and an EXIF-rotated JPEG, a truncated one and a text file."""
    folder.mkdir()
    with Image.open(SAMPLES / "cat.jpg") as cat:
        photo = cat.convert("RGB").resize((90, 60))
    photo.save(folder / "cat.jpg", quality=90)
    photo.save(folder / "cat.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.jpg", exif=exif.tobytes())
    with Image.open(SAMPLES / "coffee.jpg") as coffee:
        coffee.convert("RGB").resize((70, 100)).save(folder / "tall.jpg")
    data = (folder / "cat.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("not an image")
    return folder


def _args(folder: Path, out: Path, ckpt: dict) -> list[str]:
    options = ["-f", "jpg", "-f", "npy", "-b", "3", *tiny_args(ckpt)[:-4], "--device", "cpu"]
    return ["run", str(folder), "-o", str(out), *options]  # --fit crop: boxes inside images


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_cli_on_the_tensor_stages_writes_what_the_cpu_path_writes(
    tiny_checkpoint, tmp_path, monkeypatch
):
    folder = _inputs(tmp_path / "in")
    monkeypatch.setenv(ENV, "0")
    result = CliRunner().invoke(app, _args(folder, tmp_path / "cpu", tiny_checkpoint))
    assert result.exit_code == 1, result.output  # the bad files: exit 1, the rest written
    env = {**os.environ, ENV: "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "camcli", *_args(folder, tmp_path / "tensor",
                          tiny_checkpoint)], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)  # fmt: skip
    assert run.returncode == 1, run.stderr
    cpu, tensor = _records(tmp_path / "cpu"), _records(tmp_path / "tensor")
    assert len(cpu) == len(tensor) == 7
    for a, b in zip(cpu, tensor, strict=True):
        outputs = [o.replace(str(tmp_path / "tensor"), str(tmp_path / "cpu")) for o in b["outputs"]]
        assert (a["input"], a["status"], a["error"], a["settings"]) == (
            b["input"], b["status"], b["error"], b["settings"])  # fmt: skip
        assert outputs == a["outputs"]
        if a["status"] != "ok":
            continue
        assert a["class_index"] == b["class_index"]
        assert abs(a["score"] - b["score"]) < 1e-3
        map_a, map_b = (np.load(o) for o in (a["outputs"][1], b["outputs"][1]))
        # The views differ by a level here and there: the maps by well under 1% of their peak.
        assert np.abs(map_a - map_b).max() <= 0.01 * np.abs(map_a).max() + 1e-6
        pictures = [cv2.imread(o).astype(np.int16) for o in (a["outputs"][0], b["outputs"][0])]
        assert pictures[0].shape == pictures[1].shape
        assert np.abs(pictures[0] - pictures[1]).mean() < 2.0  # two JPEG encoders, same picture
    errors = {Path(r["input"]).name: r["error"] for r in tensor if r["status"] == "error"}
    assert set(errors) == {"truncated.jpg", "notes.jpg"}
    assert "truncated" in errors["truncated.jpg"]
    rotated = next(r for r in tensor if r["input"].endswith("rotated.jpg"))
    assert cv2.imread(rotated["outputs"][0]).shape[:2] == (90, 60)  # EXIF 6: portrait


@pytest.fixture(scope="module")
def tiny_explainer(tiny_checkpoint) -> Explainer:
    loaded = load_model(str(tiny_checkpoint["model"]), weights="none", device="cpu",
                        checkpoint=tiny_checkpoint["checkpoint"], input_size=64, fit="stretch",
                        labels=tiny_checkpoint["labels"], progress=False)  # fmt: skip
    return Explainer(loaded, method="gradcam")


def test_tensor_stages_are_chosen_per_run(tiny_explainer, monkeypatch):
    preprocess = tiny_explainer.loaded.preprocess
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(ENV, raising=False)
    assert tensor_stages(cpu, preprocess, False, None) is None  # the CPU keeps Pillow/OpenCV
    assert isinstance(tensor_stages(cuda, preprocess, False, None), TensorStages)
    assert tensor_stages(cuda, preprocess, True, None) is None  # saliency: the CPU draws it
    lanczos = preprocess.__class__(64, 64, interpolation="lanczos")
    assert tensor_stages(cuda, lanczos, False, None) is None
    monkeypatch.setenv(ENV, "1")
    assert isinstance(tensor_stages(cpu, preprocess, False, None), TensorStages)
    monkeypatch.setenv(ENV, "0")
    assert tensor_stages(cuda, preprocess, False, None) is None


def test_memory_stays_bounded_with_a_slow_writer(tiny_explainer, tmp_path, monkeypatch):
    """Images held between loading and writing never exceed the queues' bounds (loading
    ``2 x batch`` ahead plus one read job's files, ``4 x batch`` writes pending, one batch at
    the model), however many images there are."""
    monkeypatch.setenv(ENV, "1")
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    held, peak, lock, jobs = [0], [0], threading.Lock(), []
    real_load, real_write = TensorStages.load_many, camcli.engines.batch.write_atomic

    def load_many(self, paths):
        items = real_load(self, paths)
        jobs.append(len(paths))
        with lock:
            held[0] += len(items)
            peak[0] = max(peak[0], held[0])
        return items

    def slow_write(path, data, temp_dir=None):
        time.sleep(0.01)
        real_write(path, data, temp_dir)
        with lock:
            held[0] -= 1

    monkeypatch.setattr(TensorStages, "load_many", load_many)
    monkeypatch.setattr(camcli.engines.batch, "write_atomic", slow_write)
    batch = 2
    config = RunConfig(out=tmp_path / "out", formats=("jpg",), batch_size=batch, workers=2)
    summary = Pipeline(tiny_explainer, [Target(rank=1)], config).run(collect_sources([str(folder)]))
    assert summary.ok == 60 and held[0] == 0
    per_job = TensorStages.files_per_read
    assert max(jobs) == per_job and sum(jobs) == 60  # batched decodes of 8 files
    assert peak[0] <= 2 * batch + per_job + 4 * batch + batch + 1 < 60
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 60


def test_batch_size_option():
    assert parse_batch_size("auto") == AUTO and parse_batch_size(" 32 ") == 32
    for bad in ("0", "-4", "many", ""):
        with pytest.raises(UsageError, match="--batch-size"):
            parse_batch_size(bad)


def test_batch_size_auto_on_the_cpu_is_todays_default(tiny_explainer):
    assert auto_batch_size(tiny_explainer, [Target(rank=1)]) == 16


def test_cli_batch_size_errors_and_workers_on_every_core(tmp_path):
    result = CliRunner().invoke(app, ["run", str(SAMPLES), "-o", str(tmp_path / "o"), "-b", "0"])
    assert result.exit_code == 2
    assert "--batch-size '0': use a number of images (1 or more) or auto" in result.output
    assert RunConfig(out=tmp_path).workers == len(os.sched_getaffinity(0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_run_stays_on_the_gpu_and_auto_finds_a_bigger_batch(tiny_checkpoint, tmp_path):
    loaded = load_model(str(tiny_checkpoint["model"]), weights="none", device="cuda",
                        checkpoint=tiny_checkpoint["checkpoint"], input_size=64,
                        progress=False)  # fmt: skip
    explainer = Explainer(loaded, method="gradcam")
    assert auto_batch_size(explainer, [Target(rank=1)]) > 16
    folder = _inputs(tmp_path / "in")
    config = RunConfig(out=tmp_path / "out", formats=("jpg", "npy"), batch_size=4)
    pipeline = Pipeline(explainer, [Target(rank=1)], config)
    assert pipeline.work.stages is not None and pipeline.work.stages.device.type == "cuda"
    summary = pipeline.run(collect_sources([str(folder)]))
    assert summary.ok == 5 and len(summary.failed) == 2
