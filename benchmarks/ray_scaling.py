"""Throughput of ``camcli run --engine ray`` with 1, 2 and 4 actors, and of the local engine.

One local Ray instance is started once (its start-up, tens of seconds, is not counted); each
run is the whole ``run_images`` call: the driver's model and checks, the actors' start (each
builds its model), reading, explaining and writing every image, the manifest.

    python benchmarks/ray_scaling.py                     # 500 images, resnet18, CPU
    python benchmarks/ray_scaling.py --images 50 --actors 1,2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` noisy 320 x 240 JPEGs (the decode and resize cost of small photos)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--actors", default="1,2,4")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-local", action="store_true", help="skip the local engine row")
    args = parser.parse_args()

    import ray

    from camcli.config import ExplainSpec, ModelSpec, RunConfig
    from camcli.engines.ray import RayOptions
    from camcli.errors import EXIT_OK, EXIT_SOME_FAILED
    from camcli.run import run_images

    counts = [int(n) for n in args.actors.split(",")]
    work = Path(tempfile.mkdtemp(prefix="camcli-ray-bench-"))
    make_images(work / "in", args.images)
    ray.init(num_cpus=max(counts) + 1, include_dashboard=False, log_to_driver=False,
             _system_config={"enable_metrics_collection": False})  # fmt: skip
    rows = []

    def timed(name: str, engine: str, options: RayOptions | None) -> None:
        out = work / f"out-{name}"
        config = RunConfig(out=out, formats=("jpg",), batch_size=args.batch_size)
        start = time.perf_counter()
        model = ModelSpec(args.model, weights="none", device="cpu")
        result = run_images([str(work / "in")], model, ExplainSpec(), config, engine=engine,
                            ray=options)  # fmt: skip
        code = EXIT_SOME_FAILED if result.summary.failed else EXIT_OK
        seconds = time.perf_counter() - start
        rows.append((name, seconds, args.images / seconds, code))
        print(f"{name}: {seconds:.1f} s, {args.images / seconds:.1f} images/s (exit {code})",
              flush=True)  # fmt: skip

    for n in counts:
        timed(f"ray, {n} actor{'s' if n > 1 else ''}", "ray", RayOptions(actors=n))
    if not args.no_local:
        timed("local engine", "local", None)
    ray.shutdown()
    print()
    print(f"{args.images} images (320 x 240 JPEG), {args.model} --weights none, Grad-CAM, -f jpg, "
          f"-b {args.batch_size}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")  # fmt: skip
    print("| run | wall time | images/s |")
    print("|---|---|---|")
    for name, seconds, rate, _ in rows:
        print(f"| {name} | {seconds:.1f} s | {rate:.1f} |")


if __name__ == "__main__":
    main()
