"""captum's Occlusion on resnet50 against a plain batched occlusion: the reference side of the
``occlusion`` benchmark row (issue 24), and the profile that shows what bounds a
non-incremental occlusion.

    .venv/bin/python benchmarks/occlusion_profile.py captum --ppe 1,8,16,32,64
    .venv/bin/python benchmarks/occlusion_profile.py forward --batches 1,4,8,16,32,64
    .venv/bin/python benchmarks/occlusion_profile.py plain --batch 16

The model is torchvision's resnet50 with seeded random weights (``torch.manual_seed(0)``,
``weights=None``) in eval mode, NCHW fp32, as a user passes it to captum; the image is
--image resized to 224 px and ImageNet-normalised (default: random, seed 0); window 32,
stride 16, baseline 0 on all three channels (169 window positions, 13 x 13), target the
top-1 class of the unoccluded image.

- ``captum``: ``Occlusion(model).attribute(x, sliding_window_shapes=(3, 32, 32),
  strides=(3, 16, 16), baselines=0, target=top1, perturbations_per_eval=k)`` for each k, the
  wall time of the call (median of --repeats).
- ``forward``: the model's forward alone, NCHW fp32 under ``torch.no_grad()`` as captum runs
  it, per image at each batch size: captum's time is about 170 of these, so the fastest
  batch size here predicts captum's fastest ``perturbations_per_eval`` without a full sweep.
- ``plain``: occlusion written as a plain loop over batches of all 169 occluded images
  (channels-last, ``torch.inference_mode()``, batch norm folded into the convolutions with
  ``torch.fx``'s ``fuse``): the floor of any occlusion that recomputes every occluded image
  in full. Prints its time, time per forwarded image, and the map's largest difference from
  captum's (same formula: each pixel averages the score drops of the windows covering it).
- ``passes``: one forward pass at --batch images in captum's form (NCHW, ``no_grad``, batch
  norms separate) and in the plain loop's (channels-last, ``inference_mode``, folded),
  interleaved, medians of --repeats (at least 3): the per-pass gain, which bounds the whole
  ratio of a non-incremental occlusion over captum.

Each prints one JSON line per measurement on stdout. The model's first forward (for the
target) is the only warm-up: a captum call is 170 forwards, minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

WINDOW, STRIDE, SIZE = 32, 16, 224


def load_image(path: Path) -> torch.Tensor:
    """The image at 224 x 224, scaled to [0, 1] and ImageNet-normalised, 1 x 3 x H x W."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    array = ((array - mean) / std).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def model_and_image(image: Path | None = None):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    if image is not None:
        x = load_image(image)
    else:
        x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = int(model(x).argmax(1))
    return model, x, target


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def captum_map(model, x, target: int, ppe: int) -> torch.Tensor:
    from captum.attr import Occlusion

    return Occlusion(model).attribute(
        x,
        sliding_window_shapes=(3, WINDOW, WINDOW),
        strides=(3, STRIDE, STRIDE),
        baselines=0,
        target=target,
        perturbations_per_eval=ppe,
    )


def positions() -> list[int]:
    return list(range(0, SIZE - WINDOW + 1, STRIDE))


def occluded_batches(x: torch.Tensor, batch: int):
    """All occluded images (baseline 0 in the window), ``batch`` at a time, with positions."""
    spots = [(i, j) for i in positions() for j in positions()]
    for k in range(0, len(spots), batch):
        chunk = spots[k : k + batch]
        images = x.repeat(len(chunk), 1, 1, 1)
        for n, (i, j) in enumerate(chunk):
            images[n, :, i : i + WINDOW, j : j + WINDOW] = 0
        yield chunk, images


def fused(model):
    """Channels-last copy of ``model`` with each batch norm folded into its convolution."""
    import copy

    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)


