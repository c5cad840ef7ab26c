"""Out-of-memory detection and the pre-check that refuses what cannot fit, before allocating."""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch
from torch import nn

from camcli.errors import UsageError
from camcli.models.custom import custom_factory
from camcli.models.loaded import head_layer
from camcli.models.torchvision import build

# Heads and inputs up to these sizes fit any machine that runs camcli at all (resnet50 at
# 1024 px: about 2 GB of feature maps for one image); above them the memory check's meta
# build (a third of a real build's time) is worth paying.
_CHECKED_CLASSES = 10_000
_CHECKED_INPUT_SIZE = 1024


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (host or accelerator), not a fault of the model."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("out of memory", "can't allocate", "not enough memory")
    )


# What PyTorch's layers say when the feature map has shrunk below a kernel or pooling window.
_TOO_SMALL = (
    "kernel size can't be greater than actual input size",
    "output size is too small",
    "input image is smaller than kernel",
    "padding size should be less than",
    "pad should be smaller than",
)


def input_too_small(exc: BaseException, size: int, model: str) -> UsageError | None:
    """The error to show when ``exc`` says the input is too small for the model (a kernel
    larger than the feature map it reaches: the user's ``--input-size``, not a fault of the
    model); None for any other exception."""
    text = str(exc).strip()
    if not isinstance(exc, RuntimeError) or not any(w in text.lower() for w in _TOO_SMALL):
        return None
    return UsageError(
        f"{size} px is too small an input for {model} ({text.splitlines()[0]}); use a larger "
        "--input-size, or leave it out for the model's own size"
    )


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``; None where that cannot be known (MPS)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _feature_bytes(model: nn.Module, size: int) -> int | None:
    """Bytes of every leaf module's output for one ``size`` px image (what a backward pass
    keeps), from a forward pass on the meta device; None if the model cannot run there."""
    total = 0

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, size, size, device="meta"))
    except Exception:  # shapes the model refuses: the real probe reports them
        return None
    finally:
        for handle in handles:
            handle.remove()
    return total


def check_memory(
    name: str, num_classes: int | None, input_size: int | None, device: torch.device
) -> None:
    """Refuse a head or an input size that cannot fit, before anything is allocated.

    An allocation larger than memory ends in an allocator traceback, or worse in swapping.
    The model built on the meta device has exact sizes and allocates nothing; a forward pass
    there gives the feature maps' sizes. A user's own factory is not run an extra time.
    """
    big_head = num_classes is not None and num_classes > _CHECKED_CLASSES
    big_input = input_size is not None and input_size > _CHECKED_INPUT_SIZE
    if not (big_head or big_input) or custom_factory(name) is not None:
        return
    free = available_memory(device)
    if free is None:
        return
    try:
        with torch.device("meta"):
            model = build(name, num_classes)
    except Exception:  # a builder that meta tensors cannot run: allocation errors are caught later
        return
    if big_head:
        tensors = itertools.chain(model.parameters(), model.buffers())
        needed = sum(t.numel() * t.element_size() for t in tensors)
        if needed > free:
            head = head_layer(model)
            head_bytes = sum(
                p.numel() * p.element_size() for p in (head[1].parameters() if head else ())
            )
            raise UsageError(
                f"--num-classes {num_classes}: not enough memory to build a "
                f"{num_classes}-class head ({_gigabytes(head_bytes or needed)}; "
                f"{_gigabytes(free)} available on {device})"
            )
    if big_input:
        assert input_size is not None
        needed = _feature_bytes(model, input_size)
        if needed is not None and needed > free:
            raise UsageError(
                f"--input-size {input_size}: not enough memory for a forward pass at "
                f"{input_size} px (about {_gigabytes(needed)} of feature maps for one image; "
                f"{_gigabytes(free)} available on {device})"
            )
