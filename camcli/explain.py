"""A batch of images -> class activation maps and predictions. No file I/O here."""

from __future__ import annotations

import contextlib
import difflib
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from camcli.config import DEFAULT_METHOD, ExplainSpec
from camcli.errors import CamcliWarning, UsageError
from camcli.hooks import ActivationRecorder
from camcli.layers import default_layer, resolve_layer
from camcli.methods import get_method_class, gradient_free_methods
from camcli.methods.base import CamContext, CamMethod, Progress
from camcli.models import LoadedModel, fold_batchnorms, input_too_small, is_out_of_memory
from camcli.runtimes import Offload, choose_runtime
from camcli.runtimes.choose import Job
from camcli.targets import (
    SCORES_EQUAL,
    Chosen,
    Target,
    extract_logits,
    make_head,
    output_problems,
    scores_equal,
)

__all__ = [
    "AUGMENTATIONS",
    "PRECISIONS",
    "Explainer",
    "Explanation",
    "Target",  # camcli.targets' own, kept importable from here
    "autocast_dtype",
    "concept_targets",
    "explain",
    "extract_logits",  # likewise
    "parse_targets",
    "to_model_input",
]


@dataclass
class Explanation:
    """Maps and predictions for a batch of N images and T targets each (all on the CPU).

    ``maps`` is (N, T, h, w) float32: the method's raw map at the layer's resolution (several
    layers: each upsampled to the model input size, then averaged). ``scores`` are softmax
    probabilities of ``class_indices``. Pixel-space methods (guided backprop) also give
    ``saliency`` (N, T, 3, H, W) at the model input size, and their ``maps`` are at that size.

    ``problems[i]`` says why image i's outputs cannot be trusted (NaN or inf in its logits or
    its map), else None; such an image's maps, saliency and scores are zeros, never NaN.
    ``blank[i][t]`` says why the map of image i for target t is zero everywhere, else None.

    With a head other than softmax (``camcli.targets``) ``scores`` are that head's (sigmoid
    probabilities, a class's share of the pixels, a box's score); ``present[i, t]`` is False
    where image i has no such target (a label under the threshold, no box t) and its map is
    zeros; ``boxes[i][t]`` is detected box t (x0, y0, x1, y1) in model-input pixels.
    """

    maps: np.ndarray
    class_indices: np.ndarray
    scores: np.ndarray
    saliency: np.ndarray | None = None
    problems: list[str | None] | None = None
    blank: list[list[str | None]] | None = None
    present: np.ndarray | None = None
    boxes: list[list[tuple[float, float, float, float] | None]] | None = None
    #: Per image, what its records add (a black-box method's ``masks`` used), or None.
    details: list[dict[str, Any]] | None = None


