"""The black-box rows of ``bench.py`` (issue 24): ``rise`` (camcli against OpenVINO XAI 1.1.0's
RISE on a resnet18 ONNX export) and ``occlusion`` (camcli against captum 0.9's ``Occlusion`` on
resnet50). Every contender is a whole process of its own, run side by side in one call.

The references run outside camcli: OpenVINO XAI in its own environment
(``benchmarks/reference_rise.py``, interpreter from ``$OVXAI_PYTHON``, default
``/work/envs/ovxai/bin/python``), captum in camcli's (``benchmarks/occlusion_profile.py``).
A contender that cannot run here (camcli without the flags the row needs, OpenVINO XAI not
installed) turns its lines into "skipped: why" and the others go on.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
OVXAI_PYTHON = Path(os.environ.get("OVXAI_PYTHON", "/work/envs/ovxai/bin/python"))
# captum's fastest perturbations_per_eval for this row on the 2-core CPU (occlusion_profile.py
# forward/captum sweeps, docs/benchmarks.md); override with $CAPTUM_PPE on another machine.
CAPTUM_PPE = int(os.environ.get("CAPTUM_PPE", "32"))
# How camcli is told to preprocess the ONNX export like the reference (224 px, ImageNet
# mean/std, the image already 224 x 224 so crop and stretch agree).
ONNX_FLAGS = ("--input-size", "224", "--fit", "stretch", "--normalize", "imagenet")
# OpenVINO XAI's RISE defaults (8 cells a side, p 0.5), so both sample the same kind of masks.
MASK_FLAGS = ("--mask-cells", "8", "--mask-p", "0.5")

Add = Callable[..., None]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def camcli_cmd() -> list[str]:
    """``$CAMCLI`` (a command line, e.g. another build's ``python -m camcli``), or this one's."""
    if os.environ.get("CAMCLI"):
        return shlex.split(os.environ["CAMCLI"])
    script = Path(sys.executable).parent / "camcli"
    return [str(script)] if script.exists() else [sys.executable, "-m", "camcli"]


def timed_run(cmd: list[str], cwd: Path | None = None) -> tuple[float, str]:
    """Wall time and stdout of one process, which must succeed. camcli runs with ``cwd`` the
    work folder, so a ``python -m camcli`` in $CAMCLI finds the build on its path, not the
    repository's own ``camcli/`` from the current folder."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()[-400:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {err}")
    return elapsed, proc.stdout


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON line in {stdout[-200:]!r}")
    return json.loads(lines[-1])


def camcli_missing(*flags: str, method: str, cwd: Path | None = None) -> str | None:
    """Why this camcli cannot run the row (a flag or the method it lacks), or None."""
    text = subprocess.run(
        [*camcli_cmd(), "run", "--help"], env=_env(), cwd=cwd, capture_output=True, text=True
    ).stdout
    absent = [f for f in flags if f not in text]
    if absent:
        return f"camcli run has no {', '.join(absent)} on this branch"
    listed = subprocess.run(
        [*camcli_cmd(), "methods"], env=_env(), cwd=cwd, capture_output=True, text=True
    ).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    if method not in names:
        return f"camcli methods does not list {method} on this branch"
    return None


def image_224(workdir: Path) -> Path:
    """sample_images/cat.jpg resized to 224 x 224 (PNG, lossless): every contender sees it as is."""
    from PIL import Image

    path = workdir / "cat224.png"
    if not path.exists():
        with Image.open(ROOT / "sample_images" / "cat.jpg") as photo:
            photo.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR).save(path)
    return path


def _export(model, path: Path) -> None:
    import torch

    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)  # fmt: skip


def known_answer_model(workdir: Path) -> tuple[Path, Path, dict]:
    """The rise row's model and picture (``known_answer.py``): resnet18 with a seeded random
    backbone and an ``fc`` trained to name the colour of a square, as ONNX (dynamic batch),
    the picture as PNG, and a record of the build (seconds, held-out accuracy, the square's
    box, the model's top-1 class and probability on the picture). Built once per workdir."""
    from PIL import Image

    onnx, image, meta = (workdir / f"resnet18-squares.{ext}" for ext in ("onnx", "png", "json"))
    if onnx.exists() and image.exists() and meta.exists():
        return onnx, image, json.loads(meta.read_text())
    import known_answer
    import torch

    start, cpu = time.perf_counter(), time.process_time()
    model, accuracy = known_answer.build()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    pixels, box = known_answer.picture()
    Image.fromarray(pixels).save(image)
    with torch.inference_mode():
        probs = model(known_answer.to_tensor(pixels[None])).softmax(1)[0]
    _export(model, onnx)
    record = {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
              "accuracy": round(accuracy, 4), "box": list(box), "top1": int(probs.argmax()),
              "top1_p": round(float(probs.max()), 4)}  # fmt: skip
    meta.write_text(json.dumps(record))
    return onnx, image, record


