"""``camcli evaluate``'s deletion/insertion against torchcam, each run in its own process.

The ``evaluate`` row of ``bench.py``: Grad-CAM and then deletion and insertion with 20 steps
and the zero baseline on resnet50 (random weights), 32 perturbed images per forward, on the
same random 224 px images. Every run is a fresh process that builds the model and the
inputs, then times one cold call (wall time and the process's CPU time, which the other
tenants of a shared machine disturb much less, and the minor page faults); the contenders
take turns (ABC, CBA, ...) so that drifts of the machine hit them alike.

Each contender runs as it ships: camcli with its huge-page CPU allocation
(``camcli/startup.py``), torchcam with PyTorch's default allocation. ``torchcam-thp`` is
torchcam with the same allocation as camcli (``THP_MEM_ALLOC_ENABLE=1``), to show how much of
the difference is the allocation and how much is camcli's work.

    python benchmarks/evaluate_interleaved.py --images 16 --repeats 3
    python benchmarks/evaluate_interleaved.py --profile camcli --images 4   # where time goes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import MutableMapping

CONTENDERS = ("camcli", "torchcam", "torchcam-thp")
#: camcli with ``--runtime onnxruntime`` / ``openvino`` (the ``rt_evaluate`` row of bench.py);
#: their exports come from ``$CAMCLI_CACHE_DIR``, made by a warm-up run first.
RUNTIME_CONTENDERS = ("camcli-onnxruntime", "camcli-openvino")
STEPS = 20


def _usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def worker(name: str, model: str, n: int, chunk: int) -> dict[str, float]:
    """Build the model and ``n`` images, time one cold run of contender ``name``. For camcli
    on a runtime (``camcli-onnxruntime``), the timed run includes choosing it (the sessions;
    the export too unless it is cached), whose seconds are also returned as ``setup``."""
    from functools import partial
    from pathlib import Path, PurePosixPath

    import numpy as np
    import torch

    from camcli.explain import to_model_input
    from camcli.models import load_model

    torch.manual_seed(0)
    loaded = load_model(model, weights="none", device="cpu", progress=False)
    views = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    setup = None
    if name.startswith("camcli"):
        from camcli.config import ExplainSpec
        from camcli.evaluate.measure import Item, MethodResult, Settings, faithfulness
        from camcli.explain import Explainer
        from camcli.images import Box
        from camcli.sources import Source

        items = [
            Item(
                Source(Path(f"{i}.png"), PurePosixPath(f"{i}.png")),
                views[i],
                Box(0, 0, 224, 224),
                (224, 224),
            )
            for i in range(n)
        ]
        runtime = name.partition("-")[2] or "torch"
        explainer = Explainer(loaded, "gradcam", chunk_size=chunk, runtime=runtime)
        settings = Settings(
            families=("deletion",),
            steps=STEPS,
            batch_size=n,
            explain=ExplainSpec(chunk_size=chunk),
        )
        result = MethodResult("gradcam", explainer.layer_names)

        def run() -> float:
            nonlocal setup
            start = time.perf_counter()
            explainer.use_runtime(n, scored_passes=1)  # as `camcli evaluate --runtime` does
            setup = time.perf_counter() - start
            faithfulness(explainer, items, settings, result, None, None)
            return float(np.mean(result.values["insertion_auc"]))

    else:
        from torchcam.methods import GradCAM
        from torchcam.metrics import DeletionInsertionMetric

        # torchcam gets the model as torchvision builds it: NCHW (load_model made it channels-
        # last) and batch norms unfolded (the Explainer that folds them is never built here).
        tc_model = loaded.model.to(memory_format=torch.contiguous_format).eval()
        x = to_model_input(views, loaded).contiguous()
        metric = DeletionInsertionMetric(
            GradCAM(tc_model, "layer4"),
            partial(torch.softmax, dim=-1),
            steps=STEPS,
            batch_size=chunk,
        )

        def run() -> float:
            metric.update(x)
            return float(metric.summary()["insertion_auc"])

    cpu, faults = _usage()
    wall = time.perf_counter()
    auc = run()
    wall = time.perf_counter() - wall
    cpu, faults = _usage()[0] - cpu, _usage()[1] - faults
    found = {"wall": wall, "cpu": cpu, "faults": faults, "insertion_auc": auc}
    if setup is not None:
        found["setup"] = setup
    return found


# Each contender's THP_MEM_ALLOC_ENABLE: camcli its own default (unset), torchcam PyTorch's
# default (0, which camcli's import keeps), torchcam-thp camcli's.
ALLOCATION = {"camcli": None, "torchcam": "0", "torchcam-thp": "1"}
ALLOCATION.update(dict.fromkeys(RUNTIME_CONTENDERS))


def set_allocation(name: str, env: MutableMapping[str, str]) -> None:
    """Set contender ``name``'s allocation in ``env`` (before torch allocates anything)."""
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if ALLOCATION[name] is not None:
        env["THP_MEM_ALLOC_ENABLE"] = ALLOCATION[name]


def run_worker(name: str, model: str, n: int, chunk: int) -> dict[str, float]:
    """One contender's run in a fresh process, its allocation set as it ships."""
    env = dict(os.environ)
    set_allocation(name, env)
    argv = [sys.executable, __file__, "--worker", name, "--model", model]
    argv += ["--images", str(n), "--chunk", str(chunk)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(
    model: str = "resnet50",
    n: int = 16,
    repeats: int = 3,
    chunk: int = 32,
    contenders: tuple[str, ...] = CONTENDERS,
    echo: bool = True,
) -> dict[str, dict[str, float]]:
    """Median wall, CPU time and faults of each contender over ``repeats`` turns."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        order = contenders if repeat % 2 == 0 else tuple(reversed(contenders))
        for name in order:
            got = run_worker(name, model, n, chunk)
            runs[name].append(got)
            if echo:
                print(
                    f"  {name:13s} wall {got['wall']:7.1f} s   cpu {got['cpu']:7.1f} s   "
                    f"faults {got['faults']:>9.0f}   load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    return {
        name: {key: statistics.median(r[key] for r in got) for key in got[0]}
        for name, got in runs.items()
    }


def profile(name: str, model: str, n: int, chunk: int) -> None:
    """The operators that take the time of one run (model building included), in this process."""
    set_allocation(name, os.environ)
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        print(json.dumps(worker(name, model, n, chunk)))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--worker", choices=CONTENDERS + RUNTIME_CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        choices=CONTENDERS + RUNTIME_CONTENDERS,
        help="one run of this contender under torch.profiler",
    )
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.model, args.images, args.chunk)
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.images, args.chunk)))
        return
    contenders = tuple(args.contenders.split(","))
    print(f"{args.model}, {args.images} images, {STEPS} steps, chunks of {args.chunk}")
    medians = measure(args.model, args.images, args.repeats, args.chunk, contenders)
    ours = medians.get("camcli")
    for name, got in medians.items():
        line = f"median {name:13s} wall {got['wall']:7.1f} s   cpu {got['cpu']:7.1f} s"
        if ours and name != "camcli":
            line += (
                f"   camcli speed-up: wall {got['wall'] / ours['wall']:.2f}x, "
                f"cpu {got['cpu'] / ours['cpu']:.2f}x"
            )
        print(line)


if __name__ == "__main__":
    main()
