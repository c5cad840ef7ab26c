"""``--runtime`` (camcli.runtimes): every method that runs a pass on ONNX Runtime or OpenVINO
gives PyTorch's maps to 1e-4 of their peak, on resnet18 and a small ViT; a layer that cannot
be cut stays in PyTorch and says so once; ``auto``'s rule and its record in the settings; a
missing runtime; the export cache (reuse, two processes at once, a corrupt file, another
seed, Ctrl-C during an export); the combinations refused.

Every test has its own export cache (``CAMCLI_CACHE_DIR``), except the equality matrix, whose
models share one per module (the key is the weights' hash: the same model is exported once).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import synthetic
from camcli.errors import CamcliWarning, UsageError
from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.methods import METHODS, get_method_class
from camcli.models.loaded import LoadedModel
from camcli.outfolder import MANIFEST
from camcli.runtimes import export
from camcli.runtimes.choose import Job, choose_runtime
from camcli.targets import Target
from conftest import ROOT, camcli_cli, tiny_args

CPU = torch.device("cpu")
SIZE = 64
CLASSES = 10
RUNTIMES = ("onnxruntime", "openvino")
#: The largest difference from PyTorch's map a runtime may show, as a fraction of its peak.
TOLERANCE = 1e-4
TOP = [Target(rank=1)]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(cache))
    return cache / "runtimes"


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with every weight that starts at zero (ViT's head) drawn at random too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model.eval()


def resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _seeded(torchvision.models.resnet18(num_classes=CLASSES), seed)


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(
        image_size=SIZE, patch_size=16, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=CLASSES,
    )  # fmt: skip
    return _seeded(model, seed)


def loaded(model: nn.Module) -> LoadedModel:
    return LoadedModel(model, "test", None, Preprocess(SIZE, SIZE), None, CPU, CLASSES)


def image(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def runtime_methods() -> list[str]:
    """Every method with a pass a runtime runs: forward-only passes, or the model up to its
    layer; drise explains detectors only, whose output is not one logits tensor."""
    found = []
    for name, info in METHODS.items():
        cls = get_method_class(name)
        if info.heads == ("detection",):
            continue
        if cls.runtime_passes or (cls.runtime_split and cls.needs_layer):
            found.append(name)
    return found


#: The layers read: resnet18's last two stages; the ViT's first two blocks of three (the last
#: block's patch tokens reach the class token through no attention, so their gradients are 0,
#: and HiResCAM's sum of gradient x activation is 0 to float precision at the second).
BLOCKS = {
    "resnet18": ("layer3", "layer4"),
    "vit": ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"),
}
BUILD = {"resnet18": resnet18, "vit": tiny_vit}
#: resnet18's Score-CAM family reads layer3 (256 channels, a pass each); SS-CAM's 35 and
#: IS-CAM's 10 passes per channel there take minutes, so on resnet18 they are slow tests.
SLOW = {("resnet18", "sscam"), ("resnet18", "iscam")}
OPTIONS = {"rise": {"masks": 64}, "occlusion": {"window": 32, "stride": 16}}
#: CAM refuses a ViT's head (a LayerNorm before the linear layer): tests/test_layouts.py.
REFUSED = {("vit", "cam")}


def layers_for(model: str, method: str) -> list[str]:
    cls = get_method_class(method)
    if not cls.needs_layer:
        return []
    if cls.min_layers > 1:
        return list(BLOCKS[model])
    # resnet18's Score-CAM family: layer3's 256 channels, not layer4's 512; FEM: layer4's 2 x 2
    # positions never reach their mean + 2 std, layer3's 4 x 4 do.
    if model == "vit" or cls.runtime_passes or method == "fem":
        return [BLOCKS[model][0]]
    return [BLOCKS[model][1]]


def test_the_matrix_holds_every_method_with_a_runtime_pass():
    """The matrix below is built from the registry: a new method with a runtime pass is in
    it without editing this file. These are the ones known today."""
    found = set(runtime_methods())
    assert {"gradcam", "scorecam", "sscam", "iscam", "rise", "occlusion", "cam"} <= found
    assert not found & {"drise", "fullgrad", "guided-backprop", "legrad"}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("matrix-cache")


@pytest.fixture(scope="module")
def matrix_models() -> dict[str, LoadedModel]:
    return {name: loaded(build()) for name, build in BUILD.items()}


@pytest.fixture(scope="module")
def torch_maps() -> dict[tuple[str, str], np.ndarray]:
    """PyTorch's maps, by (model, method), computed once for both runtimes."""
    return {}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("model", "method"),
    [
        pytest.param(m, n, marks=[pytest.mark.slow] if (m, n) in SLOW else [])
        for m in BUILD
        for n in runtime_methods()
        if (m, n) not in REFUSED
    ],
)
def test_runtime_maps_equal_torch_maps(
    model, method, runtime, matrix_models, torch_maps, shared_cache, monkeypatch
):
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(shared_cache))
    model_loaded = matrix_models[model]
    layers, options = layers_for(model, method), OPTIONS.get(method, {})
    targets = [Target(rank=1), Target(rank=2)]
    key = (model, method)
    if key not in torch_maps:
        reference = Explainer(model_loaded, method, layers, runtime="torch", **options)
        assert reference.use_runtime(1).runtime == "torch"
        torch_maps[key] = reference.explain(image(), targets).maps
    expected = torch_maps[key]

    explainer = Explainer(model_loaded, method, layers, runtime=runtime, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CamcliWarning)  # every layer here splits exactly
        offload = explainer.use_runtime(1)
    cls = get_method_class(method)
    # On the runtime for real: the test cannot pass by staying in PyTorch.
    assert offload.runtime == runtime
    assert (offload.scores is not None) == cls.runtime_passes
    assert (offload.model is not None) == bool(cls.runtime_split and cls.needs_layer)
    if offload.model is not None:
        assert offload.model.cut == layers[0]
    assert offload.settings()["runtime"] == runtime

    maps = explainer.explain(image(), targets).maps
    assert maps.shape == expected.shape
    peak = float(np.abs(expected).max())
    assert peak > 1e-4, "a map that is 0 to float precision holds a runtime to nothing"
    gap = float(np.abs(maps - expected).max())
    assert gap <= TOLERANCE * peak, f"{runtime} differs by {gap / peak:.1e} of the peak"