def peak_in_box(saliency: np.ndarray, box: list[int]) -> tuple[bool, tuple[int, int]]:
    """Whether the map's maximum lies inside the square (x0, y0, x1, y1), and where (x, y)."""
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    x0, y0, x1, y1 = box
    return bool(x0 <= x < x1 and y0 <= y < y1), (int(x), int(y))


def camcli_map(out: Path) -> np.ndarray:
    maps = sorted(out.rglob("*.npy"))
    if len(maps) != 1:
        raise RuntimeError(f"expected one .npy map under {out}, found {len(maps)}")
    return np.load(maps[0]).astype(np.float64).squeeze()


def masks_used(out: Path) -> str:
    """The ``masks`` count camcli's manifest records for the one image, or "?"."""
    try:
        record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return "?"
    return str(record.get("masks", "?"))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def rise(add: Add, workdir: Path, quick: bool) -> None:
    """resnet18 with a known answer (ONNX), one 224 px picture of a green square: camcli
    --masks N and --masks auto against OpenVINO XAI's RISE, interleaved (reference, camcli N,
    camcli auto, twice; once with --quick), then camcli's --masks FULL maps of seeds 0 and 1."""
    n = 500 if quick else 5000
    full = 800 if quick else 8000
    rounds = 1  # 2 interleaves reference and camcli twice; one run took ~25 min here
    flags = ("--masks", "--mask-cells", "--mask-p", "--seed", "--normalize")
    why_cam = camcli_missing(*flags, method="rise", cwd=workdir)
    why_ref = None if OVXAI_PYTHON.exists() else f"no OpenVINO XAI interpreter at {OVXAI_PYTHON}"
    onnx, image, model = known_answer_model(workdir)
    box = model["box"]
    add("rise", "known-answer resnet18: fc trained on frozen random features (build)",
        f"{model['seconds']:.0f} s ({model['cpu_seconds']:.0f} s CPU), held-out accuracy "
        f"{model['accuracy']:.3f}")  # fmt: skip
    add("rise", f"top-1 on the picture (square at x0,y0,x1,y1 = {tuple(box)})",
        f"class {model['top1']}, p {model['top1_p']:.4f} (chance 0.333)")  # fmt: skip
    used: dict[str, str] = {}

    def camcli(masks: str, seed: int = 0) -> tuple[float, np.ndarray]:
        out = workdir / f"rise-{masks}-{seed}"
        cmd = [*camcli_cmd(), "run", str(image), "-o", str(out), "-m", str(onnx), *ONNX_FLAGS,
               *MASK_FLAGS, "--method", "rise", "--masks", masks, "--seed", str(seed),
               "-f", "npy", "-q", "--no-skip-existing", "--device", "cpu"]  # fmt: skip
        wall, _ = timed_run(cmd, cwd=workdir)
        used[masks] = masks_used(out)
        return wall, camcli_map(out)

    def reference() -> tuple[float, dict]:
        cmd = [str(OVXAI_PYTHON), str(HERE / "reference_rise.py"), str(onnx), str(image),
               "--masks", str(n), "--seed", "0", "--out", str(workdir / "ovxai.npy")]  # fmt: skip
        wall, stdout = timed_run(cmd, cwd=workdir)  # outside the repo's pyproject
        return wall, last_json(stdout)

    ref_walls: list[float] = []
    ref_calls: list[float] = []
    n_walls: list[float] = []
    auto_walls: list[float] = []
    ref = map_n = map_auto = None
    for _ in range(rounds):
        if why_ref is None:
            wall, ref = reference()
            ref_walls.append(wall)
            ref_calls.append(ref["seconds"])
        if why_cam is None:
            wall, map_n = camcli(str(n))
            n_walls.append(wall)
            wall, map_auto = camcli("auto")
            auto_walls.append(wall)

    def times(walls: list[float]) -> str:
        return ", ".join(f"{w:.1f}" for w in walls) + " s"

    if ref is not None:
        add("rise", f"OpenVINO XAI {ref['version']} RISE, {n} masks (whole process)",
            times(ref_walls))  # fmt: skip
        add("rise", "OpenVINO XAI RISE, in the explain call",
            f"{n / min(ref_calls):.1f} masks/s ({times(ref_calls)})")  # fmt: skip
    else:
        add("rise", f"OpenVINO XAI RISE, {n} masks", f"skipped: {why_ref}")
    if why_cam is not None:
        for what, target in (
            (f"camcli rise --masks {n} (whole process)", ""),
            ("camcli rise --masks auto (whole process)", ""),
            ("OpenVINO XAI time / camcli --masks auto time", ">= 2x"),
            (f"Pearson r, --masks auto map vs --masks {full} map (seed 1)", ">= 0.98"),
        ):
            add("rise", what, f"skipped: {why_cam}", target)  # fmt: skip
        return
    t_n, t_auto = min(n_walls), min(auto_walls)
    add("rise", f"camcli rise --masks {n} (whole process)",
        f"{times(n_walls)} ({n / t_n:.1f} masks/s, whole process)")  # fmt: skip
    auto_masks = int(used["auto"]) if used["auto"].isdigit() else 0
    add("rise", "camcli rise --masks auto (whole process)",
        f"{times(auto_walls)} ({used['auto']} masks, {auto_masks / t_auto:.1f} masks/s)")  # fmt: skip
    maps_full = {seed: camcli(str(full), seed=seed)[1] for seed in (0, 1)}
    for seed, label in ((1, "other masks"), (0, "same seed: auto's masks are a prefix")):
        r = pearson(map_auto, maps_full[seed])
        what = f"Pearson r, --masks auto map vs --masks {full} map (seed {seed}, {label})"
        add("rise", what, f"{r:.4f}", ">= 0.98", r >= 0.98)
    for name, saliency in (
        (f"camcli --masks {full}", maps_full[1]),
        ("camcli --masks auto", map_auto),
        (f"camcli --masks {n}", map_n),
        (f"OpenVINO XAI {n} masks", None if ref is None else np.load(workdir / "ovxai.npy")),
    ):
        if saliency is not None:
            inside, (x, y) = peak_in_box(saliency.squeeze(), box)
            add("rise", f"{name}: map's peak inside the square", f"{inside} (at x {x}, y {y})",
                "True", inside)  # fmt: skip
    if ref is None:
        return
    t_ref = min(ref_walls)
    add("rise", f"camcli / OpenVINO XAI, {n} masks each (whole processes, best of each)",
        f"{t_ref / t_n:.2f}x")  # fmt: skip
    speedup = t_ref / t_auto
    add("rise", f"OpenVINO XAI ({n} masks) time / camcli --masks auto time (best of each)",
        f"{speedup:.2f}x", ">= 2x", speedup >= 2)  # fmt: skip
    theirs = np.load(workdir / "ovxai.npy").astype(np.float64)
    if theirs.shape == map_n.shape:  # different masks: agreement, not equality
        add("rise", f"Pearson r, camcli vs OpenVINO XAI map ({n} masks each)",
            f"{pearson(theirs, map_n):.3f}")  # fmt: skip


