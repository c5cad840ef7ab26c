"""``--model hf:ID_OR_DIR``: Hugging Face image classifiers (``AutoModelForImageClassification``).

The model is a folder written by ``save_pretrained`` or a hub id, read from the local cache
first (``local_files_only``) and downloaded only when it is not there; uncached and offline
is an error naming the cache path and the download command. transformers reads safetensors
(or ``.bin`` with ``weights_only=True``) and never runs a repository's own code
(``trust_remote_code`` stays off). Preprocessing comes from the saved image processor, labels
from the config's ``id2label``; the output object's ``.logits`` are the logits.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from camcli.errors import CamcliWarning, UsageError, WeightsUnavailableError, install_extra
from camcli.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camcli.models.checkpoints import load_checkpoint_into, read_checkpoint
from camcli.models.download import hf_endpoint, quiet_hub, unavailable_reason
from camcli.models.sources import Built
from camcli.models.torchvision import RANDOM_INIT_SEED

PREFIX = "hf:"
INSTALL = install_extra("hf")
_GENERIC_LABEL = re.compile(r"LABEL_\d+")
# Parameters of a ViT-style embedding that become leading tokens before the patches.
_PREFIX_PARAMETERS = ("cls_token", "distillation_token", "register_tokens")


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise UsageError(
            f"--model hf:ID_OR_DIR needs the transformers package: {INSTALL}"
        ) from None
    transformers.logging.set_verbosity_error()  # load reports: not ours
    transformers.logging.disable_progress_bar()
    return transformers


def names(pattern: str = "*") -> list[str]:
    """The model repositories in the local hub cache (no network); ``pattern`` is applied
    by the caller."""
    _transformers()
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # no cache folder yet (CacheNotFound), or an unreadable one
        return []
    return sorted(repo.repo_id for repo in info.repos if repo.repo_type == "model")


def _cache_path(repo: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pickled_weights(source: str, exc: BaseException) -> UsageError:
    """A ``.bin`` that ``torch.load(weights_only=True)`` refuses: named, with the reason, and
    never with torch's advice to load it with ``weights_only=False``."""
    folder = Path(source)
    found = sorted(folder.glob("*.bin")) if folder.is_dir() else []
    where = str(found[0]) if len(found) == 1 else f"hf:{source}'s pytorch_model.bin"
    text = str(exc)
    if "Unsupported global" in text or "GLOBAL" in text:
        return UsageError(
            f"{where}: holds pickled Python objects, not only tensors; camcli reads weights "
            "with weights_only=True for safety: save the model as safetensors "
            "(save_pretrained writes model.safetensors)"
        )
    detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
    reason = detail[0] if detail and detail[0] else type(exc).__name__
    return UsageError(f"{where}: cannot read the weights (corrupt or not a torch file: {reason})")


