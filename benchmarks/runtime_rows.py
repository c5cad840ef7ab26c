"""The ``--runtime`` rows of ``bench.py`` (issue 25): each comparison of issue 25's item 4 with
camcli on every runtime side by side, in one run, against the same reference.

- ``rt_run``: ``camcli run`` over 200 photos (resnet50, Grad-CAM, overlays), whole processes,
  against the decode + plain forward floor (``baseline_forward.py``); goal 1.5x its throughput.
- ``rt_evaluate``: Grad-CAM + deletion/insertion (``evaluate``'s library path, each run a
  fresh process, ``evaluate_interleaved.py``) against torchcam; goal 2x.
- ``rt_scorecam``: Score-CAM on resnet18, one image, in this process, against torchcam; goal 2x.
- ``rt_rise``: RISE on the known-answer resnet18 (``known_answer.py``), whole processes,
  against OpenVINO XAI's RISE (``reference_rise.py``) with as many masks (goal: as fast) and
  against camcli's ``--masks auto`` (goal: 4x OpenVINO XAI's default 5,000 masks).

Every runtime's ONNX export is made before anything is timed (a warm-up run fills the export
cache, ``$CAMCLI_CACHE_DIR``, a folder of the row's own under the work folder), so the timed
runs read the cached file, as every run after a user's first does. How long the export takes
once is measured apart (``export_seconds``: the runtime's set-up with an empty cache, less the
same with the file cached) and given as a line of its own.

Where the machine is too slow for the full sizes: ``$RT_EVALUATE_IMAGES`` (default 16, 4 with
``--quick``) and ``$RT_RISE_MASKS`` (default 1,000, 100 with ``--quick``, which also skips
``--masks auto``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import black_box_rows  # noqa: E402  (a sibling script, found through HERE)

#: The runtimes each row puts side by side (``bench.py --runtimes`` narrows them).
RUNTIMES = ("torch", "onnxruntime", "openvino")


@contextlib.contextmanager
def export_cache(folder: Path) -> Iterator[Path]:
    """``$CAMCLI_CACHE_DIR`` set to ``folder`` (emptied first) for this process and the
    processes it starts, restored afterwards."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    before = os.environ.get("CAMCLI_CACHE_DIR")
    os.environ["CAMCLI_CACHE_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("CAMCLI_CACHE_DIR", None)
        else:
            os.environ["CAMCLI_CACHE_DIR"] = before


def export_seconds(
    explainer: Any, batch_size: int, images: int | None = None, scored: bool = False
) -> tuple[float, float]:
    """(export, set-up) seconds of ``--runtime onnxruntime`` for ``explainer`` (built with
    ``runtime="onnxruntime"``): its ``use_runtime`` with an empty export cache less the same
    with the files cached (the set-up left: session, split). Uses a cache folder of its own,
    so the caller's stays as it was."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="camcli-export-") as tmp:
        before = os.environ.get("CAMCLI_CACHE_DIR")
        os.environ["CAMCLI_CACHE_DIR"] = tmp
        try:
            times = []
            for _ in range(2):
                start = time.perf_counter()
                offload = explainer.use_runtime(
                    batch_size, images=images, scored_passes=int(scored)
                )
                times.append(time.perf_counter() - start)
                if offload.runtime != "onnxruntime":
                    raise RuntimeError(f"onnxruntime did not serve: {offload.reason}")
        finally:
            if before is None:
                os.environ.pop("CAMCLI_CACHE_DIR", None)
            else:
                os.environ["CAMCLI_CACHE_DIR"] = before
    return times[0] - times[1], times[1]


def exported_parts(folder: Path) -> int:
    """How many ONNX files the export cache under ``folder`` holds."""
    return len(list((folder / "runtimes").glob("*.onnx")))


def _loaded(name: str, **options: Any) -> Any:
    import torch

    from camcli.models import load_model

    torch.manual_seed(0)
    options.setdefault("weights", "none")
    return load_model(name, device="cpu", progress=False, **options)


def _export_line(row: str, add: Callable[..., None], what: str, seconds: tuple[float, float]):
    export, setup = seconds
    add(row, f"ONNX export of {what}, once (cached; excluded from the times below)",
        f"{export:.1f} s (then {setup:.1f} s to open the session)")  # fmt: skip


# --- a. camcli run over 200 photos against the decode + forward floor -------------------------


def run_row(
    bench: Any,
    photos: Path,
    one: Path,
    runtimes: Sequence[str],
    run_process: Callable[[list[str]], tuple[float, int]],
) -> None:
    """``camcli run PHOTOS --runtime R`` (resnet50, Grad-CAM, overlays) for each runtime and
    ``baseline_forward.py`` on the same photos, whole processes, in turn each repeat (ABCD,
    DCBA, ...: a machine whose load drifts favours no one)."""
    from camcli.explain import Explainer

    count = len(list(photos.glob("*.jpg")))
    repeats = 1 if bench.quick else min(bench.repeats, 2)
    out = bench.workdir / "rt-out"
    add = bench.add

    def camcli(folder: Path, runtime: str) -> list[str]:
        return [*black_box_rows.camcli_cmd(), "run", str(folder), "-o", str(out), "--weights",
                "none", "-q", "--device", "cpu", "--no-skip-existing", "--runtime", runtime]  # fmt: skip

    floor = [sys.executable, str(HERE / "baseline_forward.py"), str(photos), "cpu"]
    explainer = Explainer(_loaded("resnet50"), "gradcam", runtime="onnxruntime")
    with export_cache(bench.workdir / "rt-cache-run") as cache:
        if any(r != "torch" for r in runtimes):
            _export_line("rt_run", add, "resnet50 up to layer4 (the part before the cut)",
                         export_seconds(explainer, 16, images=count))  # fmt: skip
        for runtime in runtimes:  # warm-up: one photo, which also exports into the cache
            run_process(camcli(one, runtime))
        commands = [floor, *(camcli(photos, r) for r in runtimes)]
        times: list[list[float]] = [[] for _ in commands]
        for repeat in range(repeats):  # in turn, the order reversed every other repeat
            pairs = list(zip(commands, times, strict=True))
            for command, bucket in pairs if repeat % 2 == 0 else pairs[::-1]:
                shutil.rmtree(out, ignore_errors=True)
                bucket.append(run_process(command)[0])
                if command is not floor and len(list(out.rglob("*.jpg"))) != count:
                    raise RuntimeError(f"{command[-1]}: camcli did not write {count} overlays")
        files = exported_parts(cache)
    shutil.rmtree(out, ignore_errors=True)
    import statistics

    t_floor, *t_runs = (statistics.median(b) for b in times)
    add("rt_run", f"floor: decode + transform + plain forward, batches of 16 ({count} photos)",
        f"{t_floor:.1f} s ({count / t_floor:.2f} img/s)")  # fmt: skip
    by_runtime = dict(zip(runtimes, t_runs, strict=True))
    for runtime, t in by_runtime.items():
        add("rt_run", f"camcli run --runtime {runtime}, {count} photos -> overlays",
            f"{t:.1f} s ({count / t:.2f} img/s)")  # fmt: skip
    for runtime, t in by_runtime.items():
        ratio = t_floor / t
        add("rt_run", f"--runtime {runtime}: camcli throughput / the floor's", f"{ratio:.2f}x",
            ">= 1.5x", ratio >= 1.5)  # fmt: skip
    if "torch" in by_runtime:
        for runtime, t in by_runtime.items():
            if runtime != "torch":
                add("rt_run", f"--runtime {runtime} / --runtime torch throughput",
                    f"{by_runtime['torch'] / t:.2f}x")  # fmt: skip
    add("rt_run", "ONNX files in the export cache after the row", str(files))


# --- b. evaluate's deletion + insertion against torchcam --------------------------------------


def evaluate_row(bench: Any, runtimes: Sequence[str]) -> None:
    """``evaluate_interleaved.py``'s torchcam against camcli on each runtime (fresh processes,
    taking turns); the exports are made by a one-image warm-up run of each runtime first."""
    from evaluate_interleaved import measure, run_worker

    # $RT_EVALUATE_IMAGES: fewer images where the machine is slow (the ratio is per pass).
    n, chunk = int(os.environ.get("RT_EVALUATE_IMAGES", 4 if bench.quick else 16)), 32
    repeats = 1 if bench.quick else min(bench.repeats, 2)
    names = {r: ("camcli" if r == "torch" else f"camcli-{r}") for r in runtimes}
    add = bench.add
    with export_cache(bench.workdir / "rt-cache-evaluate"):
        warm: dict[str, float] = {}
        for runtime, name in names.items():
            if runtime != "torch":  # the warm-up exports: the first run's set-up includes them
                warm[runtime] = run_worker(name, "resnet50", 1, chunk)["setup"]
        medians = measure("resnet50", n, repeats, chunk, ("torchcam", *names.values()))
    tag = f"resnet50 b{n}, 20 steps, chunks of {chunk}"
    if warm:  # the first runtime's warm-up exported; the others read its files
        runtime, setup = next(iter(warm.items()))
        cached = medians[names[runtime]]["setup"]
        add("rt_evaluate", "ONNX exports (whole model and up to layer4), once, shared by the "
            "runtimes (excluded below)", f"{setup - cached:.1f} s (--runtime {runtime} set-up "
            f"{setup:.1f} s cold, {cached:.1f} s cached)")  # fmt: skip
    t_tc = medians["torchcam"]["wall"]
    add("rt_evaluate", f"torchcam DeletionInsertionMetric + GradCAM ({tag})", f"{t_tc:.1f} s")
    for runtime, name in names.items():
        got = medians[name]
        add("rt_evaluate", f"camcli evaluate --runtime {runtime} (set-up included)",
            f"{got['wall']:.1f} s (CPU {got['cpu']:.1f} s)")  # fmt: skip
    for runtime, name in names.items():
        speedup = t_tc / medians[name]["wall"]
        add("rt_evaluate", f"--runtime {runtime}: speed-up over torchcam", f"{speedup:.2f}x",
            ">= 2x", speedup >= 2)  # fmt: skip
        cpu = medians["torchcam"]["cpu"] / medians[name]["cpu"]
        add("rt_evaluate", f"--runtime {runtime}: speed-up over torchcam in CPU time",
            f"{cpu:.2f}x")  # fmt: skip
    if "torch" in names:
        base = medians["camcli"]["insertion_auc"]
        for runtime, name in names.items():
            if runtime != "torch":
                gap = medians[name]["insertion_auc"] - base
                add("rt_evaluate", f"mean insertion AUC, --runtime {runtime} - torch",
                    f"{gap:+.1e}", "within 1e-3", abs(gap) <= 1e-3)  # fmt: skip


# --- c. Score-CAM against torchcam ------------------------------------------------------------


def scorecam_row(bench: Any, runtimes: Sequence[str]) -> None:
    """Score-CAM on resnet18, one 224 px image, in this process: torchcam's ``ScoreCAM`` and
    camcli's on each runtime (a model of its own each, the same seeded weights), in turn."""
    import torch
    from torchcam.methods import ScoreCAM

    from camcli.explain import Explainer
    from camcli.targets import Target

    add = bench.add
    plain = _loaded("resnet18").model.to(memory_format=torch.contiguous_format).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tc = ScoreCAM(plain, "layer4")

    def torchcam_step():
        with torch.inference_mode():
            scores = plain(x)
        return tc(class_idx=scores.argmax(1).tolist(), scores=scores)[0]

    top1 = [Target(rank=1)]
    with export_cache(bench.workdir / "rt-cache-scorecam"):
        if any(r != "torch" for r in runtimes):
            probe = Explainer(_loaded("resnet18"), "scorecam", runtime="onnxruntime")
            _export_line("rt_scorecam", add, "resnet18 (whole model and up to layer4)",
                         export_seconds(probe, 1, images=1))  # fmt: skip
        explainers = {}
        for runtime in runtimes:
            explainers[runtime] = Explainer(_loaded("resnet18"), "scorecam", runtime=runtime)
            explainers[runtime].use_runtime(1, images=1)  # exports into the row's cache
        # Score-CAM runs 512 masked forward passes: seconds to a minute a call on 2 cores.
        repeats = 1 if bench.quick else min(bench.repeats, 3)
        steps = [torchcam_step, *(lambda e=e: e.explain(x, top1) for e in explainers.values())]
        t_tc, *t_runs = bench.median_times(steps, repeats)
        maps = {r: e.explain(x, top1).maps for r, e in explainers.items()}
    tc.remove_hooks()
    add("rt_scorecam", "torchcam ScoreCAM (resnet18, 1 image)", f"{t_tc * 1000:.0f} ms")
    by_runtime = dict(zip(runtimes, t_runs, strict=True))
    for runtime, t in by_runtime.items():
        add("rt_scorecam", f"camcli Score-CAM --runtime {runtime}", f"{t * 1000:.0f} ms")
    for runtime, t in by_runtime.items():
        add("rt_scorecam", f"--runtime {runtime}: speed-up over torchcam", f"{t_tc / t:.2f}x",
            ">= 2x", t_tc / t >= 2)  # fmt: skip
    if "torch" in maps:
        for runtime, found in maps.items():
            if runtime != "torch":
                gap = float(np.abs(found - maps["torch"]).max())
                peak = float(np.abs(maps["torch"]).max()) or 1.0
                add("rt_scorecam", f"map --runtime {runtime} vs torch, largest difference / peak",
                    f"{gap / peak:.1e}", "<= 1e-3", gap / peak <= 1e-3)  # fmt: skip


