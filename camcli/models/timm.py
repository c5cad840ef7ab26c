"""``--model timm:NAME``: timm's classifiers, their pretrained weights, data config and labels.

Weights go through timm's own pretrained loading (``create_model(pretrained=True)``: its
checkpoint filters, position-embedding resampling, head handling), cache first: a file
already in the Hugging Face hub cache (or torch hub's, for weights timm keeps at a URL) is
handed to timm as a local file, so a cached model loads with no network at all. Otherwise
timm downloads it; when that fails the error names the cache path and the command that fills
it. timm reads files with ``weights_only=True`` or safetensors; nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from camcli.errors import UsageError, WeightsUnavailableError, install_extra
from camcli.images import Preprocess
from camcli.models.checkpoints import load_checkpoint_into, read_checkpoint
from camcli.models.download import hf_endpoint, quiet_hub, unavailable_reason
from camcli.models.sources import Built
from camcli.models.torchvision import RANDOM_INIT_SEED

PREFIX = "timm:"
INSTALL = install_extra("timm")
# timm names a .bin checkpoint on the hub but prefers its safetensors twin when there is one.
_SAFE_TWINS = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}


def _timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise UsageError(f"--model timm:NAME needs the timm package: {INSTALL}") from None
    return timm


def names(pattern: str = "*") -> list[str]:
    """timm's architectures matching a glob (``*vit*``), from its registry (no network)."""
    return list(_timm().list_models(pattern))