def _from_source(load: Any, source: str, what: str, **kwargs: Any) -> Any:
    """``load(source, ...)`` from a folder, else from the hub cache, else downloaded."""
    unsafe_load = load

    def load(*args: Any, **options: Any) -> Any:
        try:
            return unsafe_load(*args, **options)
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) said no
            raise _pickled_weights(source, exc) from None

    if Path(source).is_dir():
        try:
            return load(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{source}: cannot load the {what} ({_first_line(exc)})") from None
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise UsageError(f"--model hf:{source}: no such folder (and not a hub id ORG/NAME)")
    try:
        return load(source, local_files_only=True, **kwargs)
    except OSError:
        pass  # not cached: download below
    except ValueError as exc:
        raise UsageError(f"hf:{source}: {_first_line(exc)}") from None

    def unavailable(reason: str) -> WeightsUnavailableError:
        return WeightsUnavailableError(
            f"hf:{source} {what} is not in the cache ({_cache_path(source)}) and could not be "
            f"downloaded ({reason}); run `hf download {source}` where there is "
            "network (HF_HOME or HF_HUB_CACHE move the cache), or save_pretrained it into a "
            "folder and pass --model hf:FOLDER"
        )

    reason = unavailable_reason(f"{hf_endpoint()}/{source}")
    if reason:
        raise unavailable(reason)
    try:
        with quiet_hub():
            return load(source, **kwargs)
    except ValueError as exc:
        raise UsageError(f"hf:{source}: {_first_line(exc)}") from None
    except UsageError:
        raise
    except Exception as exc:  # HTTP and hub errors all end here
        raise unavailable(_first_line(exc)) from None


def _config(source: str, num_classes: int | None, input_size: int | None, random: bool) -> Any:
    transformers = _transformers()
    config = _from_source(transformers.AutoConfig.from_pretrained, source, "model config")
    if num_classes is not None and num_classes != config.num_labels:
        config.num_labels = num_classes
        config.id2label = {i: f"LABEL_{i}" for i in range(num_classes)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    if random and input_size is not None and hasattr(config, "image_size"):
        config.image_size = input_size  # position embeddings are built for this size
    return config


def _seeded(config: Any) -> nn.Module:
    """Random weights from ``RANDOM_INIT_SEED``; the caller's RNG state is left as it was."""
    transformers = _transformers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            return transformers.AutoModelForImageClassification.from_config(config)
        except ValueError as exc:
            raise UsageError(f"not an image classifier: {_first_line(exc)}") from None


def prefix_tokens(model: nn.Module) -> int | None:
    """The leading tokens a ViT-style embedding puts before the patches: its class,
    distillation and register tokens (DeiT: 2; DINOv2 with 4 registers: 5); None when the
    model has no such embedding (convolutional and Swin models)."""
    count = None
    for name, parameter in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf in _PREFIX_PARAMETERS and owner.endswith("embeddings") and parameter.ndim == 3:
            count = (count or 0) + int(parameter.shape[1])
    return count


def _resample_name(resample: Any) -> str:
    """PIL's resampling enum or int, or torchvision's InterpolationMode -> ``bicubic``..."""
    if isinstance(resample, int):
        from PIL import Image

        return Image.Resampling(int(resample)).name.lower()
    value = getattr(resample, "value", None)
    return str(value if isinstance(value, str) else getattr(resample, "name", "bilinear")).lower()


def _size_of(size: Any) -> int | None:
    """An image processor's size (dict or SizeDict) -> the edge it resizes to."""
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    for key in ("shortest_edge", "height"):
        value = get(key)
        if value:
            return int(value)
    return None


def processor_preprocess(processor: Any) -> Preprocess:
    """An image processor's eval transform as camcli's ``Preprocess``.

    ``size`` (shortest edge, or height x width) then ``crop_size`` when it centre-crops
    (ConvNeXt's ``crop_pct``: resize to ``size / crop_pct``, crop ``size``, below 384 px).
    The processor computes ``(p * f - o - mean) / std`` on pixels ``p`` in 0..255 (``f`` the
    rescale factor, ``o`` 1 with EfficientNet's ``rescale_offset``, else 0); camcli computes
    ``(p / 255 - mean') / std'``, so ``mean' = (mean + o) / (255 f)`` and
    ``std' = std / (255 f)`` (f = 1 without rescaling, mean 0 and std 1 without normalising;
    EfficientNet's ``include_top`` divides by ``std`` twice: ``std'`` uses ``std^2``). Processors that resize to height x width squash the image; camcli keeps
    the aspect ratio and centre-crops (``--fit stretch`` squashes as they do).
    """
    resize = _size_of(getattr(processor, "size", None)) or 224
    crop = resize
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct and resize < 384:  # ConvNeXt: shortest edge / crop_pct, then crop
        resize, crop = int(resize / crop_pct), resize
    if getattr(processor, "do_center_crop", False):
        crop = _size_of(getattr(processor, "crop_size", None)) or crop
    rescale = getattr(processor, "do_rescale", True)
    factor = float(processor.rescale_factor) if rescale else 1.0
    offset = 1.0 if rescale and getattr(processor, "rescale_offset", False) else 0.0
    mean, std = [0.0] * 3, [1.0] * 3
    if getattr(processor, "do_normalize", True):
        mean, std = (
            [float(m) for m in processor.image_mean],
            [float(s) for s in processor.image_std],
        )
    if getattr(processor, "include_top", False):  # EfficientNet divides by std once more
        std = [s * float(t) for s, t in zip(std, processor.image_std, strict=True)]
    scale = 255.0 * factor
    resample = getattr(processor, "resample", None)
    return Preprocess(
        crop_size=crop,
        resize_size=max(resize, crop),
        mean=tuple((m + offset) / scale for m in mean),
        std=tuple(s / scale for s in std),
        interpolation=_resample_name(resample) if resample is not None else "bilinear",
    )


def _processor(source: str) -> Any | None:
    transformers = _transformers()
    try:
        return _from_source(transformers.AutoImageProcessor.from_pretrained, source, "processor")
    except UsageError:
        return None


def _flip_channels(module: nn.Module, args: tuple) -> tuple:
    return (args[0].flip(1), *args[1:])


def _labels(config: Any) -> list[str] | None:
    """``id2label`` in index order; None for transformers' placeholders ``LABEL_i``."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    labels = [id2label.get(i, f"LABEL_{i}") for i in range(len(id2label))]
    if not labels or all(_GENERIC_LABEL.fullmatch(label) for label in labels):
        return None
    return labels


def build(
    name: str,
    *,
    weights: str | None,
    checkpoint: str | os.PathLike[str] | None,
    num_classes: int | None,
    input_size: int | None,
    progress: bool,
) -> Built:
    """A Hugging Face image classifier: ``weights`` DEFAULT (the saved weights) or none
    (random, from the config); a ``checkpoint`` replaces the weights."""
    transformers = _transformers()
    choice = (weights or "none").strip().lower()
    if choice not in ("none", "default"):
        raise UsageError(
            f"--weights {weights}: hf:{name} has one set of weights (use DEFAULT or none; "
            "a hub revision is part of the id: hf:ORG/NAME)"
        )
    random = checkpoint is not None or choice == "none"
    config = _config(name, num_classes, input_size, random)
    if checkpoint is not None:
        path = Path(checkpoint)
        state = read_checkpoint(path)

        def make(n: int | None) -> nn.Module:
            if n is not None and n != config.num_labels:
                return _seeded(_config(name, n, input_size, True))
            return _seeded(config)

        model = load_checkpoint_into(PREFIX + name, state, num_classes, path, builder=make)
    elif random:
        model = _seeded(config)
    else:
        if num_classes is not None:
            raise UsageError(
                f"--num-classes {num_classes}: hf:{name}'s weights have their own head; "
                "use --checkpoint"
            )
        auto = transformers.AutoModelForImageClassification.from_pretrained
        try:
            model = _from_source(auto, name, "model")
        except ValueError as exc:  # a config that is not an image classifier
            raise UsageError(f"hf:{name}: not an image classifier ({_first_line(exc)})") from None
    leading = prefix_tokens(model)
    if leading is not None:
        model.num_prefix_tokens = leading  # read by camcli.layers.token_prefix
    processor = _processor(name)
    fixed = getattr(config, "image_size", None) if leading is not None else None
    fixed = fixed if isinstance(fixed, int) else None
    if processor is None:
        size = input_size or fixed or int(getattr(config, "image_size", 224) or 224)
        warnings.warn(
            f"hf:{name} has no image processor; using {size} px and ImageNet's mean/std "
            "(save the processor with processor.save_pretrained(FOLDER))",
            CamcliWarning,
            stacklevel=2,
        )
        preprocess = Preprocess(size, size, IMAGENET_MEAN, IMAGENET_STD)
    else:
        preprocess = processor_preprocess(processor)
        if getattr(processor, "do_flip_channel_order", False):  # MobileViT takes BGR
            model.register_forward_pre_hook(_flip_channels)
    if input_size is not None and fixed is not None and input_size != fixed:
        raise UsageError(
            f"--input-size {input_size}: hf:{name} takes {fixed} px inputs only (its "
            "position embeddings are fixed); leave --input-size out"
        )
    size = input_size or fixed
    if size is not None and size != preprocess.crop_size:
        preprocess = preprocess.with_input_size(size)
    return Built(model, preprocess, _labels(model.config), None if random else "pretrained")
