"""camcli against pytorch-grad-cam, torchcam and a plain forward pass, in one run (issue 5).

Every row is measured independently (one failing row prints its error and the others go on);
timings are medians of ``--repeats`` runs after a warm-up run. Writes the table, the machine
description and the exact command to ``docs/benchmarks.md``.

    python benchmarks/bench.py                  # the full benchmark (tens of minutes on 2 cores)
    python benchmarks/bench.py --quick          # a smoke run: small sizes, one repeat
    python benchmarks/bench.py --rows gradcam,bf16 --device cuda

pytorch-grad-cam and torchcam are benchmark/test-only dependencies (the ``test`` extra).
Models use random weights (``weights=None``): the cost is the same as with trained weights
and nothing has to be downloaded.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
ROWS = (
    "gradcam",
    "bf16",
    "topk",
    "cam_all",
    "scorecam",
    "e2e",
    "memory",
    "startup",
    "gpu_e2e",
    "evaluate",
    "video",
    "rise",
    "occlusion",
    "onnx",
    "rt_run",
    "rt_evaluate",
    "rt_scorecam",
    "rt_rise",
)


@dataclass
class Line:
    """One line of the table: what was measured, the figure, and the target it is held to."""

    row: str
    what: str
    value: str
    target: str = ""
    ok: bool | None = None


@dataclass
class Bench:
    device: str
    repeats: int
    quick: bool
    workdir: Path
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The runtimes the rt_* rows put side by side (``--runtimes``).
    runtimes: tuple[str, ...] = ("torch", "onnxruntime", "openvino")

    def add(self, *args, **kwargs) -> None:
        line = Line(*args, **kwargs)
        self.lines.append(line)
        mark = {True: "ok", False: "MISSED", None: ""}[line.ok]
        print(f"  {line.what:<58} {line.value:>22}  {line.target:<12} {mark}", flush=True)

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def median_time(
        self, fn: Callable[[], object], repeats: int | None = None, warmup: bool = True
    ) -> float:
        """Median wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
        if warmup:
            fn()
            self.sync()
        times = []
        for _ in range(repeats or self.repeats):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def median_times(
        self, fns: Sequence[Callable[[], object]], repeats: int | None = None, warmup: bool = True
    ) -> list[float]:
        """Median wall times of several contenders, run in turn (round-robin) each repeat.

        Interleaving makes slow drifts of the machine (other tenants, clock changes) hit every
        contender alike, so their ratios hold even when absolute times wander.
        """
        if warmup:
            for fn in fns:
                fn()
                self.sync()
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(repeats or self.repeats):
            for fn, bucket in zip(fns, times, strict=True):
                start = time.perf_counter()
                fn()
                self.sync()
                bucket.append(time.perf_counter() - start)
        return [statistics.median(bucket) for bucket in times]


def _env() -> dict[str, str]:
    """The environment of a real user: bytecode caches allowed, no test-only variables."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _camcli() -> list[str]:
    script = Path(sys.executable).parent / "camcli"
    return [str(script)] if script.exists() else [sys.executable, "-m", "camcli"]


def run_process(cmd: list[str]) -> tuple[float, int]:
    """Wall time (s) and peak RSS (KiB) of one process, which must succeed.

    The peak comes from ``/usr/bin/time -f %M``: a child forked straight from this (large)
    process would inherit its high-water mark in ``ru_maxrss``.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        timed = ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd]
        start = time.perf_counter()
        proc = subprocess.run(timed, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-400:]
            raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {err}")
        peak = int(Path(rss.name).read_text().split()[-1])
    return elapsed, peak


def process_median(bench: Bench, make_cmd: Callable[[int], list[str]], repeats: int) -> float:
    """Median wall time of a whole process over ``repeats`` runs (each gets a fresh call)."""
    return statistics.median(run_process(make_cmd(i))[0] for i in range(repeats))