#: ``--aug-smooth``: every combination of a horizontal flip and an input scaling, as
#: pytorch-grad-cam's default test-time augmentation (ttach HorizontalFlip x Multiply).
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def _normalise_label(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").replace("-", " ").split())


_MAP_NOT_FINITE = "the map is not finite"
_RANK = re.compile(r"top\s*([+-]?\d+)")
_INDEX = re.compile(r"[+-]?\d+")
_MAX_SUGGESTIONS = 8


def _suggestions(text: str, labels: Sequence[str]) -> str:
    """Labels holding every word of ``text`` (``cat``: tabby cat, tiger cat...), else the
    closest spellings; as a ``; did you mean ...?`` hint, or "" when nothing is near."""
    words = set(_normalise_label(text).split())
    containing = [label for label in labels if words <= set(_normalise_label(label).split())]
    if containing:
        shown = containing[:_MAX_SUGGESTIONS]
        more = len(containing) - len(shown)
        rest = f" (and {more} more)" if more > 0 else ""
        return f"; did you mean {', '.join(repr(label) for label in shown)}{rest}?"
    by_name = {_normalise_label(label): label for label in labels}
    close = difflib.get_close_matches(_normalise_label(text), list(by_name), n=3)
    return f"; did you mean {', '.join(repr(by_name[c]) for c in close)}?" if close else ""


def parse_targets(
    values: Sequence[str], top_k: int | None, labels: Sequence[str] | None, num_classes: int
) -> list[Target]:
    """``top1`` / ``topN``, a class index, or a class name (case-insensitive), plus ``top_k``."""
    targets: list[Target] = []
    by_name: dict[str, list[int]] = {}
    for i, label in enumerate(labels or []):
        by_name.setdefault(_normalise_label(label), []).append(i)
    for value in values:
        text = value.strip()
        rank_text = _RANK.fullmatch(text.lower())
        if rank_text:
            rank = int(rank_text.group(1))
            if rank < 1:
                raise UsageError(
                    f"target {text!r}: ranks start at 1: top1 is the most likely class"
                )
            if rank > num_classes:
                raise UsageError(
                    f"target {text!r}: the model has only {num_classes} classes "
                    f"(top1 to top{num_classes})"
                )
            targets.append(Target(rank=rank))
        elif _INDEX.fullmatch(text):
            index = int(text)
            if not 0 <= index < num_classes:
                raise UsageError(
                    f"target {text} is out of range: class indices run from 0 to "
                    f"{num_classes - 1} (the model has {num_classes} classes)"
                )
            targets.append(Target(index=index))
        else:
            if not labels:
                raise UsageError(
                    f"target {text!r} is a class name but this model has no labels; "
                    "pass --labels FILE or a class index"
                )
            found = by_name.get(_normalise_label(text))
            if not found:
                raise UsageError(f"unknown class name {text!r}{_suggestions(text, labels)}")
            if len(found) > 1:
                raise UsageError(
                    f"class name {text!r} is ambiguous (indices {', '.join(map(str, found))}); "
                    "pass the index instead"
                )
            targets.append(Target(index=found[0]))
    if top_k is not None:
        if top_k < 1:
            raise UsageError("--top-k must be at least 1")
        if top_k > num_classes:
            raise UsageError(f"--top-k {top_k}: the model has only {num_classes} classes")
        targets.extend(Target(rank=r) for r in range(1, top_k + 1))
    if not targets:
        targets = [Target(rank=1)]
    unique: list[Target] = []
    for target in targets:
        if target not in unique:
            unique.append(target)
    return unique


def concept_targets(count: int) -> list[Target]:
    """``concept1`` ... ``conceptK``: the targets of a concept method (``--concepts K``)."""
    if count < 1:
        raise UsageError("--concepts must be at least 1")
    return [Target(concept=j) for j in range(1, count + 1)]


def to_model_input(pixels: np.ndarray, loaded: LoadedModel) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> normalised (N, 3, H, W) float32 on the model's device."""
    batch = torch.from_numpy(np.require(pixels, requirements="W")).to(loaded.device)
    batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(loaded.preprocess.mean, device=loaded.device).view(1, 3, 1, 1)
    std = torch.tensor(loaded.preprocess.std, device=loaded.device).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)


PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the forward pass; ``None`` for plain fp32 (the default)."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if not torch.amp.is_autocast_available(device.type):
        raise UsageError(f"--precision {precision} is not available on device {device}")
    if precision == "fp16" and device.type == "cpu":
        warnings.warn(
            "--precision fp16 on the CPU: autocast there is slow and less exact than on a GPU; "
            "use --precision bf16",
            CamcliWarning,
            stacklevel=3,
        )
    return dtype