# --- a layer that cannot be cut exactly ------------------------------------------------------


def test_a_layer_inside_a_residual_block_is_cut_at_the_blocks_input():
    """layer4.1.conv2's block adds its input back after it: the layer's output is not all the
    rest needs, so the cut moves back to the block's input (one value carries everything
    there); that block runs in PyTorch, the maps are PyTorch's, and nothing is warned."""
    model = loaded(resnet18())
    layer = ["layer4.1.conv2"]
    expected = Explainer(model, "gradcam", layer, runtime="torch").explain(image(), TOP)
    explainer = Explainer(model, "gradcam", layer, runtime="onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CamcliWarning)
        offload = explainer.use_runtime(2)
    assert offload.runtime == "onnxruntime" and offload.model is not None
    assert offload.model.cut is None  # not at the layer: the layer itself runs in PyTorch
    assert "before layer layer4.1.conv2" in offload.reason
    maps = explainer.explain(image(), TOP).maps
    peak = float(np.abs(expected.maps).max())
    assert peak > 1e-4
    assert float(np.abs(maps - expected.maps).max()) <= TOLERANCE * peak


UNCUT = """
import torch
from torch import nn


class Uncut(nn.Module):
    \"\"\"Its output reads the input again after the features: no cut is exact.\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3))) + x.mean((1, 2, 3))[:, None]


def build():
    return Uncut().eval()
"""


@pytest.fixture
def uncut_file(tmp_path: Path) -> Path:
    path = tmp_path / "uncut.py"
    path.write_text(UNCUT)
    return path


def uncut(path: Path) -> LoadedModel:
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # the test's own file
    return loaded(namespace["build"]())


def test_a_model_that_cannot_be_cut_stays_in_torch_and_says_so_once(uncut_file):
    model = uncut(uncut_file)
    layer = ["features"]
    expected = Explainer(model, "gradcam", layer, runtime="torch").explain(image(), TOP)
    explainer = Explainer(model, "gradcam", layer, runtime="onnxruntime")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offload = explainer.use_runtime(2)
        maps = explainer.explain(image(), TOP).maps
        explainer.explain(image(2), TOP)
    said = [str(w.message) for w in caught if issubclass(w.category, CamcliWarning)]
    assert len(said) == 1, said
    assert "the pass up to layer features stays in PyTorch" in said[0]
    assert "the input image is used again later" in said[0]
    assert offload.model is None and offload.scores is None
    assert offload.runtime == "torch"
    assert "stays in PyTorch" in offload.settings()["runtime_reason"]
    np.testing.assert_array_equal(maps, expected.maps)


def test_cli_says_once_that_the_model_cannot_be_cut(uncut_file, two_images, tmp_path):
    out = tmp_path / "out"
    done = camcli_cli("run", *map(str, two_images), "--out", str(out), "--model",
                      f"{uncut_file}:build", "--input-size", str(SIZE), "--device", "cpu",
                      "--layer", "features", "--runtime", "onnxruntime", "--batch-size", "1",
                      "-f", "npy", "--quiet", env={})  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "stays in PyTorch" in line]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("warning: the pass up to layer features stays in PyTorch")
    assert "Traceback" not in done.stderr
    records = manifest(out)
    assert len(records) == 2
    assert {r["settings"]["runtime"] for r in records} == {"torch"}
    assert all("stays in PyTorch" in r["settings"]["runtime_reason"] for r in records)