def plain_map(model, x: torch.Tensor, target: int, batch: int) -> tuple[torch.Tensor, int]:
    """Occlusion as a plain batched loop; returns the map and the number of images forwarded."""
    forwarded = 1
    with torch.inference_mode():
        base = model(x.contiguous(memory_format=torch.channels_last))[0, target]
        total = torch.zeros(SIZE, SIZE, dtype=torch.float64)
        count = torch.zeros(SIZE, SIZE, dtype=torch.float64)
        for chunk, images in occluded_batches(x, batch):
            scores = model(images.contiguous(memory_format=torch.channels_last))[:, target]
            forwarded += len(chunk)
            for (i, j), score in zip(chunk, (base - scores).double().tolist(), strict=True):
                total[i : i + WINDOW, j : j + WINDOW] += score
                count[i : i + WINDOW, j : j + WINDOW] += 1
    return (total / count.clamp(min=1)).float(), forwarded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("captum", "forward", "plain", "passes"))
    parser.add_argument("--ppe", default="1,8,16,32,64", help="captum perturbations_per_eval")
    parser.add_argument("--batches", default="1,4,8,16,32,64", help="forward batch sizes")
    parser.add_argument("--batch", type=int, default=16, help="plain occlusion's batch size")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--image", type=Path, help="an image (default: random, seed 0)")
    parser.add_argument(
        "--compare-ppe", type=int, default=0,
        help="plain: also run captum at this ppe and report the map difference",
    )  # fmt: skip
    args = parser.parse_args(argv)
    model, x, target = model_and_image(args.image)
    windows = len(positions()) ** 2
    base = {"model": "resnet50", "window": WINDOW, "stride": STRIDE, "windows": windows,
            "threads": torch.get_num_threads(), "torch": torch.__version__}  # fmt: skip
    if args.what == "captum":
        from importlib.metadata import version

        for ppe in (int(v) for v in args.ppe.split(",")):
            seconds = timed(lambda ppe=ppe: captum_map(model, x, target, ppe), args.repeats)
            print(json.dumps({**base, "contender": "captum", "captum": version("captum"),
                              "ppe": ppe, "seconds": round(seconds, 3)}), flush=True)  # fmt: skip
    elif args.what == "forward":
        for b in (int(v) for v in args.batches.split(",")):
            images = torch.randn(b, 3, SIZE, SIZE)
            reps = max(args.repeats, -(-32 // b))  # at least 32 images per size

            def forward(images=images):
                with torch.no_grad():
                    model(images)

            forward()
            seconds = timed(forward, reps)
            print(json.dumps({**base, "contender": "forward NCHW no_grad", "batch": b,
                              "ms_per_image": round(1000 * seconds / b, 2),
                              "captum_estimate_s": round(seconds / b * (windows + 1), 1)}),
                  flush=True)  # fmt: skip
    elif args.what == "passes":
        fast = fused(model)
        images = torch.randn(args.batch, 3, SIZE, SIZE)
        last = images.contiguous(memory_format=torch.channels_last)

        def captum_pass():
            with torch.no_grad():
                model(images)

        def plain_pass():
            with torch.inference_mode():
                fast(last)

        captum_pass(), plain_pass()  # warm-up
        times: dict[str, list[float]] = {"captum": [], "plain": []}
        for _ in range(max(args.repeats, 3)):  # round-robin: drifts hit both alike
            for name, fn in (("captum", captum_pass), ("plain", plain_pass)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        ours, theirs = statistics.median(times["plain"]), statistics.median(times["captum"])
        print(json.dumps({**base, "contender": "one forward pass, interleaved",
                          "batch": args.batch, "captum_form_s": round(theirs, 3),
                          "plain_form_s": round(ours, 3), "ratio": round(theirs / ours, 3)}),
              flush=True)  # fmt: skip
    else:
        fast = fused(model)
        with torch.inference_mode():  # warm-up: one batch, not the whole map
            fast(x.repeat(args.batch, 1, 1, 1).contiguous(memory_format=torch.channels_last))
        start, cpu = time.perf_counter(), time.process_time()
        ours, forwarded = plain_map(fast, x, target, args.batch)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        record = {**base, "contender": "plain batched, channels-last, BN folded",
                  "batch": args.batch, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                  "ms_per_image": round(1000 * seconds / forwarded, 2)}  # fmt: skip
        if args.compare_ppe:
            with torch.no_grad():
                start, cpu = time.perf_counter(), time.process_time()
                ref = captum_map(model, x, target, args.compare_ppe)[0, 0]
                record["captum_seconds"] = round(time.perf_counter() - start, 3)
                record["captum_cpu_seconds"] = round(time.process_time() - cpu, 3)
            peak = float(ref.abs().max())
            record["max_diff_over_peak"] = float((ours - ref).abs().max()) / max(peak, 1e-12)
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