class Explainer:
    """A model, a method and its layers, checked once; then ``explain(batch, targets)``.

    ``aug_smooth`` averages the maps of the flipped and scaled inputs (``AUGMENTATIONS``),
    each mapped back onto the original pixels; ``eigen_smooth`` replaces the weighted channel
    sum by its first principal component; ``chunk_size`` bounds the extra forward passes run
    at once (Score-CAM family, Ablation-CAM, Smooth Grad-CAM++), and ``progress`` hears about
    them.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        method: str | ExplainSpec = DEFAULT_METHOD,
        layers: Sequence[str] | None = None,
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> None:
        """``method`` is an ExplainSpec, or its method with ``layers`` and the spec's other
        fields as keywords (``Explainer(loaded, "gradcam", ["layer4"], chunk_size=8)``)."""
        if isinstance(method, ExplainSpec):
            if layers is not None or options:
                raise TypeError("Explainer: an ExplainSpec or keywords, not both")
            spec = method
        else:
            spec = ExplainSpec(method=method, layers=tuple(layers or ()), **options)
        self.spec = spec
        #: Where the forward-only passes run (``use_runtime``); PyTorch until chosen.
        self.offload = Offload("torch", "PyTorch (no runtime chosen)")
        method, layers = spec.method, list(spec.layers) or None
        aug_smooth, eigen_smooth = spec.aug_smooth, spec.eigen_smooth
        chunk_size, precision = spec.chunk_size, spec.precision
        score_threshold = spec.score_threshold
        self.loaded = loaded
        model = loaded.model
        # What the maps explain, over the model's output (camcli.targets).
        self.head = make_head(loaded.head, score_threshold)
        if aug_smooth and self.head.name == "detection":
            raise UsageError("--aug-smooth does not apply to detection (boxes move with the flip)")
        self.autocast_dtype = autocast_dtype(precision, loaded.device)
        # Inputs follow the model's layout; the explainer never changes a caller's model.
        self.channels_last = loaded.channels_last
        method_cls = get_method_class(method)
        if method_cls.needs_grad and not getattr(model, "differentiable", True):
            usable = ", ".join(gradient_free_methods(self.head.name))
            raise UsageError(
                f"{method_cls.name} needs gradients, which {loaded.name} does not give (ONNX "
                f"Runtime has no autograd); use one of: {usable}"
            )
        if chunk_size < 1:
            raise UsageError("--chunk-size must be at least 1")
        if eigen_smooth and not method_cls.supports_eigen_smooth:
            raise UsageError(f"--eigen-smooth does not apply to {method_cls.name}")
        if aug_smooth and not method_cls.supports_aug_smooth:
            raise UsageError(f"--aug-smooth does not apply to {method_cls.name}")
        self.aug_smooth = aug_smooth
        self.eigen_smooth = eigen_smooth
        self.chunk_size = chunk_size
        self.progress = progress
        self._details: list[dict[str, Any]] | None = None  # the last batch's (Explanation)
        size = loaded.preprocess.crop_size
        if not method_cls.needs_layer and layers:
            warnings.warn(
                f"{method_cls.name} perturbs the input and uses no layer: --layer is ignored",
                CamcliWarning,
                stacklevel=2,
            )
        try:
            self.layers = self._resolve_layers(layers, size) if method_cls.needs_layer else {}
            if method_cls.needs_layer and len(self.layers) < method_cls.min_layers:
                raise UsageError(
                    f"{method_cls.name} combines the maps of {method_cls.min_layers} layers or "
                    "more: repeat --layer (e.g. --layer layer3 --layer layer4; `camcli layers "
                    "MODEL` lists them)"
                )
            if method_cls.max_layers is not None and len(self.layers) > method_cls.max_layers:
                raise UsageError(f"{method_cls.name} takes one layer; pass --layer once")
            self.method: CamMethod = method_cls(model)
            self.method.configure(spec, self.head.name, size)
            probe = torch.randn(1, 3, size, size, device=loaded.device)
            # The checks compare exact maths (CAM's head against the logits): full precision.
            activations, logits = self._forward(probe, autocast=False)
        except (RuntimeError, MemoryError) as exc:
            too_small = input_too_small(exc, size, loaded.name)
            if too_small is not None:
                raise too_small from None
            if not is_out_of_memory(exc):
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"not enough memory for a forward pass at {size} px on {loaded.device} "
                f"({reason}); use a smaller --input-size"
            ) from None
        # Checked on the model as the user knows it (`camcli layers`), before any folding.
        (probe_problem,) = output_problems(logits)
        for name, activation in activations.items():
            if activation.ndim != 4:
                raise UsageError(
                    f"layer {name!r} gives {tuple(activation.shape)}, not a (N, C, H, W) "
                    "feature map; pick a convolutional layer (`camcli layers MODEL`)"
                )
            if self.method.needs_grad and not logits.requires_grad:
                raise UsageError(f"the logits do not depend on layer {name!r}; pick another")
            try:
                self.method.check(name, activation.detach(), logits.detach())
            except UsageError:
                if probe_problem is None:
                    raise
                # A method that judges the model by its output (CAM fits its head to the
                # logits) fails on NaN for a reason its own message would hide.
                raise UsageError(
                    f"{method_cls.name} cannot be set up: {probe_problem} on a random input "
                    "(weights that hold NaN or inf, from a training run that diverged?)"
                ) from None
            if activation.shape[-2:] == (1, 1):
                warnings.warn(
                    f"layer {name} gives a 1 x 1 map at {size} px: it cannot localise; use a "
                    "larger --input-size or an earlier layer (`camcli layers MODEL`)",
                    CamcliWarning,
                    stacklevel=2,
                )
        #: Channels of the first layer, for the runtime's estimate of a job's passes.
        self._channels = int(next(iter(activations.values())).shape[1]) if activations else 0
        if logits.shape[1] != loaded.num_classes and self.head.name != "detection":
            loaded.num_classes = int(logits.shape[1])
        if loaded.owned:
            # Eager batch norm is a memory-bound pass over every feature map (in fp32 even
            # under autocast); folded into the convolutions it costs nothing. Only a model
            # camcli built itself is rewritten, never one a caller passes in.
            fold_batchnorms(model, keep=self.layers.values())

    def use_runtime(
        self,
        batch_size: int,
        images: int | None = None,
        scored_passes: int = 0,
        runtime: str | None = None,
    ) -> Offload:
        """Choose where the forward-only passes run, as ``runtime`` (default: the spec's
        ``--runtime``) says (``camcli.runtimes.choose``): ``batch_size`` images per main
        pass, ``images`` in the job (None: unknown, many), ``scored_passes`` the passes per
        image a caller runs through ``scores`` itself (``evaluate``'s perturbed inputs).
        Raises UsageError for a runtime that cannot serve at all."""
        method, loaded = self.method, self.loaded
        requested = runtime or self.spec.runtime
        why_not = None
        if not getattr(loaded.model, "differentiable", True):
            why_not = "the model is an ONNX file, which ONNX Runtime runs already"
        elif self.head.name not in ("softmax", "binary", "multilabel"):
            why_not = f"a {self.head.name} model's output is not one logits tensor"
        uses_scores = scored_passes > 0 or method.runtime_passes
        split = list(self.layers) if method.runtime_split and self.layers else []
        size = loaded.preprocess.crop_size
        per_image = 1 + scored_passes + method.extra_passes(self._channels, size)
        job = Job(
            model=loaded.model,
            logits=extract_logits,
            device=loaded.device,
            size=loaded.preprocess.crop_size,
            batch=self.chunk_size if uses_scores else batch_size,
            scores=uses_scores,
            layers=split,
            precision=self.spec.precision,
            passes=None if images is None else images * per_image,
            why_not=why_not,
            pass_seconds=self._pass_seconds() if requested == "auto" else None,
            onnx_file=None if getattr(loaded.model, "differentiable", True) else loaded.model,
        )
        self.offload = choose_runtime(requested, job)
        return self.offload

    def _pass_seconds(self) -> float:
        """One image's forward pass, timed warm (the second of two: a first call sets up its
        kernels): what ``--runtime auto`` weighs a job with."""
        size = self.loaded.preprocess.crop_size
        probe = torch.randn(1, 3, size, size, device=self.loaded.device)
        times = []
        with torch.inference_mode():
            for _ in range(2):  # the first call after the batch norms fold sets up anew
                began = time.perf_counter()
                self._logits(probe)
                times.append(time.perf_counter() - began)
        return times[-1]

    def _resolve_layers(self, layers: Sequence[str] | None, size: int) -> dict[str, nn.Module]:
        """The named layers, or the automatic default one."""
        loaded = self.loaded
        if layers:
            names = list(dict.fromkeys(layers))
        else:
            default = default_layer(loaded.model, size, loaded.device)
            if default is None:
                raise UsageError(
                    f"found no layer with a spatial feature map in {loaded.name}; pass --layer"
                )
            names = [default]
        return {n: resolve_layer(loaded.model, n) for n in names}

    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def layer_label(self) -> str:
        """Where the maps are read, for people: the layers, or the input (black-box methods)."""
        return "+".join(self.layers) or "the input"

    def _prepared(
        self, batch: torch.Tensor, low: torch.dtype | None
    ) -> tuple[torch.Tensor, contextlib.AbstractContextManager]:
        """The batch in the model's memory layout, and the autocast context for ``low``."""
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        cast = (
            torch.autocast(self.loaded.device.type, dtype=low) if low else contextlib.nullcontext()
        )
        return batch, cast

    def _forward(
        self, batch: torch.Tensor, autocast: bool = True
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(activations, the head's score matrix) for a batch."""
        activations, logits, _ = self._run(batch, autocast)
        return activations, logits

    def _run(
        self, batch: torch.Tensor, autocast: bool = True
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
        """(activations, the head's score matrix, the model's own output) for a batch."""
        grad = self.method.needs_grad
        mode = torch.no_grad() if grad else torch.inference_mode()
        low = self.autocast_dtype if autocast else None
        batch, cast = self._prepared(batch, low)
        # The model up to the first layer on a runtime, when one serves (``use_runtime``).
        model, layers = self.loaded.model, self.layers
        if self.offload.model is not None:
            model, layers = self.offload.model, self.offload.model.hooked(self.layers)
        recorder = ActivationRecorder(
            model, layers, grad=grad, dtype=torch.float32 if low else None
        )
        with recorder, mode, cast, self.method.forward_context():
            output = model(batch)
            logits = self.head(output)
        missing = [n for n in self.layers if n not in recorder.activations]
        if missing:
            raise UsageError(f"layer {missing[0]!r} never ran during the forward pass")
        return recorder.activations, logits, output

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for the methods' extra passes, the model in eval mode while they run.

        With ``--precision bf16/fp16`` these passes run under autocast too (they are most of
        the Score-CAM family's and Ablation-CAM's work); the logits come back in fp32.
        """
        batch, cast = self._prepared(batch, self.autocast_dtype)
        with ActivationRecorder(self.loaded.model, {}, grad=False), cast:
            return self.head(self.loaded.model(batch)).float()

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """The head's scores (float32) for a forward-only pass of whole inputs: on the runtime
        ``use_runtime`` chose, else as ``_logits``. No hook may be active (Score-CAM's masked
        inputs, the black-box methods', ``evaluate``'s perturbed ones)."""
        if self.offload.scores is None:
            return self._logits(batch)
        return self.head(self.offload.scores(batch)).float()

    def _outputs(self, batch: torch.Tensor) -> Any:
        """The model's own output for the methods' extra passes (a detector's boxes), under
        ``--precision`` and in the model's layout, the model in eval mode."""
        batch, cast = self._prepared(batch, self.autocast_dtype)
        with ActivationRecorder(self.loaded.model, {}, grad=False), cast:
            return self.loaded.model(batch)

    def _maps(
        self,
        batch: torch.Tensor,
        activations: dict[str, torch.Tensor],
        logits: torch.Tensor,
        class_indices: torch.Tensor,
        at_input_size: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass of the method over every layer: (maps, colour saliency or None)."""
        context = CamContext(
            model=self.loaded.model,
            batch=batch,
            forward=self.scores if self.method.runtime_passes else self._logits,
            chunk_size=self.chunk_size,
            eigen_smooth=self.eigen_smooth,
            progress=self.progress,
            head=self.head,
            outputs=self._outputs,
        )
        maps = []
        with torch.inference_mode(not self.method.needs_grad):
            if not self.method.needs_layer:  # a black-box method: the input is what it reads
                maps.append(self.method.compute(batch, logits, class_indices, context))
            for name, activation in activations.items():
                context.layer, context.module = name, self.layers[name]
                maps.append(self.method.compute(activation, logits, class_indices, context))
        with torch.inference_mode():
            size = tuple(batch.shape[-2:])
            fused = self.method.fuse(maps)
            if fused is not None:
                combined = fused
                if at_input_size and tuple(fused.shape[-2:]) != size:
                    combined = nn.functional.interpolate(fused, size=size, mode="bilinear")
            elif len(maps) == 1 and (not at_input_size or tuple(maps[0].shape[-2:]) == size):
                combined = maps[0]
            else:
                combined = torch.stack(
                    [nn.functional.interpolate(m, size=size, mode="bilinear") for m in maps]
                ).mean(0)
            parts = context.cache.get("saliency")
            saliency = torch.stack(parts).mean(0) if parts else None
        self._details = context.cache.get("details")
        return combined, saliency

    def explain(self, batch: torch.Tensor, targets: Sequence[Target]) -> Explanation:
        activations, logits, output = self._run(batch)
        self._details = None
        if any(t.concept is not None for t in targets):
            # A concept method (dff): each concept's map, and the class it scores best.
            combined, classes, probabilities = self._concepts(batch, activations, targets)
            present = torch.ones_like(classes, dtype=torch.bool)
            chosen = Chosen(logits, classes, classes, probabilities, present)
            saliency = None
        else:
            chosen = self.head.choose(output, logits, targets)
            logits, columns = chosen.matrix, chosen.columns
            if not bool(chosen.present.any()):
                # Nothing to explain in the whole batch (no box above the threshold): no score
                # depends on the layer, and every map is zeros.
                first = next(iter(activations.values()), batch)  # black-box: the input's size
                grid = first.shape[-2:]
                combined = torch.zeros((*columns.shape, *grid), device=batch.device)
                saliency = None
            elif not self.aug_smooth:
                combined, saliency = self._maps(batch, activations, logits, columns, False)
            else:
                del activations
                combined, saliency = self._augmented(batch, columns)
        with torch.inference_mode():
            logits = logits.detach().float()
            # A target the image does not have (no box t, a label under the threshold): zeros.
            maps = torch.where(chosen.present[:, :, None, None], combined.detach().float(), 0.0)
            scores = chosen.scores.float()
            finite_maps = torch.isfinite(maps.flatten(1)).all(dim=1)
            if saliency is not None:
                saliency = saliency.float()
                finite_maps &= torch.isfinite(saliency.flatten(1)).all(dim=1)
            problems: list[str | None] = [
                output or (None if map_ok else _MAP_NOT_FINITE)
                for output, map_ok in zip(
                    output_problems(logits), finite_maps.tolist(), strict=True
                )
            ]
            trusted = torch.tensor([p is None for p in problems], device=maps.device)
            # Untrusted images get zeros: NaN must never reach a writer or a caller's sums.
            maps = torch.where(trusted.view(-1, 1, 1, 1), maps, 0.0)
            scores = torch.where(trusted.view(-1, 1), scores, 0.0)
            if saliency is not None:
                saliency = torch.where(trusted.view(-1, 1, 1, 1, 1), saliency, 0.0)
            return Explanation(
                maps=maps.cpu().numpy(),
                class_indices=chosen.classes.cpu().numpy(),
                scores=scores.cpu().numpy(),
                saliency=None if saliency is None else saliency.cpu().numpy(),
                problems=problems,
                blank=self._blank_reasons(maps, logits, trusted),
                present=chosen.present.cpu().numpy(),
                boxes=chosen.boxes,
                details=self._details,
            )

    def _concepts(
        self, batch: torch.Tensor, activations: dict[str, torch.Tensor], targets: Sequence[Target]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concept targets (``dff``): (maps, each concept's class, its probability)."""
        concepts = getattr(self.method, "concepts", None)
        if concepts is None or any(t.concept is None for t in targets):
            raise UsageError(
                f"concept targets need a concept method (dff) and no other targets, "
                f"not {self.method.name}"
            )
        from camcli.methods.dff import concept_table

        ((name, activation),) = activations.items()
        context = CamContext(
            model=self.loaded.model, batch=batch, forward=self._logits, layer=name,
            module=self.layers[name], chunk_size=self.chunk_size, progress=self.progress,
        )  # fmt: skip
        with torch.inference_mode():
            maps, concept_logits = concepts(activation, context, max(t.concept for t in targets))
            classes, probabilities = concept_table(concept_logits)
            columns = torch.tensor([t.concept - 1 for t in targets], device=maps.device)
            return maps[:, columns], classes[:, columns], probabilities[:, columns]

    def _blank_reasons(
        self, maps: torch.Tensor, logits: torch.Tensor, trusted: torch.Tensor
    ) -> list[list[str | None]]:
        """Per image and target, why the map is zero everywhere (None where it is not)."""
        zero = (maps == 0).flatten(2).all(dim=2) & trusted.view(-1, 1)
        where = f"at layer {'+'.join(self.layers)}" if self.layers else "in the input"
        reasons: list[list[str | None]] = []
        for row, same in zip(zero.tolist(), scores_equal(logits), strict=True):
            why = SCORES_EQUAL if same else f"no positive evidence for this class {where}"
            reasons.append([why if blank else None for blank in row])
        return reasons

    def _augmented(
        self, batch: torch.Tensor, class_indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mean over ``AUGMENTATIONS`` of the maps at the input size, each flipped back.

        The classes explained stay those of the original image; raw maps are averaged (not
        each normalised first, as pytorch-grad-cam does), so they stay in the method's units.
        """
        maps_sum: torch.Tensor | None = None
        saliency_sum: torch.Tensor | None = None
        for flip, factor in AUGMENTATIONS:
            augmented = batch * factor
            if flip:
                augmented = augmented.flip(-1)
            activations, logits = self._forward(augmented)
            maps, saliency = self._maps(augmented, activations, logits, class_indices, True)
            with torch.inference_mode():
                if flip:
                    maps = maps.flip(-1)
                    saliency = None if saliency is None else saliency.flip(-1)
                maps_sum = maps if maps_sum is None else maps_sum + maps
                if saliency is not None:
                    saliency_sum = saliency if saliency_sum is None else saliency_sum + saliency
        assert maps_sum is not None
        count = len(AUGMENTATIONS)
        return maps_sum / count, None if saliency_sum is None else saliency_sum / count


def explain(
    loaded: LoadedModel, batch: torch.Tensor, spec: ExplainSpec | None = None, **options: Any
) -> Explanation:
    """One-shot helper: explain a normalised (N, 3, H, W) batch. ``spec`` says how, or its
    fields as keywords (``explain(loaded, batch, method="gradcam", targets=["top1"])``)."""
    if spec is None:
        spec = ExplainSpec(**options)
    elif options:
        raise TypeError("explain: an ExplainSpec or keywords, not both")
    explainer = Explainer(loaded, spec)
    explainer.use_runtime(int(batch.shape[0]), images=int(batch.shape[0]))  # spec.runtime
    parsed = parse_targets(list(spec.targets) or ["top1"], spec.top_k, loaded.labels,
                           loaded.num_classes)  # fmt: skip
    return explainer.explain(batch.to(loaded.device), parsed)