def test_score_passes_still_run_on_the_runtime_when_the_model_cannot_be_cut(uncut_file):
    model = uncut(uncut_file)
    layer = ["features"]
    expected = Explainer(model, "scorecam", layer, runtime="torch").explain(image(), TOP)
    explainer = Explainer(model, "scorecam", layer, runtime="openvino")
    with pytest.warns(CamcliWarning, match="features stays in PyTorch"):
        offload = explainer.use_runtime(1)
    assert offload.runtime == "openvino"
    assert offload.scores is not None and offload.model is None
    maps = explainer.explain(image(), TOP).maps
    peak = float(np.abs(expected.maps).max())
    assert peak > 0
    assert float(np.abs(maps - expected.maps).max()) <= TOLERANCE * peak


# --- auto ---------------------------------------------------------------------------------


#: auto's reason for a small job: under 10 s of passes not even a measurement is worth it,
#: under 60 s no new export (which it is depends on this machine's speed).
SMALL = (
    r"auto: {passes} forward passes \(about \d+ s in PyTorch\) are too few to pay for "
    r"(an export \(under 60 s\)|a measurement \(under 10 s\))"
)


def test_auto_keeps_a_small_job_in_torch_and_exports_nothing(_own_cache):
    explainer = Explainer(loaded(resnet18()), "rise", masks=8)  # 9 passes an image
    offload = explainer.use_runtime(1, images=2)
    assert offload.runtime == "torch"
    assert offload.scores is None and offload.model is None
    assert re.fullmatch(SMALL.format(passes=18), offload.reason), offload.reason
    assert "runtime_ms" not in offload.settings()
    assert not _own_cache.exists() or not list(_own_cache.iterdir())


def test_auto_measures_once_the_model_is_exported(_own_cache):
    model = loaded(resnet18())
    Explainer(model, "rise", masks=64, runtime="onnxruntime").use_runtime(1)  # the export
    assert len(list(_own_cache.glob("*.onnx"))) == 1
    # Even exported, a job of 9 passes of 10 ms is not worth a measurement.
    job = Job(model=model.model, logits=lambda out: out, device=CPU, size=SIZE, batch=1,
              scores=True, passes=9, pass_seconds=0.01)  # fmt: skip
    small = choose_runtime("auto", job)
    assert small.runtime == "torch"
    assert small.reason == (
        "auto: 9 forward passes (about 0 s in PyTorch) are too few to pay for a measurement "
        "(under 10 s)"
    )
    assert "runtime_ms" not in small.settings()
    explainer = Explainer(model, "rise", masks=64)
    offload = explainer.use_runtime(1)  # a job of unknown size (a video) counts as large
    timings = offload.settings()["runtime_ms"]
    assert set(timings) == {"torch", "onnxruntime", "openvino"}
    assert all(t > 0 for t in timings.values())
    assert offload.runtime in timings
    assert offload.reason.startswith("auto: ")
    assert ("fastest" in offload.reason) == (offload.runtime != "torch")
    assert f"batch of {explainer.chunk_size} at {SIZE} px" in offload.reason