def process_medians(commands: Sequence[list[str]], repeats: int) -> list[float]:
    """Median wall times of whole processes, run in turn (round-robin) each repeat."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(repeats):
        for command, bucket in zip(commands, times, strict=True):
            bucket.append(run_process(command)[0])
    return [statistics.median(bucket) for bucket in times]


# --- models -----------------------------------------------------------------------------------


def _loaded(bench: Bench, name: str):
    import torch

    from camcli.models import load_model

    torch.manual_seed(0)
    return load_model(name, weights="none", device=bench.device, progress=False)


def _twin(loaded):
    """A fresh copy of the loaded model in its default form (NCHW, fp32), for the references."""
    import torch

    return copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format).eval()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --- rows -------------------------------------------------------------------------------------


def row_gradcam(bench: Bench) -> None:
    """Grad-CAM model step on resnet50, batch 16 (4 with --quick), 224 px."""
    import torch
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from torchcam.methods import GradCAM as TcGradCAM

    from camcli.explain import Explainer
    from camcli.targets import Target

    n = 4 if bench.quick else 16
    loaded = _loaded(bench, "resnet50")
    plain, pgc_model, tc_model = _twin(loaded), _twin(loaded), _twin(loaded)
    x = torch.randn(n, 3, 224, 224, device=bench.device)

    def forward():
        with torch.inference_mode():
            plain(x)

    explainer = Explainer(loaded, "gradcam")
    top1 = [Target(rank=1)]
    pgc = PgcGradCAM(model=pgc_model, target_layers=[pgc_model.layer4[-1]])
    tc = TcGradCAM(tc_model, "layer4")

    def torchcam_step():
        scores = tc_model(x)
        tc(class_idx=scores.argmax(1).tolist(), scores=scores)

    t_fwd, t_cam, t_pgc, t_tc = bench.median_times(
        [
            forward,
            lambda: explainer.explain(x, top1),
            lambda: pgc(input_tensor=x, targets=None),
            torchcam_step,
        ]
    )
    tc.remove_hooks()
    tag = f"resnet50 b{n}"
    bench.add(
        "gradcam", f"plain forward, inference_mode, NCHW fp32 ({tag})", f"{n / t_fwd:.2f} img/s"
    )
    bench.add("gradcam", f"camcli Grad-CAM ({tag})", f"{n / t_cam:.2f} img/s")
    bench.add("gradcam", f"pytorch-grad-cam GradCAM ({tag})", f"{n / t_pgc:.2f} img/s")
    bench.add("gradcam", f"torchcam GradCAM ({tag})", f"{n / t_tc:.2f} img/s")
    bench.add(
        "gradcam",
        "camcli / pytorch-grad-cam",
        f"{t_pgc / t_cam:.2f}x",
        ">= 2.5x",
        t_pgc / t_cam >= 2.5,
    )
    bench.add(
        "gradcam", "camcli / torchcam", f"{t_tc / t_cam:.2f}x", ">= 1.0x", t_tc / t_cam >= 1.0
    )
    bench.add(
        "gradcam",
        "camcli / plain forward",
        f"{t_fwd / t_cam:.2f}x",
        ">= 1.3x",
        t_fwd / t_cam >= 1.3,
    )


def row_bf16(bench: Bench) -> None:
    """camcli with --precision bf16 (fp16 on CUDA) against camcli fp32: speed and map agreement."""
    import torch

    from camcli.explain import Explainer
    from camcli.targets import Target

    precision = "fp16" if bench.device.startswith("cuda") else "bf16"
    n = 4 if bench.quick else 16
    loaded = _loaded(bench, "resnet50")
    x = torch.randn(n, 3, 224, 224, device=bench.device)
    top1 = [Target(rank=1)]
    full = Explainer(loaded, "gradcam")
    # A model of its own (same seed, same weights): under bf16 camcli folds batch norm into
    # the convolutions of the model it loaded, which the fp32 explainer must not run.
    low = Explainer(_loaded(bench, "resnet50"), "gradcam", precision=precision)
    t_full, t_low = bench.median_times(
        [lambda: full.explain(x, top1), lambda: low.explain(x, top1)]
    )
    # The same classes for both, so the maps compare like with like.
    fixed = [Target(index=int(i)) for i in full.explain(x, top1).class_indices[:1, 0]]
    r = _pearson(full.explain(x, fixed).maps, low.explain(x, fixed).maps)
    bench.add("bf16", f"camcli Grad-CAM fp32 (resnet50 b{n})", f"{n / t_full:.2f} img/s")
    bench.add("bf16", f"camcli Grad-CAM {precision} (resnet50 b{n})", f"{n / t_low:.2f} img/s")
    bench.add(
        "bf16",
        f"{precision} / fp32 throughput",
        f"{t_full / t_low:.2f}x",
        ">= 2.5x",
        t_full / t_low >= 2.5,
    )
    bench.add("bf16", f"Pearson r, {precision} maps vs fp32 maps", f"{r:.4f}", ">= 0.99", r >= 0.99)


def row_topk(bench: Bench) -> None:
    """Top-5 Grad-CAM maps in one call against top-1."""
    import torch

    from camcli.explain import Explainer
    from camcli.targets import Target

    n = 4 if bench.quick else 16
    loaded = _loaded(bench, "resnet50")
    x = torch.randn(n, 3, 224, 224, device=bench.device)
    explainer = Explainer(loaded, "gradcam")
    top5 = [Target(rank=r) for r in range(1, 6)]
    t1, t5 = bench.median_times(
        [lambda: explainer.explain(x, [Target(rank=1)]), lambda: explainer.explain(x, top5)]
    )
    bench.add("topk", f"camcli Grad-CAM top-1 (resnet50 b{n})", f"{t1 * 1000:.0f} ms")
    bench.add("topk", f"camcli Grad-CAM top-5, one call (resnet50 b{n})", f"{t5 * 1000:.0f} ms")
    bench.add("topk", "top-5 time / top-1 time", f"{t5 / t1:.2f}x", "<= 1.3x", t5 / t1 <= 1.3)


def row_cam_all(bench: Bench) -> None:
    """CAM maps for all 1000 classes (one 1x1 convolution) against the forward alone."""
    import torch

    from camcli.explain import Explainer

    n = 4 if bench.quick else 16
    loaded = _loaded(bench, "resnet50")
    plain = _twin(loaded)
    x = torch.randn(n, 3, 224, 224, device=bench.device)
    explainer = Explainer(loaded, "cam")
    layer = explainer.layer_names[0]
    model = loaded.model  # channels-last, as camcli runs it

    def all_maps():
        activations, _logits = explainer._forward(x)
        with torch.inference_mode():
            maps = explainer.method.all_class_maps(activations[layer])
        assert maps.shape[1] == 1000

    def own_forward():
        with torch.inference_mode():
            model(x.contiguous(memory_format=torch.channels_last))

    def plain_forward():
        with torch.inference_mode():
            plain(x)

    t_all, t_own, t_plain = bench.median_times([all_maps, own_forward, plain_forward])
    bench.add("cam_all", f"camcli CAM, all 1000 classes (resnet50 b{n})", f"{n / t_all:.2f} img/s")
    bench.add("cam_all", "the same model's forward alone (channels-last)", f"{n / t_own:.2f} img/s")
    bench.add(
        "cam_all",
        "all-class CAM time / forward time",
        f"{t_all / t_own:.3f}x",
        "<= 1.05x",
        t_all / t_own <= 1.05,
    )
    bench.add("cam_all", "all-class CAM time / plain NCHW forward time", f"{t_all / t_plain:.3f}x")


def row_scorecam(bench: Bench) -> None:
    """Score-CAM on resnet18, one 224 px image: camcli against torchcam."""
    import torch
    from torchcam.methods import ScoreCAM

    from camcli.explain import Explainer
    from camcli.targets import Target

    loaded = _loaded(bench, "resnet18")
    tc_model = _twin(loaded)
    x = torch.randn(1, 3, 224, 224, device=bench.device)
    tc = ScoreCAM(tc_model, "layer4")

    def torchcam_step():
        with torch.inference_mode():
            scores = tc_model(x)
        tc(class_idx=scores.argmax(1).tolist(), scores=scores)

    # Score-CAM runs 512 masked forward passes: a quarter to a whole minute a call on 2 cores.
    repeats = 1 if bench.quick else min(bench.repeats, 3)
    explainer = Explainer(loaded, "scorecam")
    precision = "fp16" if bench.device.startswith("cuda") else "bf16"
    low = Explainer(_loaded(bench, "resnet18"), "scorecam", precision=precision)
    t_tc, t_cam, t_low = bench.median_times(
        [
            torchcam_step,
            lambda: explainer.explain(x, [Target(rank=1)]),
            lambda: low.explain(x, [Target(rank=1)]),
        ],
        repeats,
        warmup=not bench.quick,
    )
    tc.remove_hooks()
    bench.add("scorecam", "torchcam ScoreCAM (resnet18, 1 image)", f"{t_tc * 1000:.0f} ms")
    bench.add("scorecam", "camcli Score-CAM (resnet18, 1 image)", f"{t_cam * 1000:.0f} ms")
    bench.add(
        "scorecam",
        "camcli speed-up over torchcam",
        f"{t_tc / t_cam:.2f}x",
        ">= 2x",
        t_tc / t_cam >= 2,
    )
    bench.add(
        "scorecam", f"camcli Score-CAM --precision {precision} (resnet18, 1 image)",
        f"{t_low * 1000:.0f} ms",
    )  # fmt: skip
    bench.add("scorecam", f"camcli {precision} speed-up over torchcam", f"{t_tc / t_low:.2f}x")


def row_onnx(bench: Bench) -> None:
    """Eigen-CAM and Ablation-CAM on resnet18 exported to ONNX (ONNX Runtime) against the same
    model in torch as camcli runs it, batch 16 (4 with --quick), 224 px."""
    import torch

    from camcli.explain import Explainer
    from camcli.models import load_model
    from camcli.models.torchvision import seeded_build
    from camcli.targets import Target

    path = bench.workdir / "resnet18.onnx"
    if not path.exists():
        torch.onnx.export(
            seeded_build("resnet18", None).eval(), (torch.zeros(2, 3, 224, 224),), str(path),
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        )  # fmt: skip
    exported = load_model(str(path), device=bench.device, progress=False)
    native = _loaded(bench, "resnet18")
    size = 4 if bench.quick else 16
    x = torch.randn(size, 3, 224, 224, device=bench.device)
    for method, batch in (("eigencam", x), ("ablationcam", x[:1])):
        ours, theirs = Explainer(exported, method), Explainer(native, method)
        t_onnx, t_torch = bench.median_times(
            [lambda e=ours, b=batch: e.explain(b, [Target(rank=1)]),
             lambda e=theirs, b=batch: e.explain(b, [Target(rank=1)])],
        )  # fmt: skip
        what = f"(resnet18 b{len(batch)})"
        bench.add("onnx", f"camcli {method} on the ONNX export {what}", f"{t_onnx * 1000:.0f} ms")
        bench.add("onnx", f"camcli {method} on the torch model {what}", f"{t_torch * 1000:.0f} ms")
        bench.add("onnx", f"{method}: ONNX Runtime time / torch time", f"{t_onnx / t_torch:.2f}x")


def row_evaluate(bench: Bench) -> None:
    """Grad-CAM + deletion/insertion (20 steps) on resnet50, 16 images (4 with --quick), 224 px,
    32 perturbed images per forward: ``camcli evaluate``'s library path against torchcam's
    ``DeletionInsertionMetric`` (with its own ``GradCAM``) on the same images, each run in a
    fresh process as it ships (``evaluate_interleaved.py``); CPU only."""
    sys.path.insert(0, str(HERE))
    from evaluate_interleaved import measure

    if bench.device != "cpu":
        raise RuntimeError("the evaluate row runs on the CPU only (--device cpu)")
    n, chunk = (4 if bench.quick else 16), 32
    repeats = 1 if bench.quick else min(bench.repeats, 3)
    medians = measure("resnet50", n, repeats, chunk)
    ours, tc, tc_thp = medians["camcli"], medians["torchcam"], medians["torchcam-thp"]
    tag = f"resnet50 b{n}, 20 steps, chunks of {chunk}"
    bench.add(
        "evaluate", f"torchcam DeletionInsertionMetric + GradCAM ({tag})", f"{tc['wall']:.1f} s"
    )
    bench.add(
        "evaluate", "torchcam, huge pages on (THP_MEM_ALLOC_ENABLE=1)", f"{tc_thp['wall']:.1f} s"
    )
    bench.add("evaluate", f"camcli evaluate --metric deletion ({tag})", f"{ours['wall']:.1f} s")
    speedup = tc["wall"] / ours["wall"]
    bench.add("evaluate", "camcli speed-up over torchcam", f"{speedup:.2f}x", ">= 2x", speedup >= 2)
    bench.add(
        "evaluate",
        "camcli speed-up over torchcam with huge pages",
        f"{tc_thp['wall'] / ours['wall']:.2f}x",
    )
    bench.add(
        "evaluate",
        # Not 0: torchcam's GradCAM differentiates the softmax output it is given (logits_fn
        # applies before the CAM), camcli the logit; the metric itself is equal (tests).
        "mean insertion AUC, camcli - torchcam (different Grad-CAM targets)",
        f"{ours['insertion_auc'] - tc['insertion_auc']:+.2e}",
    )


def row_rise(bench: Bench) -> None:
    """Issue 24: RISE on a resnet18 ONNX export, camcli against OpenVINO XAI (black_box_rows)."""
    sys.path.insert(0, str(HERE))
    from black_box_rows import rise

    if bench.device != "cpu":
        raise RuntimeError("the rise row runs on the CPU only (--device cpu)")
    rise(bench.add, bench.workdir, bench.quick)


def row_occlusion(bench: Bench) -> None:
    """Issue 24: occlusion on resnet50, camcli against captum's Occlusion (black_box_rows)."""
    sys.path.insert(0, str(HERE))
    from black_box_rows import occlusion

    if bench.device != "cpu":
        raise RuntimeError("the occlusion row runs on the CPU only (--device cpu)")
    occlusion(bench.add, bench.workdir, bench.quick)