def _resolve(name: str) -> tuple[str, str | None]:
    """``resnet18`` or ``resnet18.a1_in1k`` -> (architecture, pretrained tag or None)."""
    timm = _timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        every = timm.list_models()
        close = difflib.get_close_matches(arch.lower(), every, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise UsageError(
            f"unknown model timm:{arch}{hint} (`camcli models 'timm:*{arch[:4]}*'` lists "
            "timm's names)"
        )
    return arch, tag or None


def _pretrained_cfg(arch: str, tag: str | None) -> Any:
    """timm's pretrained config for ``arch.tag`` (``tag`` None: the default), or a UsageError."""
    from timm.models import get_pretrained_cfg

    full = f"{arch}.{tag}" if tag else arch
    try:
        cfg = get_pretrained_cfg(full)
    except RuntimeError:  # "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        tags = [n.partition(".")[2] for n in _timm().list_pretrained(f"{arch}.*")]
        known = f" (available: {', '.join(tags)})" if tags else " (timm has none for it)"
        raise UsageError(
            f"unknown weights {tag or 'DEFAULT'!r} for timm:{arch}{known}; "
            "use --weights none for random weights or --checkpoint FILE"
        )
    return cfg


def _cached_file(cfg: Any) -> Path | None:
    """The weights file of ``cfg`` already in the local cache, else None (no network)."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        filename = cfg.hf_hub_filename or "pytorch_model.bin"
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for candidate in (_SAFE_TWINS.get(filename), filename):
            if candidate is None:
                continue
            found = try_to_load_from_cache(repo, candidate, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.url:
        path = _url_cache_path(cfg.url)
        return path if path.is_file() else None
    return None


def _url_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _hub_cache_path(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _download_url(cfg: Any) -> str:
    """Where timm fetches ``cfg``'s weights from: the hub, else the config's own URL."""
    if cfg.hf_hub_id:
        return f"{hf_endpoint()}/{cfg.hf_hub_id.partition('@')[0]}"
    return cfg.url


def _download_hint(cfg: Any) -> tuple[Path, str]:
    """(where the weights are cached, the command that puts them there)."""
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.partition("@")[0]
        return _hub_cache_path(repo), f"hf download {repo}"
    path = _url_cache_path(cfg.url)
    return path, f"curl -L --create-dirs -o {path} {cfg.url}"


def _create(arch: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with one-line errors; ``img_size`` is dropped for architectures
    that take any input size (convolutional nets have no such argument)."""
    timm = _timm()
    try:
        try:
            return timm.create_model(arch, **kwargs)
        except TypeError as exc:
            if "img_size" not in kwargs or "img_size" not in str(exc):
                raise
            kwargs.pop("img_size")
            return timm.create_model(arch, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        shown = {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"}
        raise UsageError(f"timm cannot build {arch} with {shown}: {exc}") from None


def _seeded(arch: str, **kwargs: Any) -> nn.Module:
    """Random weights from ``RANDOM_INIT_SEED``: the same model on every run; the caller's
    RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return _create(arch, pretrained=False, **kwargs)


def _pretrained(arch: str, cfg: Any, progress: bool, **kwargs: Any) -> nn.Module:
    full = f"{arch}.{cfg.tag}" if cfg.tag else arch
    cached = _cached_file(cfg)
    overlay = {"file": str(cached)} if cached is not None else None

    def unavailable(reason: str) -> WeightsUnavailableError:
        where, command = _download_hint(cfg)
        return WeightsUnavailableError(
            f"timm:{full} weights are not in the cache ({where}) and could not be downloaded "
            f"({reason}); run `{command}` where there is network (HF_HOME or HF_HUB_CACHE "
            "move the cache), or pass --checkpoint FILE, or --weights none"
        )

    if cached is None:
        reason = unavailable_reason(_download_url(cfg))
        if reason:
            raise unavailable(reason)
    try:
        # Downloads announce themselves: never on stdout (kept clean for --json).
        with (
            contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()),
            quiet_hub(),
        ):
            return _create(full, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except UsageError:
        raise
    except Exception as exc:  # hub, HTTP, offline-mode and file errors all end here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if cached is not None:
            raise WeightsUnavailableError(
                f"cannot load cached timm weights {cached}: {reason}; delete the file to "
                "download it again, or pass --checkpoint FILE"
            ) from None
        raise unavailable(reason) from None


def _fixed_size(model: nn.Module) -> int | None:
    """The one input size a model with learned position embeddings takes (timm's ViT family
    with a strict patch embedding), else None."""
    embed = getattr(model, "patch_embed", None)
    if embed is None or getattr(model, "dynamic_img_size", False):
        return None
    size = getattr(embed, "img_size", None)
    if not getattr(embed, "strict_img_size", False) or not size:
        return None
    return int(size[0]) if size[0] == size[-1] else None


def _preprocess(model: nn.Module, input_size: int | None) -> Preprocess:
    """timm's eval transform from its data config: resize the shorter side to
    ``floor(size / crop_pct)``, centre-crop ``size``, normalise with the config's mean/std."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    size = input_size or _fixed_size(model) or int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    return Preprocess(
        crop_size=size,
        resize_size=max(size, math.floor(size / crop_pct)),
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        interpolation=str(config.get("interpolation") or "bilinear"),
    )


def _labels(cfg: Any) -> list[str] | None:
    """ImageNet class names (timm's short descriptions, ``tench``) when the pretrained
    config's classes are an ImageNet subset, with ``background`` for a label offset."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    if cfg is None:
        return None
    if cfg.label_names:
        return list(cfg.label_descriptions or cfg.label_names)
    subset = infer_imagenet_subset({"num_classes": cfg.num_classes})
    offset = int(cfg.label_offset or 0)
    if subset is None:
        subset = infer_imagenet_subset({"num_classes": (cfg.num_classes or 0) - offset})
    if subset is None:
        return None
    names = [d.split(",")[0].strip() for d in ImageNetInfo(subset).label_descriptions()]
    return ["background"] * offset + names


def build(
    name: str,
    *,
    weights: str | None,
    checkpoint: str | os.PathLike[str] | None,
    num_classes: int | None,
    input_size: int | None,
    progress: bool,
) -> Built:
    """A timm classifier: ``weights`` DEFAULT (the name's tag, else timm's default tag), a
    tag (``a1_in1k``), or none; a ``checkpoint`` replaces the weights."""
    arch, tag = _resolve(name)
    extra: dict[str, Any] = {}
    if input_size is not None:
        extra["img_size"] = input_size  # ViT-style models build their embeddings at this size
    choice = (weights or "none").strip()
    if checkpoint is not None or choice.lower() == "none":
        try:
            cfg = _pretrained_cfg(arch, tag)
        except UsageError:
            cfg = None
        if checkpoint is not None:
            path = Path(checkpoint)
            state = read_checkpoint(path)

            def make(n: int | None) -> nn.Module:
                return _seeded(arch, **extra, **({"num_classes": n} if n is not None else {}))

            model = load_checkpoint_into(PREFIX + arch, state, num_classes, path, builder=make)
            labels = None
        else:
            classes = {"num_classes": num_classes} if num_classes is not None else {}
            model = _seeded(arch, **extra, **classes)
            labels = _labels(cfg)
        return Built(model, _preprocess(model, input_size), labels, None)
    if choice.upper() != "DEFAULT":
        if tag is not None and tag != choice:
            raise UsageError(f"--weights {choice} conflicts with the tag in timm:{name}")
        tag = choice
    cfg = _pretrained_cfg(arch, tag)
    if num_classes is not None and num_classes != cfg.num_classes:
        raise UsageError(
            f"--num-classes {num_classes} does not fit pretrained weights timm:{arch}."
            f"{cfg.tag} ({cfg.num_classes} classes); use --checkpoint"
        )
    model = _pretrained(arch, cfg, progress, **extra)
    return Built(model, _preprocess(model, input_size), _labels(cfg), f"{arch}.{cfg.tag}")