def occlusion(add: Add, workdir: Path, quick: bool) -> None:
    """resnet50, window 32 stride 16, one 224 px image: camcli against captum's Occlusion."""
    image = image_224(workdir)
    profile = [sys.executable, str(HERE / "occlusion_profile.py")]
    wall_captum, stdout = timed_run([*profile, "captum", "--ppe", str(CAPTUM_PPE),
                                     "--image", str(image)])  # fmt: skip
    captum = last_json(stdout)
    what = f"captum {captum['captum']} Occlusion, perturbations_per_eval={CAPTUM_PPE}"
    value = f"{wall_captum:.1f} s (call {captum['seconds']:.1f} s)"
    add("occlusion", f"{what} (whole process)", value)
    if not quick:
        _w, stdout = timed_run([*profile, "plain", "--batch", str(CAPTUM_PPE),
                                "--image", str(image)])  # fmt: skip
        plain = last_json(stdout)
        what = f"plain batched occlusion, channels-last, BN folded, b{CAPTUM_PPE} (the call)"
        value = f"{plain['seconds']:.1f} s ({plain['ms_per_image']:.0f} ms/image)"
        add("occlusion", what, value)
        add("occlusion", "captum call / plain batched call",
            f"{captum['seconds'] / plain['seconds']:.2f}x")  # fmt: skip
    why = camcli_missing("--window", "--stride", method="occlusion", cwd=workdir)
    if why is not None:
        add("occlusion", "camcli occlusion --window 32 --stride 16 (whole process)",
            f"skipped: {why}")  # fmt: skip
        add("occlusion", "captum time / camcli time", f"skipped: {why}", ">= 3x")
        return
    out = workdir / "occlusion"
    cmd = [*camcli_cmd(), "run", str(image), "-o", str(out), "-m", "resnet50", "--weights",
           "none", "--input-size", "224", "--fit", "stretch", "--method", "occlusion",
           "--window", "32", "--stride", "16", "-f", "npy", "-q", "--no-skip-existing",
           "--device", "cpu"]  # fmt: skip
    wall, _ = timed_run(cmd, cwd=workdir)
    camcli_map(out)
    add("occlusion", "camcli occlusion --window 32 --stride 16 (whole process)", f"{wall:.1f} s")
    speedup = wall_captum / wall
    add("occlusion", "captum time / camcli time (whole processes)", f"{speedup:.2f}x", ">= 3x",
        speedup >= 3)  # fmt: skip
