"""Model name, weights, checkpoint and device -> an eval-mode model, its preprocessing, its labels."""

from __future__ import annotations

import collections
import contextlib
import difflib
import functools
import importlib
import importlib.util
import io
import itertools
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models._api import WeightsEnum

from camcli.errors import CamcliWarning, CheckpointError, UsageError, WeightsUnavailableError
from camcli.images import NotRegularFile, Preprocess, open_regular

_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_AUX_PREFIXES = ("AuxLogits.", "aux1.", "aux2.")
# The random initialisation of ``--weights none``: fixed, so that its runs are reproducible.
RANDOM_INIT_SEED = 0
# Real label lists are kilobytes (ImageNet-21k's is about 300 KB); this is only a guard
# against reading a disk image or a log by mistake.
_LABELS_MAX_BYTES = 16 * 1024 * 1024
# Heads and inputs up to these sizes fit any machine that runs camcli at all (resnet50 at
# 1024 px: about 2 GB of feature maps for one image); above them the memory check's meta
# build (a third of a real build's time) is worth paying.
_CHECKED_CLASSES = 10_000
_CHECKED_INPUT_SIZE = 1024


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


def _seeded_build(name: str, num_classes: int | None) -> nn.Module:
    """``_build`` with random weights from ``RANDOM_INIT_SEED``: ``--weights none`` gives the
    same model on every run (so baselines made with it match), and the caller's global RNG
    state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return _build(name, num_classes)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (host or accelerator), not a fault of the model."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        words in text for words in ("out of memory", "can't allocate", "not enough memory")
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


def _check_memory(
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
            model = _build(name, num_classes)
    except Exception:  # a builder that meta tensors cannot run: allocation errors are caught later
        return
    if big_head:
        tensors = itertools.chain(model.parameters(), model.buffers())
        needed = sum(t.numel() * t.element_size() for t in tensors)
        if needed > free:
            head = _head_layer(model)
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


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line, from a regular UTF-8 text file (a byte-order mark is fine).

    The file is opened non-blocking and checked with ``fstat`` before reading, so that a FIFO
    or a device (``/dev/zero``) is refused at once instead of blocking or reading forever.
    """
    path = Path(path)
    try:
        file = open_regular(path)
    except NotRegularFile:
        raise UsageError(
            f"{path}: not a regular file (--labels takes a text file, one class name per line)"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read labels file ({exc.strerror or exc})") from None
    with file:
        info = os.fstat(file.fileno())
        if info.st_size > _LABELS_MAX_BYTES:
            raise UsageError(
                f"{path}: {info.st_size / 2**20:.0f} MiB is too large for a labels file "
                f"(at most {_LABELS_MAX_BYTES // 2**20} MiB, one class name per line)"
            )
        try:
            data = file.read(_LABELS_MAX_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read labels file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{path}: labels file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
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
    if input_size is not None and input_size < 16:
        raise UsageError("--input-size must be at least 16")
    named = weights is not None and weights.lower() not in ("none", "default")
    if checkpoint is not None and named:
        raise UsageError(
            f"--weights {weights} and --checkpoint conflict: the checkpoint replaces the "
            "weights; leave --weights out"
        )
    _check_memory(name, num_classes, input_size, dev)
    try:
        if checkpoint is not None:
            chosen = None
            state = read_checkpoint(checkpoint)
            model = _load_checkpoint_into(name, state, num_classes, Path(checkpoint))
        elif custom_factory(name) is not None:
            if named:
                raise UsageError(f"--weights {weights}: a custom --model has no named weights")
            chosen = None
            model = _seeded_build(name, num_classes)
        else:
            chosen = resolve_weights(name, weights)
            if chosen is not None:
                if num_classes is not None and num_classes != len(chosen.meta["categories"]):
                    raise UsageError(
                        f"--num-classes {num_classes} does not fit pretrained weights "
                        f"{chosen.name} ({len(chosen.meta['categories'])} classes); "
                        "use --checkpoint"
                    )
                model = _load_pretrained(name, chosen, progress)
            else:
                model = _seeded_build(name, num_classes)
        model.eval().to(dev)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        classes = f" with {num_classes} classes" if num_classes is not None else ""
        raise UsageError(
            f"not enough memory to build {name}{classes} on {dev} "
            f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        ) from None
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