# --- d. RISE against OpenVINO XAI ---------------------------------------------------------------


def known_answer_checkpoint(workdir: Path) -> tuple[Path, Path, Path, dict]:
    """The rise row's model (``black_box_rows.known_answer_model``: ONNX, picture, record) and
    the same model's state dict (``.pt``, for ``-m resnet18 --checkpoint``, so that camcli runs
    it in PyTorch and exports it itself). The state dict is rebuilt with the same seed when an
    older work folder lacks it, and must give the ONNX file's logits."""
    import torch

    onnx, image, record = black_box_rows.known_answer_model(workdir)
    checkpoint = workdir / "resnet18-squares.pt"
    if not checkpoint.exists():
        import known_answer
        import onnxruntime

        model, _accuracy = known_answer.build()
        pixels, _box = known_answer.picture()
        x = known_answer.to_tensor(pixels[None])
        with torch.inference_mode():
            ours = model(x).numpy()
        session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if np.abs(ours - theirs).max() > 1e-3 * np.abs(theirs).max():
            raise RuntimeError(f"the rebuilt model differs from {onnx.name}")
        torch.save(model.state_dict(), checkpoint)
    return checkpoint, onnx, image, record


def rise_row(bench: Any, runtimes: Sequence[str]) -> None:
    """OpenVINO XAI's RISE with N masks, then camcli ``--masks N`` and ``--masks auto`` on each
    runtime, whole processes one after the other; each camcli map's peak must lie inside the
    square. N = 1,000 (100 with ``--quick``, where ``auto`` is skipped: about 2,500 masks a
    runtime); OpenVINO XAI's time at its default 5,000 masks is extrapolated from its N-mask
    call (linear: one inference per mask) for the ``auto`` comparison."""
    add, workdir = bench.add, bench.workdir
    # $RT_RISE_MASKS: fewer masks where the machine is slow (OpenVINO XAI's time is linear).
    n = int(os.environ.get("RT_RISE_MASKS", 100 if bench.quick else 1000))
    default = 5000
    checkpoint, onnx, image, record = known_answer_checkpoint(workdir)
    box = record["box"]
    python = black_box_rows.OVXAI_PYTHON
    model = ["-m", "resnet18", "--checkpoint", str(checkpoint)]
    used: dict[tuple[str, str], str] = {}

    def camcli(masks: str, runtime: str) -> tuple[float, np.ndarray]:
        out = workdir / f"rt-rise-{masks}-{runtime}"
        cmd = [*black_box_rows.camcli_cmd(), "run", str(image), "-o", str(out), *model,
               *black_box_rows.ONNX_FLAGS, *black_box_rows.MASK_FLAGS, "--method", "rise",
               "--masks", masks, "--seed", "0", "-f", "npy", "-q", "--no-skip-existing",
               "--device", "cpu", "--runtime", runtime]  # fmt: skip
        wall, _ = black_box_rows.timed_run(cmd, cwd=workdir)
        used[(masks, runtime)] = black_box_rows.masks_used(out)
        return wall, black_box_rows.camcli_map(out)

    with export_cache(workdir / "rt-cache-rise"):
        if any(r != "torch" for r in runtimes):
            from camcli.explain import Explainer

            loaded = _loaded("resnet18", checkpoint=checkpoint, input_size=224, fit="stretch",
                             normalize="imagenet")  # fmt: skip
            probe = Explainer(loaded, "rise", runtime="onnxruntime", masks=n)
            _export_line("rt_rise", add, "the known-answer resnet18", export_seconds(probe, 1, 1))
        for runtime in runtimes:  # warm-up: exports into the row's cache
            camcli("32", runtime)
        if python.exists():
            cmd = [str(python), str(HERE / "reference_rise.py"), str(onnx), str(image),
                   "--masks", str(n), "--seed", "0", "--out", str(workdir / "rt-ovxai.npy")]  # fmt: skip
            t_ref, stdout = black_box_rows.timed_run(cmd, cwd=workdir)
            ref = black_box_rows.last_json(stdout)
        else:
            t_ref, ref = None, None
        timed = {r: camcli(str(n), r) for r in runtimes}
        auto = {} if bench.quick else {r: camcli("auto", r) for r in runtimes}
    if ref is None:
        add("rt_rise", f"OpenVINO XAI RISE, {n} masks", f"skipped: no interpreter at {python}")
    else:
        add("rt_rise", f"OpenVINO XAI {ref['version']} RISE, {n} masks (whole process)",
            f"{t_ref:.1f} s (call {ref['seconds']:.1f} s, {n / ref['seconds']:.1f} masks/s)")  # fmt: skip
    for runtime, (t, saliency) in timed.items():
        inside, (x, y) = black_box_rows.peak_in_box(saliency, box)
        add("rt_rise", f"camcli rise --masks {n} --runtime {runtime} (whole process)",
            f"{t:.1f} s ({n / t:.1f} masks/s; peak inside the square: {inside}, at {x},{y})")  # fmt: skip
    for runtime, (t, _map) in auto.items():
        masks = used[("auto", runtime)]
        add("rt_rise", f"camcli rise --masks auto --runtime {runtime} (whole process)",
            f"{t:.1f} s ({masks} masks)")  # fmt: skip
    if t_ref is None:
        return
    for runtime, (t, _map) in timed.items():
        add("rt_rise", f"--runtime {runtime}: OpenVINO XAI time / camcli time, {n} masks each",
            f"{t_ref / t:.2f}x", ">= 1x", t_ref / t >= 1)  # fmt: skip
    if auto:
        start = t_ref - ref["seconds"]
        t_default = start + default * ref["seconds"] / n
        add("rt_rise", f"OpenVINO XAI at its default {default:,} masks (extrapolated, linear)",
            f"{t_default:.0f} s")  # fmt: skip
        for runtime, (t, _map) in auto.items():
            add("rt_rise", f"--runtime {runtime}: OpenVINO XAI {default:,} masks / camcli auto",
                f"{t_default / t:.2f}x", ">= 4x", t_default / t >= 4)  # fmt: skip