def _runtime_rows():
    sys.path.insert(0, str(HERE))
    import runtime_rows

    return runtime_rows


def _cpu_only(bench: Bench, row: str) -> None:
    if bench.device != "cpu":
        raise RuntimeError(f"the {row} row runs on the CPU only (--device cpu): the runtimes do")


def row_rt_run(bench: Bench) -> None:
    """Issue 25: ``camcli run --runtime R`` over 200 photos (24 with --quick) for each runtime,
    against the decode + plain forward floor (runtime_rows.run_row)."""
    _cpu_only(bench, "rt_run")
    count = 24 if bench.quick else 200
    photos = make_photos(bench.workdir / f"photos{count}", count)
    one = make_photos(bench.workdir / "photos1", 1)
    _runtime_rows().run_row(bench, photos, one, bench.runtimes, run_process)


def row_rt_evaluate(bench: Bench) -> None:
    """Issue 25: evaluate's deletion + insertion on each runtime against torchcam."""
    _cpu_only(bench, "rt_evaluate")
    _runtime_rows().evaluate_row(bench, bench.runtimes)


def row_rt_scorecam(bench: Bench) -> None:
    """Issue 25: Score-CAM on each runtime against torchcam (resnet18, one image)."""
    _cpu_only(bench, "rt_scorecam")
    _runtime_rows().scorecam_row(bench, bench.runtimes)


