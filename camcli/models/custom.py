"""``--model path/to/file.py:factory`` or ``package.module:factory``: the user's own builder."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from camcli.errors import UsageError


@functools.lru_cache(maxsize=8)
def custom_factory(spec: str) -> Callable[..., nn.Module] | None:
    """``path/to/file.py:factory`` or ``package.module:factory`` -> the callable, else None.

    This runs the user's own code (as ``uvicorn module:app`` does); it unpickles nothing.
    """
    if ":" not in spec:
        return None
    where, attr = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise UsageError(f"{where}: no such Python file (for --model FILE.py:FACTORY)")
            module_spec = importlib.util.spec_from_file_location(f"camcli_user_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot import {where} for --model {spec}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UsageError(f"--model {spec}: {where} has no callable named {attr!r}")
    return factory
