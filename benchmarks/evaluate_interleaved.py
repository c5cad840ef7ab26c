"""``camcli evaluate``'s deletion/insertion against torchcam, interleaved, wall and CPU time.

The ``evaluate`` row of ``bench.py`` on a shared machine: camcli and torchcam alternate
(ABBA...), each run reports its wall time and the process's CPU time (user + system), which
the other tenants of a loaded machine disturb much less than the wall time.

    python benchmarks/evaluate_interleaved.py --model resnet50 --images 4 --repeats 2
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import time
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import torch


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()

    from torchcam.methods import GradCAM as TcGradCAM
    from torchcam.metrics import DeletionInsertionMetric

    from camcli.evaluate.runner import Item, MethodResult, Settings, faithfulness
    from camcli.explain import Explainer, to_model_input
    from camcli.images import Box
    from camcli.models import load_model
    from camcli.sources import Source

    torch.manual_seed(0)
    loaded = load_model(args.model, weights="none", device="cpu", progress=False)
    # torchcam gets the model in its default form (NCHW, batch norms unfolded).
    tc_model = copy.deepcopy(loaded.model).to(memory_format=torch.contiguous_format).eval()
    n, chunk = args.images, args.chunk
    views = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    x = to_model_input(views, loaded)
    items = [
        Item(
            Source(Path(f"{i}.png"), PurePosixPath(f"{i}.png")),
            views[i],
            Box(0, 0, 224, 224),
            (224, 224),
        )
        for i in range(n)
    ]
    explainer = Explainer(loaded, "gradcam", chunk_size=chunk)
    settings = Settings(families=("deletion",), steps=20, batch_size=n, chunk_size=chunk)
    metric = DeletionInsertionMetric(
        TcGradCAM(tc_model, "layer4"), partial(torch.softmax, dim=-1), steps=20, batch_size=chunk
    )

    def camcli() -> None:
        faithfulness(explainer, items, settings, MethodResult("gradcam", ["layer4"]), None, None)

    def torchcam() -> None:
        metric.reset()
        metric.update(x)

    contenders = {"camcli": camcli, "torchcam": torchcam}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    print(f"{args.model}, {n} images, 20 steps, chunks of {chunk}; load {os.getloadavg()}")
    for repeat in range(args.repeats):
        order = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
        for name in order:
            wall, cpu = time.perf_counter(), _cpu()
            contenders[name]()
            wall, cpu = time.perf_counter() - wall, _cpu() - cpu
            times[name].append((wall, cpu))
            print(f"  {name:9s} wall {wall:7.1f} s   cpu {cpu:7.1f} s", flush=True)
    ours, theirs = np.median(times["camcli"], axis=0), np.median(times["torchcam"], axis=0)
    print(
        f"medians: camcli wall {ours[0]:.1f} s cpu {ours[1]:.1f} s; torchcam wall "
        f"{theirs[0]:.1f} s cpu {theirs[1]:.1f} s; speed-up wall {theirs[0] / ours[0]:.2f}x, "
        f"cpu {theirs[1] / ours[1]:.2f}x; load {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