def row_rt_rise(bench: Bench) -> None:
    """Issue 25: RISE on each runtime against OpenVINO XAI, N masks and --masks auto."""
    _cpu_only(bench, "rt_rise")
    _runtime_rows().rise_row(bench, bench.runtimes)


# --- processes --------------------------------------------------------------------------------


def make_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEG photos of mixed sizes (320-2000 px long side) cut from sample_images/."""
    from PIL import Image

    marker = folder / f".made-{count}-{seed}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sources = sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix in (".jpg", ".png"))
    photos = [Image.open(p).convert("RGB") for p in sources]
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        # A random crop of 60-100% of each side (so aspect ratios vary), then resized.
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x0, y0, x0 + cw, y0 + ch))
        long_side = int(rng.integers(320, 2001))
        scale = long_side / max(cw, ch)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        crop.resize(size, Image.Resampling.BICUBIC).save(folder / f"photo{i:04d}.jpg", quality=90)
    marker.touch()
    return folder


def row_e2e(bench: Bench) -> None:
    """Whole-process wall time over a folder of JPEG photos, overlays at the original size."""
    count = 24 if bench.quick else 200
    photos = make_photos(bench.workdir / f"photos{count}", count)
    repeats = 1 if bench.quick else min(bench.repeats, 2)
    py = sys.executable
    out = bench.workdir / "out"

    def camcli_cmd(i: int) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)
        return [*_camcli(), "run", str(photos), "-o", str(out), "--weights", "none", "-q",
                "--device", bench.device]  # fmt: skip

    def forward_cmd(i: int) -> list[str]:
        return [py, str(HERE / "baseline_forward.py"), str(photos), bench.device]

    def pgc_cmd(i: int) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)
        return [py, str(HERE / "baseline_pgc_loop.py"), str(photos), str(out), bench.device]

    t_cam = process_median(bench, camcli_cmd, repeats)
    written = len(list(out.rglob("*.jpg")))
    if written != count:
        raise RuntimeError(f"camcli wrote {written} overlays for {count} photos")
    t_fwd = process_median(bench, forward_cmd, repeats)
    t_pgc = process_median(bench, pgc_cmd, 1)  # minutes per run; far from the target
    shutil.rmtree(out, ignore_errors=True)
    bench.add("e2e", f"camcli run, {count} photos -> overlays (whole process)", f"{t_cam:.1f} s")
    bench.add("e2e", "decode + transform + plain forward, batches of 16", f"{t_fwd:.1f} s")
    bench.add("e2e", "pytorch-grad-cam README loop (per image)", f"{t_pgc:.1f} s")
    bench.add(
        "e2e",
        "camcli time / decode+forward time",
        f"{t_cam / t_fwd:.2f}x",
        "<= 1.0x",
        t_cam <= t_fwd,
    )
    bench.add(
        "e2e",
        "speed-up over the pytorch-grad-cam loop",
        f"{t_pgc / t_cam:.2f}x",
        ">= 2.5x",
        t_pgc / t_cam >= 2.5,
    )


def _linked(folder: Path, photos: Path, count: int) -> Path:
    """A folder of ``count`` hard links cycling over ``photos`` (no extra disk, same mix)."""
    if (folder / f".made-{count}").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    files = sorted(photos.glob("*.jpg"))
    for i in range(count):
        sub = folder / f"part{i // len(files)}"
        sub.mkdir(parents=True, exist_ok=True)
        os.link(files[i % len(files)], sub / files[i % len(files)].name)
    (folder / f".made-{count}").touch()
    return folder


def row_memory(bench: Bench) -> None:
    """Peak RSS of ``camcli run`` (resnet18, overlays) over 10x more photos."""
    small, large = (20, 100) if bench.quick else (100, 1000)
    photos = make_photos(bench.workdir / "photos200", 200)
    out = bench.workdir / "out-mem"
    peaks = {}
    for count in (small, large):
        folder = _linked(bench.workdir / f"linked{count}", photos, count)
        shutil.rmtree(out, ignore_errors=True)
        cmd = [*_camcli(), "run", str(folder), "-o", str(out), "--weights", "none", "-q",
               "-m", "resnet18", "--device", bench.device]  # fmt: skip
        _t, peaks[count] = run_process(cmd)
    shutil.rmtree(out, ignore_errors=True)
    ratio = peaks[large] / peaks[small]
    bench.add(
        "memory",
        f"camcli run peak RSS, {small} photos (resnet18)",
        f"{peaks[small] / 1024:.0f} MiB",
    )
    bench.add(
        "memory",
        f"camcli run peak RSS, {large} photos (resnet18)",
        f"{peaks[large] / 1024:.0f} MiB",
    )
    bench.add("memory", f"peak RSS {large} / {small}", f"{ratio:.3f}x", "<= 1.1x", ratio <= 1.1)


def row_startup(bench: Bench) -> None:
    """``camcli --help``, and ``camcli run`` on one photo against import + build + forward."""
    repeats = 3 if bench.quick else max(7, bench.repeats)
    photo = make_photos(bench.workdir / "photos1", 1)
    out = bench.workdir / "out-one"
    run_process([*_camcli(), "--help"])  # bytecode caches written once, as after an install
    t_help = process_median(bench, lambda i: [*_camcli(), "--help"], repeats)
    one = [*_camcli(), "run", str(photo / "photo0000.jpg"), "-o", str(out), "--weights", "none",
           "-q", "--device", bench.device]  # fmt: skip
    base = [sys.executable, str(HERE / "baseline_startup.py")]
    run_process(one)
    run_process(base)
    t_one, t_base = process_medians([one, base], repeats)
    shutil.rmtree(out, ignore_errors=True)
    bench.add("startup", "camcli --help", f"{t_help:.3f} s", "< 0.3 s", t_help < 0.3)
    bench.add("startup", "camcli run, one photo (resnet50)", f"{t_one:.2f} s")
    bench.add("startup", "import torch+torchvision, build resnet50, one forward", f"{t_base:.2f} s")
    bench.add(
        "startup",
        "camcli run one photo - that baseline",
        f"{t_one - t_base:+.2f} s",
        "<= +0.5 s",
        t_one - t_base <= 0.5,
    )


# --- report -----------------------------------------------------------------------------------


def _gpu_sampled(cmd: list[str]) -> tuple[float, float, float]:
    """Wall time (s), mean GPU utilisation (%) and peak GPU memory used (MiB) of one process,
    sampled every 100 ms by ``nvidia-smi`` while it runs."""
    sampler = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
         "-lms", "100"], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        elapsed, _ = run_process(cmd)
    finally:
        sampler.terminate()
        lines = sampler.communicate()[0].splitlines()
    samples = [tuple(float(v) for v in line.split(",")) for line in lines if "," in line]
    if not samples:
        return elapsed, float("nan"), float("nan")
    return elapsed, statistics.fmean(u for u, _ in samples), max(m for _, m in samples)


def row_gpu_e2e(bench: Bench) -> None:
    """Issue 10: ``camcli run`` on a GPU over 2,000 photos (overlays; .npy only; fp16 against
    fp32 at the default batch; 2,000 against 20,000 photos for peak GPU memory), against a
    decode + forward script that uses the GPU well and pytorch-grad-cam's README loop."""
    import torch

    count = 200 if bench.quick else 2000
    what = f"camcli run, {count:,} photos -> overlays, after start-up"
    if not bench.device.startswith("cuda") or not torch.cuda.is_available():
        for label, target in (
            (what, ">= 1000 img/s"),
            (f"camcli run, {count:,} photos -> overlays (whole process)", ""),
            (f"camcli run, {count:,} photos -> .npy only, after start-up", ">= 1500 img/s"),
            ("fp16 / fp32 at the default batch (--batch-size auto)", "> 1.0x"),
            ("peak GPU memory, 2,000 -> 20,000 photos", "flat (+10%)"),
            ("GPU utilisation during the run (nvidia-smi, mean)", ""),
            ("decode (nvJPEG) + forward, batch 64, fp16 (whole process)", ""),
            ("pytorch-grad-cam README loop (per image, 200 photos)", ""),
        ):
            bench.add("gpu_e2e", label, "not measured (no GPU lent)", target)
        return
    photos = make_photos(bench.workdir / f"photos{count}", count)
    one = make_photos(bench.workdir / "photos1", 1)
    out = bench.workdir / "out"
    py = sys.executable

    def camcli(folder: Path, *extra: str) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)
        return [*_camcli(), "run", str(folder), "-o", str(out), "--weights", "none", "-q",
                "--device", bench.device, *extra]  # fmt: skip

    startup = statistics.median(run_process(camcli(one))[0] for _ in range(bench.repeats))
    t_all, utilisation, peak = _gpu_sampled(camcli(photos))
    if len(list(out.rglob("*.jpg"))) != count:
        raise RuntimeError(f"camcli did not write {count} overlays")
    rate = (count - 1) / max(t_all - startup, 1e-9)
    t_npy = run_process(camcli(photos, "-f", "npy"))[0]
    t_fp16 = run_process(camcli(photos, "--precision", "fp16"))[0]
    large = _linked(bench.workdir / "linked20000", photos, 10 * count)
    t_large, _, peak_large = _gpu_sampled(camcli(large))
    t_fwd = run_process([py, str(HERE / "baseline_gpu_forward.py"), str(photos), bench.device])[0]
    subset = _linked(bench.workdir / "linked200", photos, 200)
    shutil.rmtree(out, ignore_errors=True)
    pgc = [py, str(HERE / "baseline_pgc_loop.py"), str(subset), str(out), bench.device]
    t_pgc = run_process(pgc)[0]
    shutil.rmtree(out, ignore_errors=True)
    fp16_rate = (count - 1) / max(t_fp16 - startup, 1e-9)
    bench.add("gpu_e2e", what, f"{rate:.0f} img/s", ">= 1000 img/s", rate >= 1000)
    bench.add("gpu_e2e", f"camcli run, {count:,} photos -> overlays (whole process)",
              f"{t_all:.1f} s (start-up {startup:.1f} s)")  # fmt: skip
    npy_rate = (count - 1) / max(t_npy - startup, 1e-9)
    bench.add("gpu_e2e", f"camcli run, {count:,} photos -> .npy only, after start-up",
              f"{npy_rate:.0f} img/s", ">= 1500 img/s", npy_rate >= 1500)  # fmt: skip
    bench.add("gpu_e2e", "fp16 / fp32 at the default batch (--batch-size auto)",
              f"{fp16_rate / rate:.2f}x", "> 1.0x", fp16_rate > rate)  # fmt: skip
    bench.add("gpu_e2e", f"peak GPU memory, {count:,} -> {10 * count:,} photos",
              f"{peak:.0f} -> {peak_large:.0f} MiB ({t_large:.0f} s)", "flat (+10%)",
              peak_large <= 1.1 * peak)  # fmt: skip
    bench.add("gpu_e2e", "GPU utilisation during the run (nvidia-smi, mean)", f"{utilisation:.0f}%")
    bench.add("gpu_e2e", "decode (nvJPEG) + forward, batch 64, fp16 (whole process)",
              f"{t_fwd:.1f} s ({count / t_fwd:.0f} img/s)")  # fmt: skip
    bench.add("gpu_e2e", "pytorch-grad-cam README loop (per image, 200 photos)",
              f"{200 / t_pgc:.0f} img/s")  # fmt: skip


