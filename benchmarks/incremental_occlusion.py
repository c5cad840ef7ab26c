"""How much could occlusion on resnet50 gain by recomputing, in each layer, only the part of the
feature map that the occluding window changes (incremental inference over receptive fields,
as Krypton: Nakandala et al., SIGMOD 2019)? An upper-bound estimate, not an implementation.

    .venv/bin/python benchmarks/incremental_occlusion.py --batch 16

For window 32 and stride 16 on a 224 px image (169 positions), the script runs the unoccluded
image and the image occluded at each of the 13 diagonal positions (i, i), and for every call of
every leaf module (convolution, batch norm, ReLU, pooling, linear) records the bounding box of
the output elements that differ from the unoccluded run: its rows depend on the window's row,
its columns on the window's column, so the 13 runs give the changed fraction of every call at
all 169 positions (the product of the row and column fractions, averaged over positions).

Two estimates of the speed-up of an incremental occlusion over recomputing every occluded
image in full (both ignore the cost of copying patches in and out, so both are upper bounds):

- FLOPs: the convolutions' and the linear layer's multiply-adds, each scaled by its changed
  fraction, against the full count.
- time: each call's measured time in a forward pass at --batch images (pre/post hooks, median
  of --repeats, NCHW fp32, ``torch.inference_mode()``), scaled by its changed fraction; the
  time outside the hooked modules (residual additions, flatten) counted in full.

Each is also given for an incremental computation that stops after a stage (the stem,
layer1 ... layer4) and recomputes the rest in full, the way Krypton switches back to full
inference once the changed region covers most of the map. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

WINDOW, STRIDE, SIZE = 32, 16, 224
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


def stage_of(name: str) -> str:
    top = name.split(".")[0]
    if top.startswith("layer"):
        return top
    return "head" if top in ("avgpool", "fc") else "stem"


def leaf_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(module name, module, output) of every leaf-module call, in call order."""
    calls: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(
                lambda m, _i, out, name=name: calls.append((name, m, out.detach().clone()))
            ))  # fmt: skip
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def extent(diff: torch.Tensor, dim: int) -> float:
    """Fraction of rows (dim=2) or columns (dim=3) that hold a changed element."""
    if diff.dim() != 4:
        return 1.0
    other = 3 if dim == 2 else 2
    changed = diff.amax(dim=(0, 1, other)) > 0
    idx = torch.nonzero(changed).flatten()
    if idx.numel() == 0:
        return 0.0
    return float(idx[-1] - idx[0] + 1) / changed.numel()


def call_times(model: nn.Module, batch: int, repeats: int) -> tuple[list[float], float]:
    """Median time of every leaf-module call, and of the whole forward, at ``batch`` images."""
    pending: list[float] = []
    elapsed: list[float] = []
    per_call: list[list[float]] = []
    handles = []
    for module in model.modules():
        if not list(module.children()):
            handles.append(module.register_forward_pre_hook(
                lambda _m, _i: pending.append(time.perf_counter())))  # fmt: skip
            handles.append(module.register_forward_hook(
                lambda _m, _i, _o: elapsed.append(time.perf_counter() - pending.pop())
            ))  # fmt: skip
    images = torch.randn(batch, 3, SIZE, SIZE)
    totals = []
    with torch.inference_mode():
        model(images)  # warm-up
        for _ in range(repeats):
            elapsed.clear()
            start = time.perf_counter()
            model(images)
            totals.append(time.perf_counter() - start)
            per_call.append(list(elapsed))
    for h in handles:
        h.remove()
    return [statistics.median(c) for c in zip(*per_call, strict=True)], statistics.median(totals)


def flops(module: nn.Module, out: torch.Tensor) -> float:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return 2.0 * out[0].numel() * module.in_channels // module.groups * kh * kw
    if isinstance(module, nn.Linear):
        return 2.0 * module.in_features * module.out_features
    return 0.0


def main(argv: list[str] | None = None) -> int:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="batch size for the call times")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    base = leaf_calls(model, x)
    spots = list(range(0, SIZE - WINDOW + 1, STRIDE))
    rows = [[0.0] * len(spots) for _ in base]
    cols = [[0.0] * len(spots) for _ in base]
    for k, i in enumerate(spots):
        occluded = x.clone()
        occluded[:, :, i : i + WINDOW, i : i + WINDOW] = 0
        for n, ((_, _, ref), (_, _, out)) in enumerate(
            zip(base, leaf_calls(model, occluded), strict=True)
        ):
            diff = (out - ref).abs()
            rows[n][k], cols[n][k] = extent(diff, 2), extent(diff, 3)
    # Mean over the 169 positions of row fraction x column fraction.
    fraction = [statistics.fmean(r) * statistics.fmean(c) for r, c in zip(rows, cols, strict=True)]
    times, total = call_times(model, args.batch, args.repeats)
    outside = max(total - sum(times), 0.0)
    full_flops = sum(flops(m, out) for _, m, out in base)
    result = {
        "model": "resnet50", "window": WINDOW, "stride": STRIDE, "positions": len(spots) ** 2,
        "batch": args.batch, "threads": torch.get_num_threads(),
        "forward_ms_per_image": round(1000 * total / args.batch, 2),
        "outside_hooks_share": round(outside / total, 3),
        "changed_fraction_by_stage": {}, "stop_after": {},
    }  # fmt: skip
    for stage in STAGES:
        picked = [n for n, (name, _, _) in enumerate(base) if stage_of(name) == stage]
        if picked:
            weights = [flops(base[n][1], base[n][2]) or 1.0 for n in picked]
            mean = sum(fraction[n] * w for n, w in zip(picked, weights, strict=True))
            result["changed_fraction_by_stage"][stage] = round(mean / sum(weights), 4)
    for cut, stage in enumerate(STAGES):
        inc = set(STAGES[: cut + 1])
        frac = [f if stage_of(base[n][0]) in inc else 1.0 for n, f in enumerate(fraction)]
        inc_flops = sum(flops(m, out) * f for (_, m, out), f in zip(base, frac, strict=True))
        inc_time = sum(t * f for t, f in zip(times, frac, strict=True)) + outside
        result["stop_after"][stage] = {
            "flops_speedup": round(full_flops / inc_flops, 2),
            "time_speedup": round(total / inc_time, 2),
        }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
