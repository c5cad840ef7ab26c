"""Model name, weights, checkpoint and device -> an eval-mode model, its preprocessing, its labels."""

from __future__ import annotations

import collections
import contextlib
import difflib
import functools
import importlib
import importlib.util
import io
import os
import pickle
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models._api import WeightsEnum

from camcli.errors import CheckpointError, UsageError, WeightsUnavailableError
from camcli.images import Preprocess

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")


@dataclass
class LoadedModel:
    """A classifier ready to explain: eval mode, on its device, with preprocessing and labels."""

    model: nn.Module
    name: str
    weights: str | None
    preprocess: Preprocess
    labels: list[str] | None
    device: torch.device
    num_classes: int
    # Set by ``load_model``, which owns its model and converts it to channels-last memory
    # format; a model a caller builds keeps its layout unless the caller sets this.
    channels_last: bool = False
    # Whether camcli built this model itself (``load_model``) and may rewrite it for speed
    # (``fold_batchnorms``); a caller's model is never rewritten.
    owned: bool = False

    def label(self, index: int) -> str | None:
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return None


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether to run ``model`` in channels-last memory format: convolutional nets on CPU/CUDA.

    oneDNN and cuDNN convolutions are faster on NHWC tensors and compute the same sums (only
    the summation order, so float rounding, can differ). Models with attention blocks
    (ViT, Swin, MaxViT) keep their layout: their convolutions are a small part of the work.
    """
    if device.type not in ("cpu", "cuda"):
        return False
    convs = 0
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__:
            return False
        if isinstance(module, nn.Conv2d):
            convs += 1
    return convs >= 3


def fold_batchnorms(model: nn.Module, keep: Collection[nn.Module] = ()) -> int:
    """Fold each eval-mode ``BatchNorm2d`` into the ``Conv2d`` that alone feeds it; the count.

    ``bn(conv(x)) = conv'(x)`` with ``w' = w s``, ``b' = (b - mean) s + beta``,
    ``s = gamma / sqrt(var + eps)``: the same function with one memory-bound pass over the
    feature map less (about 20% of resnet50's fp32 CPU time, more under autocast). The module
    tree keeps every name (the batch norm becomes an ``nn.Identity``), so a hook on the batch
    norm sees the values it saw before (up to float rounding). Pairs are found on a
    ``torch.fx`` trace of the model (used only to read the graph): a convolution folds only if
    the batch norm is its one user and each module runs once; pairs with a module in ``keep``
    (hooked layers) stay as they are. Models that fx cannot trace are left as they are (0).
    """
    try:
        import torch.fx

        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # data-dependent control flow, unsupported ops: no folding, same maths
        return 0
    modules = dict(model.named_modules())
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    kept = {id(m) for m in keep}
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_var is None:
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        conv = modules.get(source.target)
        if (
            isinstance(conv, nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == 1
            and calls[node.target] == 1
            and id(conv) not in kept
            and id(bn) not in kept
            and conv.out_channels == bn.num_features
        ):
            pairs.append((conv, str(node.target)))
    with torch.no_grad():
        for conv, bn_name in pairs:
            bn = modules[bn_name]
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
            conv.bias = nn.Parameter(shift.to(conv.weight.dtype), conv.weight.requires_grad)
            parent_name, _, attr = bn_name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, nn.Identity())
    return len(pairs)


def classification_models() -> list[str]:
    return list_models(module=torchvision.models)


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


def _transforms_preprocess(weights: WeightsEnum | None) -> Preprocess:
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


def _load_pretrained(model_name: str, weights: WeightsEnum, progress: bool) -> nn.Module:
    """Build through torchvision's own builder and cache, but never unpickle arbitrary objects."""
    cached = weights_cache_path(weights)

    def safe_state_dict(self: WeightsEnum, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return torch.hub.load_state_dict_from_url(
            self.url, progress=progress, check_hash=True, weights_only=True
        )

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
        raise WeightsUnavailableError(
            f"{model_name} weights {weights.name} are not in the cache ({cached}) and could not "
            f"be downloaded ({reason}); download {weights.url} into {cached.parent} "
            "(set TORCH_HOME to move the cache), or pass a local state dict with --checkpoint FILE"
        ) from None
    finally:
        WeightsEnum.get_state_dict = original  # type: ignore[method-assign]


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
                "(pip install 'camcli[safetensors]')"
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


def _head_layer(model: nn.Module) -> tuple[str, nn.Linear | nn.Conv2d] | None:
    """The classifier's output layer: the last linear layer, or the last convolution for
    all-convolutional heads (SqueezeNet's 1x1 ``classifier.1``)."""
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = (name, module)
        elif isinstance(module, nn.Conv2d):
            last_conv = (name, module)
    return last_linear or last_conv


def _out_features(layer: nn.Linear | nn.Conv2d) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _infer_num_classes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    """The class count the checkpoint's head was trained with, if its head differs."""
    head = _head_layer(model)
    if head is None:
        return None
    key = f"{head[0]}.weight" if head[0] else "weight"
    tensor = state.get(key)
    if tensor is not None and tensor.ndim >= 2 and tensor.shape[0] != _out_features(head[1]):
        return int(tensor.shape[0])
    return None


def _build(name: str, num_classes: int | None) -> nn.Module:
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


def _load_checkpoint_into(
    name: str, state: dict[str, torch.Tensor], num_classes: int | None, path: Path
) -> nn.Module:
    model = _build(name, num_classes)
    if num_classes is None:
        inferred = _infer_num_classes(model, state)
        if inferred is not None:
            model = _build(name, inferred)
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
    model.load_state_dict(state, strict=True)
    return model


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read labels file ({exc})") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise UsageError(f"{path}: labels file is empty (expected one class name per line)")
    return labels


def load_model(
    name: str = "resnet50",
    *,
    weights: str | None = "DEFAULT",
    checkpoint: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    labels: str | os.PathLike[str] | None = None,
    device: str = "auto",
    input_size: int | None = None,
    fit: str = "crop",
    progress: bool = True,
) -> LoadedModel:
    """Build a torchvision classifier in eval mode, with preprocessing and class labels.

    Preprocessing comes from the weights' own transforms; with ``weights="none"`` or a
    checkpoint, from the model's default weights' transforms (sizes only, nothing downloads).
    """
    name = resolve_model_name(name)
    dev = resolve_device(device)
    if fit not in ("crop", "stretch"):
        raise UsageError(f"unknown fit {fit!r} (use crop or stretch)")
    if num_classes is not None and num_classes < 1:
        raise UsageError("--num-classes must be at least 1")
    if checkpoint is not None:
        chosen = None
        state = read_checkpoint(checkpoint)
        model = _load_checkpoint_into(name, state, num_classes, Path(checkpoint))
    elif custom_factory(name) is not None:
        if weights is not None and weights.lower() not in ("none", "default"):
            raise UsageError(f"--weights {weights}: a custom --model has no named weights")
        chosen = None
        model = _build(name, num_classes)
    else:
        chosen = resolve_weights(name, weights)
        if chosen is not None:
            if num_classes is not None and num_classes != len(chosen.meta["categories"]):
                raise UsageError(
                    f"--num-classes {num_classes} does not fit pretrained weights "
                    f"{chosen.name} ({len(chosen.meta['categories'])} classes); use --checkpoint"
                )
            model = _load_pretrained(name, chosen, progress)
        else:
            model = _build(name, num_classes)
    model.eval().to(dev)
    channels_last = use_channels_last(model, dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    default_weights = None if custom_factory(name) else get_model_weights(name).DEFAULT
    preprocess = _transforms_preprocess(chosen or default_weights).with_fit(fit)
    # Models with learned position embeddings (ViT) take one size only, and that is the
    # built model's own: vit_h_14's DEFAULT weights are 518 px but weights=None builds 224.
    fixed = getattr(model, "image_size", None)
    if isinstance(fixed, int) and fixed != preprocess.crop_size:
        preprocess = preprocess.with_input_size(fixed)
    if input_size is not None:
        if input_size < 16:
            raise UsageError("--input-size must be at least 16")
        if isinstance(fixed, int) and input_size != fixed:
            raise UsageError(
                f"--input-size {input_size}: {name} takes {fixed} px inputs only "
                "(its position embeddings are fixed); leave --input-size out"
            )
        preprocess = preprocess.with_input_size(input_size)

    head = _head_layer(model)
    n_classes = _out_features(head[1]) if head is not None else (num_classes or 1000)
    label_list: list[str] | None
    if labels is not None:
        label_list = read_labels(labels)
        if len(label_list) != n_classes:
            raise UsageError(
                f"{labels}: has {len(label_list)} labels but the model has {n_classes} classes"
            )
    elif chosen is not None:
        label_list = list(chosen.meta["categories"])
    elif (
        checkpoint is None
        and default_weights is not None
        and n_classes == len(default_weights.meta["categories"])
    ):
        label_list = list(default_weights.meta["categories"])
    else:
        label_list = None
    return LoadedModel(
        model=model,
        name=name,
        weights=chosen.name if chosen is not None else None,
        preprocess=preprocess,
        labels=label_list,
        device=dev,
        num_classes=n_classes,
        channels_last=channels_last,
        owned=True,
    )