def make_clip(
    path: Path, seconds: int, width: int = 1280, height: int = 720, rate: int = 30
) -> Path:
    """A ``seconds`` long clip: a window panning across the sample photos (scaled to cover the
    frame), H.264 at ``rate`` fps; made once and kept in the work folder."""
    if path.exists():
        return path
    import av
    from PIL import Image

    photos = sorted((ROOT / "sample_images").glob("*.jpg"))
    scenes = []
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        scale = max(width * 1.5 / image.width, height / image.height)
        size = (round(image.width * scale), round(image.height * scale))
        scenes.append(np.asarray(image.resize(size, Image.Resampling.BILINEAR)))
    frames = seconds * rate
    per_scene = max(1, frames // len(scenes))
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"}
        for i in range(frames):
            scene = scenes[min(i // per_scene, len(scenes) - 1)]
            span = scene.shape[1] - width
            x = round((i % per_scene) / per_scene * span)
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(scene[:height, x : x + width]), format="rgb24"
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.rename(path)
    return path


def row_video(bench: Bench) -> None:
    """A 720p clip: camcli run's frames per second against a decode + plain forward loop in
    the same batches and a pytorch-grad-cam loop over cv2.VideoCapture / VideoWriter."""
    seconds = 3 if bench.quick else 30
    clip = make_clip(bench.workdir / f"clip{seconds}s.mp4", seconds)
    frames = seconds * 30
    out = bench.workdir / "video-out"
    py = sys.executable
    camcli_cmd = [*_camcli(), "run", str(clip), "-o", str(out), "--weights", "none", "-q",
                  "--device", bench.device, "--batch-size", "16"]  # fmt: skip
    forward_cmd = [py, str(HERE / "baseline_video_forward.py"), str(clip), bench.device]
    pgc_cmd = [py, str(HERE / "baseline_video_pgc.py"), str(clip),
               str(bench.workdir / "pgc.mp4"), bench.device]  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    t_cam, t_fwd, t_pgc = process_medians([camcli_cmd, forward_cmd, pgc_cmd], 1)
    if not (out / f"{clip.name}.gradcam.top1.mp4").is_file():
        raise RuntimeError("camcli wrote no overlay video")
    fps = {name: frames / t for name, t in (("cam", t_cam), ("fwd", t_fwd), ("pgc", t_pgc))}
    bench.add(
        "video", f"camcli run, {seconds} s 720p clip -> overlay video", f"{fps['cam']:.1f} fps"
    )
    bench.add("video", "decode + plain forward, batches of 16", f"{fps['fwd']:.1f} fps")
    bench.add("video", "pytorch-grad-cam loop, VideoCapture/VideoWriter", f"{fps['pgc']:.1f} fps")
    bench.add("video", "camcli fps / decode+forward fps", f"{fps['cam'] / fps['fwd']:.2f}x",
              ">= 0.8x", fps["cam"] / fps["fwd"] >= 0.8)  # fmt: skip
    bench.add("video", "camcli fps / pytorch-grad-cam loop fps", f"{fps['cam'] / fps['pgc']:.2f}x",
              ">= 3x", fps["cam"] / fps["pgc"] >= 3)  # fmt: skip
    if not bench.device.startswith("cuda"):
        bench.add("video", "GPU (frames decoded with NVDEC)", "not measured")


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    extras = [f for f in ("avx512_bf16", "amx_bf16", "avx512_fp16") if f in flags]
    text = (
        f"{cpu}, {os.cpu_count()} logical CPUs ({', '.join(extras) or 'no bf16 extensions'}), "
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none available"
        text += f"; GPU: {gpu}"
    return text


def versions() -> str:
    from importlib.metadata import version

    parts = []
    for dist in (
        "camcli",
        "torchvision",
        "grad-cam",
        "torchcam",
        "pillow",
        "opencv-python-headless",
        "onnxruntime",
        "openvino",
    ):
        try:
            parts.append(f"{dist} {version(dist)}")
        except Exception:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def render(bench: Bench, command: str, loads: tuple[str, str], started: str, elapsed: float) -> str:
    status = {True: "met", False: "**missed**", None: "n/a"}
    rows = ["| row | measurement | value | target | |", "|---|---|---|---|---|"]
    for line in bench.lines:
        verdict = status[line.ok] if line.target else ""
        rows.append(f"| {line.row} | {line.what} | {line.value} | {line.target} | {verdict} |")
    notes = "".join(f"- {n}\n" for n in bench.notes)
    return (
        f"## Device: {bench.device}\n\n"
        f"- Machine: {machine(bench.device)}\n"
        f"- Packages: {versions()}\n"
        f"- Command: `{command}`\n"
        f"- Started {started} UTC, took {elapsed / 60:.1f} min; repeats {bench.repeats} "
        f"(median, after one warm-up run){' — QUICK smoke run, small sizes' if bench.quick else ''}\n"
        f"- Load average (1/5/15 min) before: {loads[0]}; after: {loads[1]}\n\n"
        + "\n".join(rows)
        + "\n"
        + (f"\n{notes}" if notes else "")
    )


def write_report(path: Path, section: str, device: str) -> None:
    """Replace this device's section of ``path``; the notes above and other devices are kept."""
    head = "# Benchmarks\n\nWritten by `benchmarks/bench.py`.\n\n"
    sections: dict[str, str] = {}
    if path.exists():
        text = path.read_text()
        head, *chunks = text.split("\n## Device: ")
        head = head.rstrip() + "\n\n"
        for chunk in chunks:
            name = chunk.split("\n", 1)[0].strip()
            sections[name] = "## Device: " + chunk.rstrip() + "\n"
    sections[device] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n".join(sections[k] for k in sorted(sections)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repeat")
    parser.add_argument(
        "--runtimes",
        default="torch,onnxruntime,openvino",
        help="comma list of the runtimes the rt_* rows compare (default all three)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "camcli-bench"
    )
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown} (choose from {', '.join(ROWS)})")
    bench = Bench(args.device, 1 if args.quick else args.repeats, args.quick, args.workdir)
    bench.runtimes = tuple(r.strip() for r in args.runtimes.split(",") if r.strip())
    if not bench.runtimes or set(bench.runtimes) - {"torch", "onnxruntime", "openvino"}:
        parser.error(f"--runtimes {args.runtimes!r}: choose from torch, onnxruntime, openvino")
    args.workdir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(
        ["python", "benchmarks/bench.py", *(argv if argv is not None else sys.argv[1:])]
    )
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    before = load_average()
    clock = time.perf_counter()
    for name in rows:
        print(f"[{name}]", flush=True)
        try:
            globals()[f"row_{name}"](bench)
        except Exception as exc:  # one broken row must not lose the others
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            bench.add(name, "error", message.replace("|", "/"))
        # Written after every row, so an interrupted run still leaves what it measured.
        elapsed = time.perf_counter() - clock
        section = render(bench, command, (before, load_average()), started, elapsed)
        write_report(args.out, section, args.device)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
