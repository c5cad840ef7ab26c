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


def export_resnet18(workdir: Path) -> Path:
    """torchvision resnet18 (seed 0, random weights) as ONNX with a dynamic batch."""
    import torch
    import torchvision

    path = workdir / "resnet18.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)  # fmt: skip
    return path


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
    """resnet18 ONNX, one 224 px image: camcli --masks N and --masks auto against OpenVINO XAI."""
    n = 500 if quick else 5000
    full = 800 if quick else 8000
    flags = ("--masks", "--mask-cells", "--mask-p", "--seed", "--normalize")
    why_cam = camcli_missing(*flags, method="rise", cwd=workdir)
    why_ref = None if OVXAI_PYTHON.exists() else f"no OpenVINO XAI interpreter at {OVXAI_PYTHON}"
    onnx = export_resnet18(workdir)
    image = image_224(workdir)
    ref_wall = ref = None
    if why_ref is None:
        cmd = [str(OVXAI_PYTHON), str(HERE / "reference_rise.py"), str(onnx), str(image),
               "--masks", str(n), "--seed", "0", "--out", str(workdir / "ovxai.npy")]  # fmt: skip
        ref_wall, stdout = timed_run(cmd, cwd=workdir)  # outside the repo's pyproject
        ref = last_json(stdout)
        add("rise", f"OpenVINO XAI {ref['version']} RISE, {n} masks (whole process)",
            f"{ref_wall:.1f} s")  # fmt: skip
        add("rise", "OpenVINO XAI RISE, in the explain call",
            f"{ref['masks_per_s']:.1f} masks/s ({ref['seconds']:.1f} s)")  # fmt: skip
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

    def camcli(masks: str, seed: int = 0) -> tuple[float, np.ndarray]:
        out = workdir / f"rise-{masks}-{seed}"
        cmd = [*camcli_cmd(), "run", str(image), "-o", str(out), "-m", str(onnx), *ONNX_FLAGS,
               *MASK_FLAGS, "--method", "rise", "--masks", masks, "--seed", str(seed),
               "-f", "npy", "-q", "--no-skip-existing", "--device", "cpu"]  # fmt: skip
        wall, _ = timed_run(cmd, cwd=workdir)
        used[masks] = masks_used(out)
        return wall, camcli_map(out)

    used: dict[str, str] = {}
    t_n, map_n = camcli(str(n))
    t_auto, map_auto = camcli("auto")
    # The reference map from other masks (seed 1): agreement with it is convergence, not
    # the auto map's masks being a prefix of the same stream.
    _t_full, map_full = camcli(str(full), seed=1)
    add("rise", f"camcli rise --masks {n} (whole process)",
        f"{t_n:.1f} s ({n / t_n:.1f} masks/s)")  # fmt: skip
    add("rise", "camcli rise --masks auto (whole process)",
        f"{t_auto:.1f} s ({used['auto']} masks)")  # fmt: skip
    r = pearson(map_auto, map_full)
    what = f"Pearson r, --masks auto map vs --masks {full} map (seed 1)"
    add("rise", what, f"{r:.4f}", ">= 0.98", r >= 0.98)
    if ref_wall is None:
        return
    add("rise", f"camcli / OpenVINO XAI, {n} masks each (whole process)",
        f"{ref_wall / t_n:.2f}x")  # fmt: skip
    speedup = ref_wall / t_auto
    add("rise", f"OpenVINO XAI ({n} masks) time / camcli --masks auto time", f"{speedup:.2f}x",
        ">= 2x", speedup >= 2)  # fmt: skip
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
