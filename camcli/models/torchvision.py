"""torchvision's classifiers: names, weights enums, their transforms, labels and cache."""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models._api import WeightsEnum

from camcli.errors import UsageError, WeightsUnavailableError
from camcli.images import Preprocess
from camcli.models.custom import custom_factory
from camcli.models.download import unavailable_reason

# The random initialisation of ``--weights none``: fixed, so that its runs are reproducible.
RANDOM_INIT_SEED = 0


def classification_models() -> list[str]:
    return list_models(module=torchvision.models)


def resolve_model_name(name: str) -> str:
    if custom_factory(name) is not None:
        return name
    names = classification_models()
    if name in names:
        return name
    lowered = {n.lower(): n for n in names}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(lowered[c] for c in close)}?" if close else ""
    raise UsageError(
        f"unknown model {name!r}{hint} (`camcli models` lists the {len(names)} classifiers)"
    )


def resolve_weights(model_name: str, weights: str | None) -> WeightsEnum | None:
    """``DEFAULT``, an enum value such as ``IMAGENET1K_V1`` (or ``ResNet50_Weights.X``), or none."""
    if weights is None or weights.lower() == "none":
        return None
    enum = get_model_weights(model_name)
    members = list(enum.__members__)
    key = weights.split(".")[-1]
    for member in members:
        if member.lower() == key.lower():
            return enum[member]
    raise UsageError(
        f"unknown weights {weights!r} for {model_name} (available: {', '.join(members)}, none)"
    )


def transforms_preprocess(weights: WeightsEnum | None) -> Preprocess:
    if weights is None:
        return Preprocess()
    t = weights.transforms()
    interp = getattr(t, "interpolation", None)
    return Preprocess(
        crop_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
        interpolation=str(getattr(interp, "value", "bilinear")),
    )


def weights_cache_path(weights: WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def load_pretrained(model_name: str, weights: WeightsEnum, progress: bool) -> nn.Module:
    """Build through torchvision's own builder and cache, but never unpickle arbitrary objects."""
    cached = weights_cache_path(weights)

    def safe_state_dict(self: WeightsEnum, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return torch.hub.load_state_dict_from_url(
            self.url, progress=progress, check_hash=True, weights_only=True
        )

    def unavailable(reason: str) -> WeightsUnavailableError:
        return WeightsUnavailableError(
            f"{model_name} weights {weights.name} are not in the cache ({cached}) and could not "
            f"be downloaded ({reason}); download {weights.url} into {cached.parent} "
            "(set TORCH_HOME to move the cache), or pass a local state dict with --checkpoint FILE"
        )

    if not cached.exists():
        reason = unavailable_reason(weights.url)
        if reason:
            raise unavailable(reason)
    original = WeightsEnum.get_state_dict
    WeightsEnum.get_state_dict = safe_state_dict  # type: ignore[method-assign]
    try:
        # torch.hub announces downloads: never on stdout (kept clean for --json), and not at
        # all without a progress bar, so that a failed download reads as one message.
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
            return get_model(model_name, weights=weights)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cached.exists() and "hash" not in reason.lower():
            raise WeightsUnavailableError(
                f"cannot load cached weights {cached}: {reason}; delete the file to download "
                "it again, or pass --checkpoint FILE"
            ) from None
        raise unavailable(reason) from None
    finally:
        WeightsEnum.get_state_dict = original  # type: ignore[method-assign]


def build(name: str, num_classes: int | None) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    factory = custom_factory(name)
    if factory is not None:
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise UsageError(f"--model {name} returned {type(model).__name__}, not a torch module")
        return model
    if name in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = False
    return get_model(name, weights=None, **kwargs)


def seeded_build(name: str, num_classes: int | None) -> nn.Module:
    """``build`` with random weights from ``RANDOM_INIT_SEED``: ``--weights none`` gives the
    same model on every run (so baselines made with it match), and the caller's global RNG
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return build(name, num_classes)
