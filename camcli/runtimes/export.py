"""A module written to ONNX once, cached by what decides its graph: weights, input size, part.

The cache lives in ``$CAMCLI_CACHE_DIR`` or ``$XDG_CACHE_HOME/camcli`` (``~/.cache/camcli``),
under ``runtimes/<key>.onnx``. The key hashes the module's class, every parameter and buffer
(names, dtypes, shapes, bytes), the input shape without its batch, which part of the model
(``part``: the whole model, or the part before a layer) and the torch and camcli versions, so a
fine-tuned checkpoint, another ``--input-size`` or another layer is another file. Files are
written under a temporary name and renamed: two processes exporting at once each write a
whole file, and the last rename wins with the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn


class ExportFailed(Exception):
    """The module does not export to ONNX; the message says why, in one line."""


def cache_root() -> Path:
    """Where exports are kept (see the module's docstring)."""
    given = os.environ.get("CAMCLI_CACHE_DIR")
    if given:
        return Path(given) / "runtimes"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "camcli" / "runtimes"


def _camcli_version() -> str:
    try:
        return version("camcli")
    except PackageNotFoundError:
        return "unknown"


def fingerprint(module: nn.Module, shape: tuple[int, ...], part: str) -> str:
    """A hex key for ``module``'s export at inputs of ``shape`` (no batch axis) for ``part``."""
    digest = hashlib.sha256()
    for text in (type(module).__qualname__, part, repr(tuple(shape)), torch.__version__,
                 _camcli_version()):  # fmt: skip
        digest.update(text.encode() + b"\0")
    with torch.no_grad():
        for name, tensor in list(module.state_dict(keep_vars=False).items()):
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            data = tensor.detach().cpu().contiguous()
            if data.dtype == torch.bfloat16:
                data = data.float()
            digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:32]


def _export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """``module`` -> ONNX at ``path`` with a dynamic batch axis (TorchScript exporter, which
    needs no onnxscript and runs in seconds; the dynamo exporter where it is gone)."""
    outputs = module(example)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    names = [f"out{i}" for i in range(count)]
    axes = {name: {0: "batch"} for name in ["x", *names]}
    # nn.MultiheadAttention's fused inference kernel (a ViT's blocks in eval mode under
    # no_grad) has no ONNX form; the plain path computes the same attention and exports.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), input_names=["x"],
                              output_names=names, dynamic_axes=axes, opset_version=17,
                              dynamo=False)  # fmt: skip
        except TypeError:  # a torch without the dynamo flag's legacy path
            batch = torch.export.Dim("batch")
            torch.onnx.export(module, (example,), str(path), input_names=["x"],
                              output_names=names, dynamic_shapes=({0: batch},), dynamo=True)  # fmt: skip
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


def exported(module: nn.Module, example: torch.Tensor, part: str) -> Path:
    """The cached ONNX file of ``module`` for inputs like ``example`` (N, 3, H, W); exported
    now when missing. Raises ExportFailed with the exporter's reason."""
    root = cache_root()
    key = fingerprint(module, tuple(example.shape[1:]), part)
    path = root / f"{key}.onnx"
    if path.is_file() and path.stat().st_size > 0:
        return path
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".export-", suffix=".onnx", dir=root)
        os.close(handle)
    except OSError as exc:
        raise ExportFailed(f"cannot write the export cache {root} ({exc.strerror})") from None
    tmp = Path(name)
    try:
        with torch.no_grad():
            _export(module, example, tmp)
        os.replace(tmp, path)
    except Exception as exc:  # the exporters raise many types; the reason is what matters
        text = str(exc).strip().splitlines()
        raise ExportFailed(
            f"{type(exc).__name__}: {text[0] if text else 'no message'}"[:300]
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