@pytest.fixture
def two_images(tmp_path: Path) -> list[Path]:
    pictures, _, _ = synthetic.dataset(2, seed=5)
    paths = [tmp_path / f"img{i}.png" for i in range(2)]
    for path, picture in zip(paths, pictures, strict=True):
        Image.fromarray(picture).save(path)
    return paths


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def test_cli_auto_records_why_a_small_job_stays_in_torch(tiny_checkpoint, two_images, tmp_path):
    out = tmp_path / "out"
    # --runtime auto is the default
    done = camcli_cli("run", *map(str, two_images), "--out", str(out), "--json", "-f", "npy",
                      *tiny_args(tiny_checkpoint), env={})  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(printed) == 2
    for record in [*printed, *manifest(out)]:
        assert record["status"] == "ok"
        assert record["settings"]["runtime"] == "torch"
        # 2 images of gradcam: 2 passes
        reason = record["settings"]["runtime_reason"]
        assert re.fullmatch(SMALL.format(passes=2), reason), reason


def test_cli_records_the_runtime_and_skip_existing_ignores_it(
    tiny_checkpoint, two_images, tmp_path
):
    """``--runtime openvino``'s records say so (``--json`` and the manifest); a resume on
    another runtime skips them: maps are the same on every runtime."""
    out = tmp_path / "out"
    args = [*map(str, two_images), "--out", str(out), "-f", "npy", "--json",
            *tiny_args(tiny_checkpoint)]  # fmt: skip
    done = camcli_cli("run", *args, "--runtime", "openvino", env={})
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(printed) == 2
    for record in [*printed, *manifest(out)]:
        assert record["status"] == "ok"
        assert record["settings"]["runtime"] == "openvino"
        assert record["settings"]["runtime_reason"] == "--runtime openvino"
    files = sorted(out.rglob("*.npy"))
    assert len(files) == 2
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}

    again = camcli_cli("run", *args, "--runtime", "torch", "--skip-existing", env={})
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert len(records) == 2 and all(r["skipped"] for r in records)
    assert {r["settings"]["runtime"] for r in records} == {"openvino"}
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == before


# --- a runtime that is not installed ---------------------------------------------------------


def test_a_missing_runtime_is_one_line_and_auto_does_without(tiny_checkpoint, two_images, tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text('import sys\nsys.modules["openvino"] = None\n')
    env = {"PYTHONPATH": os.pathsep.join([str(hide), str(ROOT)])}
    args = [*map(str, two_images), "-f", "npy", *tiny_args(tiny_checkpoint)]
    done = camcli_cli("run", *args, "--out", str(tmp_path / "a"), "--runtime", "openvino",
                      env=env)  # fmt: skip
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --runtime openvino needs the openvino package: `uv sync --extra openvino` in "
        "the camcli checkout (or `pip install '.[openvino]'` there)"
    ]
    assert not (tmp_path / "a" / MANIFEST).exists()

    out = tmp_path / "b"
    done = camcli_cli("run", *args, "--out", str(out), "--runtime", "auto", "--json", env=env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 2
    assert {r["settings"]["runtime"] for r in records} <= {"torch", "onnxruntime"}


# --- the export cache ----------------------------------------------------------------------


def _files(cache: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.iterdir()}


def test_a_second_explainer_reuses_the_export(_own_cache, monkeypatch):
    model = loaded(resnet18())
    Explainer(model, "scorecam", ["layer4"], runtime="onnxruntime").use_runtime(1)
    first = _files(_own_cache)
    assert len(first) == 2  # the whole model (the masked passes) and the part before layer4
    assert all(name.endswith(".onnx") for name in first)

    calls = []
    original = export._export
    monkeypatch.setattr(export, "_export", lambda *a: calls.append(a) or original(*a))
    offload = Explainer(model, "scorecam", ["layer4"], runtime="onnxruntime").use_runtime(1)
    assert offload.runtime == "onnxruntime" and offload.model is not None
    assert calls == []
    assert _files(_own_cache) == first


def test_another_seed_is_another_export(_own_cache):
    for seed in (0, 1):
        Explainer(loaded(resnet18(seed)), "gradcam", ["layer4"], runtime="openvino").use_runtime(1)
    assert len(list(_own_cache.glob("*.onnx"))) == 2
    Explainer(loaded(resnet18(0)), "gradcam", ["layer4"], runtime="openvino").use_runtime(1)
    assert len(list(_own_cache.glob("*.onnx"))) == 2


def test_a_corrupt_cached_export_is_made_again(_own_cache):
    """A file cut short (a full disk, a copy interrupted) must not fail every run after it."""
    model = loaded(resnet18())
    expected = Explainer(model, "gradcam", ["layer4"], runtime="torch").explain(image(), TOP)
    Explainer(model, "gradcam", ["layer4"], runtime="onnxruntime").use_runtime(1)
    (path,) = _own_cache.glob("*.onnx")
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(10)
    for runtime in RUNTIMES:
        explainer = Explainer(model, "gradcam", ["layer4"], runtime=runtime)
        offload = explainer.use_runtime(1)
        assert offload.runtime == runtime and offload.model is not None
        assert path.stat().st_size == size
        maps = explainer.explain(image(), TOP).maps
        peak = float(np.abs(expected.maps).max())
        assert float(np.abs(maps - expected.maps).max()) <= TOLERANCE * peak
        with path.open("r+b") as handle:
            handle.truncate(10)


def test_two_runs_at_once_share_one_export_per_part(tiny_checkpoint, two_images, tmp_path):
    cache = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMCLI_CACHE_DIR": str(cache)}
    commands = [
        [sys.executable, "-m", "camcli", "run", *map(str, two_images), "--out",
         str(tmp_path / f"out{i}"), "-f", "npy", "--method", "scorecam", "--runtime",
         "onnxruntime", "--quiet", *tiny_args(tiny_checkpoint)]
        for i in range(2)
    ]  # fmt: skip
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for command in commands]  # fmt: skip
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
    names = sorted(p.name for p in (cache / "runtimes").iterdir())
    assert len(names) == 2, names  # the whole model and the part before the layer
    assert all(name.endswith(".onnx") and not name.startswith(".") for name in names)
    for i in range(2):
        records = manifest(tmp_path / f"out{i}")
        assert [r["settings"]["runtime"] for r in records] == ["onnxruntime"] * 2


