"""``--device`` -> a torch device that exists here."""

from __future__ import annotations

import torch

from camcli.errors import UsageError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(
            f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UsageError("device 'mps' requested but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    return dev
