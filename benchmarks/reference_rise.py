"""OpenVINO XAI 1.1.0's RISE on an ONNX classifier and one image: the reference side of the
``rise`` benchmark row (issue 24). Runs in its own environment, never in camcli's: OpenVINO XAI
pins OpenVINO 2024.4 and numpy 1.26.

    uv venv -p 3.11 /work/envs/ovxai
    (cd /tmp && uv pip install -p /work/envs/ovxai openvino-xai==1.1.0)   # outside the repo:
    # camcli's pyproject constrains numpy to 2.x, which OpenVINO XAI 1.1.0 refuses
    /work/envs/ovxai/bin/python benchmarks/reference_rise.py model.onnx photo.jpg \
        --masks 5000 --seed 0 --out map.npy

The image is resized to the model's input size (224 px unless --size), scaled to [0, 1] and
normalised with the ImageNet mean and std, in NCHW float32 — the same input camcli builds with
``--input-size 224 --fit stretch`` and its ImageNet preset. OpenVINO XAI multiplies that
normalised input by each mask (so a masked pixel is the mean colour), runs one mask per
inference (``RISE._run_synchronous_explanation``) and sums score x mask. The class explained
is the model's top-1 on the unmasked image unless --target; its score is the softmax
probability (the paper's) unless --score logit. Only that one class's map is accumulated
(``targets=[class]``): with OpenVINO XAI's default ``targets=-1`` it would accumulate all
1000 classes' maps per mask, which is not what camcli or the paper's usage compute.

Prints one JSON line on stdout: library, version, masks, cells, p, seed, target, seconds
(the explain call alone: mask generation, inferences, accumulation), masks_per_s,
cpu_seconds (the process's CPU time in that call, all threads: steadier than wall time on a
shared machine),
load_seconds (read + compile the model), map_path. The map (H x W float32, unscaled sum as
OpenVINO XAI returns it with ``scale_output=False``) goes to --out as .npy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # its per-mask progress bar is not what we time

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_image(path: Path, size: int) -> np.ndarray:
    """The image as a 1 x 3 x size x size float32 array, ImageNet-normalised."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    array = (np.asarray(rgb, dtype=np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="ONNX (or OpenVINO IR .xml) classifier")
    parser.add_argument("image", type=Path)
    parser.add_argument("--masks", type=int, default=5000, help="default: OpenVINO XAI's 5000")
    parser.add_argument("--cells", type=int, default=8, help="default: OpenVINO XAI's 8")
    parser.add_argument("--p", type=float, default=0.5, help="probability a cell is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target", type=int, default=None, help="class (default: top-1)")
    parser.add_argument("--score", choices=("softmax", "logit"), default="softmax")
    parser.add_argument("--out", type=Path, default=Path("reference_rise.npy"))
    args = parser.parse_args(argv)

    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.explainer.explainer import ExplainMode

    data = load_image(args.image, args.size)
    squash = softmax if args.score == "softmax" else (lambda x: x)

    def postprocess(outputs) -> np.ndarray:
        return squash(np.asarray(outputs[0], dtype=np.float32))

    start = time.perf_counter()
    model = ov.Core().read_model(str(args.model))
    explainer = xai.Explainer(
        model=model,
        task=xai.Task.CLASSIFICATION,
        postprocess_fn=postprocess,
        explain_mode=ExplainMode.BLACKBOX,
        explain_method=xai.Method.RISE,
    )
    load_seconds = time.perf_counter() - start
    target = args.target
    if target is None:
        target = int(np.argmax(postprocess(explainer.model_forward(data, preprocess=False))))

    start, cpu = time.perf_counter(), time.process_time()
    explanation = explainer(
        data,
        targets=[target],
        resize=False,
        colormap=False,
        num_masks=args.masks,
        num_cells=args.cells,
        prob=args.p,
        seed=args.seed,
        scale_output=False,
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    saliency = np.asarray(explanation.saliency_map[target], dtype=np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, saliency)
    record = {
        "library": "openvino_xai",
        "version": version("openvino-xai"),
        "openvino": ov.__version__.split("-")[0],
        "masks": args.masks,
        "cells": args.cells,
        "p": args.p,
        "seed": args.seed,
        "target": target,
        "shape": list(saliency.shape),
        "seconds": round(seconds, 4),
        "masks_per_s": round(args.masks / seconds, 2),
        "cpu_seconds": round(cpu, 4),
        "load_seconds": round(load_seconds, 4),
        "map_path": str(args.out),
    }
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