def test_ctrl_c_during_the_export_leaves_no_temporary_file(two_images, tmp_path):
    cache = tmp_path / "cache-sigint"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMCLI_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "camcli", "run", *map(str, two_images), "--out",
               str(tmp_path / "out"), "--model", "resnet18", "--weights", "none",
               "--input-size", "64", "--device", "cpu", "--runtime", "onnxruntime", "--quiet"]  # fmt: skip
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as run:  # fmt: skip
        deadline = time.monotonic() + 120
        while not list((cache / "runtimes").glob(".export-*")):
            assert run.poll() is None, run.communicate()[1]
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert not list((cache / "runtimes").glob(".export-*"))
    assert not list((cache / "runtimes").glob("*.onnx"))


# --- combinations refused --------------------------------------------------------------------


def test_onnxruntime_refuses_bf16_in_one_line(tiny_checkpoint, two_images, tmp_path):
    done = camcli_cli("run", str(two_images[0]), "--out", str(tmp_path / "out"), "--runtime",
                      "onnxruntime", "--precision", "bf16", *tiny_args(tiny_checkpoint),
                      env={})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --runtime onnxruntime runs in float32; drop --precision bf16 or use --runtime "
        "openvino"
    ]


def test_an_explicit_runtime_refuses_a_model_off_the_cpu():
    """The rule, on the job the explainer would describe for a GPU model (no GPU needed: it
    refuses before any tensor moves); the same through the CLI is the gpu test below."""
    job = Job(model=resnet18(), logits=lambda out: out, device=torch.device("cuda"), size=SIZE,
              batch=1, scores=True)  # fmt: skip
    with pytest.raises(UsageError, match="--runtime openvino cannot serve here: the runtimes "
                       "run on the CPU and the model is on cuda"):  # fmt: skip
        choose_runtime("openvino", job)
    offload = choose_runtime("auto", job)
    assert offload.runtime == "torch"
    assert offload.reason == "auto: the runtimes run on the CPU and the model is on cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cli_openvino_on_cuda_is_refused(tiny_checkpoint, two_images, tmp_path):
    args = [a if a != "cpu" else "cuda" for a in tiny_args(tiny_checkpoint)]
    done = camcli_cli("run", str(two_images[0]), "--out", str(tmp_path / "out"), "--runtime",
                      "openvino", *args, env={})  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        "error: --runtime openvino cannot serve here: the runtimes run on the CPU and the model "
        "is on cuda"
    )
