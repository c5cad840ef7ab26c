"""``--checkpoint FILE`` -> a state dict (never unpickling objects) loaded into the model."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camcli.errors import CamcliWarning, CheckpointError, install_extra
from camcli.models.loaded import head_layer, out_features
from camcli.models.torchvision import build

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of tensors)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: not a state dict (it holds no tensors)")
    for prefix in ("module.", "model.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.pt``/``.pth`` (``weights_only=True``) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{path}: reading .safetensors needs the safetensors package "
                f"({install_extra('safetensors')})"
            ) from None
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError...
            text = str(exc)
            if "Unsupported global" in text or "GLOBAL" in text:
                raise CheckpointError(
                    f"{path}: holds pickled Python objects, not only tensors; camcli loads "
                    "checkpoints with weights_only=True for safety: save model.state_dict() "
                    "instead"
                ) from None
            detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
            reason = detail[0] if detail and detail[0] else type(exc).__name__
            raise CheckpointError(
                f"{path}: cannot read checkpoint (not a torch.save file, or corrupt: {reason})"
            ) from None
    return _unwrap_state_dict(obj, path)


def _infer_num_classes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count the checkpoint's head was trained with, if its head differs."""
    head = head_layer(model)
    if head is None:
        return None
    key = f"{head[0]}.weight" if head[0] else "weight"
    tensor = state.get(key)
    if tensor is not None and tensor.ndim >= 2 and tensor.shape[0] != out_features(head[1]):
        return int(tensor.shape[0])
    return None


def load_checkpoint_into(
    name: str,
    state: dict[str, torch.Tensor],
    num_classes: int | None,
    path: Path,
    builder: Callable[[int | None], nn.Module] | None = None,
) -> nn.Module:
    """The model ``name`` with ``num_classes`` (else the checkpoint's head size) holding
    ``state``, every key and shape checked. ``builder(num_classes)`` builds the architecture
    (a timm or Hugging Face source's); by default torchvision's or the user's factory."""
    make = builder if builder is not None else lambda n: build(name, n)
    model = make(num_classes)
    if num_classes is None:
        inferred = _infer_num_classes(model, state)
        if inferred is not None:
            model = make(inferred)
    state = {k: v for k, v in state.items() if not k.startswith(_AUX_PREFIXES)}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched[:3]))
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:3]))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:3]))
    if problems:
        raise CheckpointError(
            f"{path}: does not fit {name}"
            + (f" with {num_classes} classes" if num_classes else "")
            + " ("
            + "; ".join(problems)
            + ")"
        )
    _check_dtypes(state, expected, name, path)
    model.load_state_dict(state, strict=True)
    return model


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_dtypes(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], name: str, path: Path
) -> None:
    """Refuse integer or bool tensors for float parameters (``load_state_dict`` would cast
    them silently into nonsense weights); say so once when floats change width (fp16 -> fp32).
    """
    resized: list[str] = []
    for key, value in expected.items():
        given = state[key]
        if given.dtype == value.dtype or not value.is_floating_point():
            continue
        if not given.is_floating_point():
            raise CheckpointError(
                f"{path}: {key} is {_dtype_name(given.dtype)} but {name} needs "
                f"{_dtype_name(value.dtype)} there; an integer or bool tensor is not a weight "
                "(was the checkpoint quantised or saved from the wrong tensors?)"
            )
        resized.append(key)
    if resized:
        first = resized[0]
        warnings.warn(
            f"{path}: {len(resized)} tensor(s) are {_dtype_name(state[first].dtype)} (first: "
            f"{first}); loaded as {_dtype_name(expected[first].dtype)}",
            CamcliWarning,
            stacklevel=3,
        )
