"""``--batch-size auto``: the largest batch that fits and pays, found at start-up.

Doubling from ``start``, each size is timed with the real method on a batch of that many
images (``probe(n)`` runs it once; the first call of each size also warms up, so it is run
twice and the second is timed). The search stops at the first size that runs out of memory,
whose throughput ``n / seconds`` is not ``gain`` times the previous size's, or past
``limit``; the answer is the last size that paid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from camcli.config import CPU_BATCH_SIZE
from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.models import is_out_of_memory
from camcli.targets import Target

AUTO = 0  # RunConfig.batch_size for ``--batch-size auto``


def find_batch_size(
    probe: Callable[[int], object],
    *,
    start: int = 16,
    limit: int = 512,
    gain: float = 1.1,
    clock: Callable[[], float] = time.perf_counter,
    on_out_of_memory: Callable[[], object] = lambda: None,
) -> int:
    """The batch size with the best measured throughput (see the module docstring).

    ``on_out_of_memory`` runs after a size fails for memory (``torch.cuda.empty_cache``), so
    the run starts with the memory the failed probe held given back. A size of ``start``
    that already fails for memory gives ``start``: the run then reports it per batch.
    """
    best, best_rate = start, 0.0
    size = start
    while size <= limit:
        try:
            probe(size)  # warm-up: kernels chosen, memory pools grown
            began = clock()
            probe(size)
            seconds = max(clock() - began, 1e-9)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            on_out_of_memory()
            break
        rate = size / seconds
        if rate < best_rate * gain:
            break  # a gain under ``gain`` does not pay for the memory
        best, best_rate = size, rate
        size *= 2
    return best


def parse_batch_size(text: str) -> int:
    """``--batch-size``: a positive number, or ``auto`` (``AUTO``)."""
    value = text.strip().lower()
    if value == "auto":
        return AUTO
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise UsageError(f"--batch-size {text!r}: use a number of images (1 or more) or auto")


def auto_batch_size(explainer: Explainer, targets: Sequence[Target]) -> int:
    """``--batch-size auto`` for this explainer: ``CPU_BATCH_SIZE`` off CUDA (no probing: a
    CPU pays little for bigger batches) and for black-box methods, else the size ``find_batch_size`` measures with the
    real model and method on random inputs."""
    loaded = explainer.loaded
    device = loaded.device
    if device.type != "cuda" or not explainer.method.needs_layer:
        # A black-box method explains the images one by one, its --chunk-size masked copies
        # at a time: the batch is not what fills the device (and probing costs N passes).
        return CPU_BATCH_SIZE
    size = loaded.preprocess.crop_size

    def probe(n: int) -> None:
        batch = torch.rand(n, 3, size, size, device=device)
        explainer.explain(batch, targets)  # its results come back to the host: synchronised

    return find_batch_size(probe, on_out_of_memory=torch.cuda.empty_cache)
