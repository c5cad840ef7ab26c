"""Images, a model and methods -> every metric's per-image values, curves and sanity stages.

The images are loaded once (through camcli's loader and the model's own preprocessing) and
kept as the model sees them; each method then explains them in batches with its own
``Explainer`` and every metric family scores the same maps. No file is written here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camcli.config import CPU_BATCH_SIZE, ExplainSpec
from camcli.engines.batchsize import AUTO, auto_batch_size
from camcli.errors import InputError, UsageError
from camcli.explain import Explainer, to_model_input
from camcli.images import Box, load_image, model_view
from camcli.metrics.confidence import confidence_change
from camcli.metrics.deletion import deletion_insertion
from camcli.metrics.maps import in_boxes, peak_and_energy
from camcli.metrics.road import NOISE, PERCENTILES, road
from camcli.metrics.sanity import SANITY_THRESHOLD, STAGES, Stage, cascade, randomised, spearman
from camcli.metrics.scoring import Scorer, at_input_size
from camcli.models import LoadedModel
from camcli.sources import Source
from camcli.targets import Target, output_problems

#: Metric families (``--metric``) and the metrics each gives, in table order.
FAMILIES: dict[str, tuple[str, ...]] = {
    "deletion": ("deletion_auc", "insertion_auc"),
    "confidence": ("average_drop", "confidence_increase"),
    "road": ("road_morf", "road_lerf", "road_combined"),
    "pointing": ("pointing_game", "energy_pointing"),
    "sanity": ("sanity_rho",),
}

#: Whether a higher value of the metric means a more faithful map.
HIGHER_IS_BETTER = {
    "deletion_auc": False,
    "insertion_auc": True,
    "average_drop": False,
    "confidence_increase": True,
    "road_morf": False,
    "road_lerf": True,
    "road_combined": True,
    "pointing_game": True,
    "energy_pointing": True,
    "sanity_rho": False,
}

Boxes = Sequence[tuple[float, float, float, float]]


@dataclass(frozen=True)
class Settings:
    """What the metrics are computed with (recorded in the JSON output).

    ``batch_size``: images explained at once, ``AUTO`` (0) for ``--batch-size auto``
    (``evaluate_methods`` measures it); ``explain``: what every method shares (layers,
    precision, ``chunk_size``, which is also the perturbed inputs per forward pass), each
    method explained with ``replace(explain, method=...)``; ``target``: the class explained,
    ``explain.targets`` parsed against the model's labels.
    """

    families: tuple[str, ...] = tuple(FAMILIES)
    steps: int = 20
    percentiles: tuple[float, ...] = PERCENTILES
    noise: float = NOISE
    stages: int = STAGES
    seed: int = 0
    batch_size: int = CPU_BATCH_SIZE
    explain: ExplainSpec = field(default_factory=ExplainSpec)
    target: Target = field(default_factory=lambda: Target(rank=1))


@dataclass
class Item:
    """One image as the model sees it, and where that view lies in the original."""

    source: Source
    view: np.ndarray
    box: Box
    shape: tuple[int, int]
    boxes: Boxes = ()


@dataclass
class MethodResult:
    """Per-image values of each metric (None where it does not apply), the mean curves, and
    the sanity stages' mean correlations."""

    name: str
    layers: list[str]
    values: dict[str, list[float | None]] = field(default_factory=dict)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: Where its forward passes ran, and why (``Offload.settings``).
    runtime: dict[str, Any] = field(default_factory=dict)

    @property
    def sane(self) -> bool | None:
        """Whether the method passed the randomisation check (None when it did not run)."""
        rhos = [v for v in self.values.get("sanity_rho", []) if v is not None]
        return None if not rhos else float(np.mean(rhos)) < SANITY_THRESHOLD


@dataclass
class Evaluation:
    """What ``evaluate_methods`` found: the images evaluated, ``(input, error)`` for those
    that were not (unreadable, or the model's output on them is not finite), each method's
    result."""

    model: str
    items: list[Item]
    errors: list[tuple[str, str]]
    results: list[MethodResult]
    settings: Settings


def load_items(
    sources: Sequence[Source],
    loaded: LoadedModel,
    boxes: Mapping[str, Boxes] | None = None,
    max_pixels: int | None = None,
    on_error: Callable[[str], None] | None = None,
) -> tuple[list[Item], list[tuple[str, str]]]:
    """Each source's model view; a file that cannot be read is an error, never the end.

    ``boxes`` are keyed by the absolute path of the image they belong to.
    """
    items, errors = [], []
    for source in sources:
        try:
            if source.error is not None:  # found while listing (a folder it cannot read)
                raise InputError(f"{source.display}: {source.error}")
            image = load_image(source.path, max_pixels=max_pixels)
        except InputError as exc:
            errors.append((source.display, exc.message))
            if on_error is not None:
                on_error(exc.message)
            continue
        view, box = model_view(image, loaded.preprocess)
        own = (boxes or {}).get(str(Path(source.path).resolve()), ())
        items.append(Item(source, view, box, (image.height, image.width), tuple(own)))
    return items, errors


def _batches(items: Sequence[Item], size: int) -> list[tuple[int, list[Item]]]:
    return [(start, list(items[start : start + size])) for start in range(0, len(items), size)]


def _explain(
    explainer: Explainer, items: Sequence[Item], target: Target
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(inputs, raw maps (N, h, w), classes (N,), their probabilities (N,) or None) for a
    batch of items.

    The probabilities are the explain pass's own ``softmax(f(x))_c``, the unperturbed point
    of every curve, so it costs no extra pass; None where they are not that (another head)
    or cannot be trusted (non-finite logits: the scorer then gives what it gives).
    """
    loaded = explainer.loaded
    inputs = to_model_input(np.stack([item.view for item in items]), loaded)
    explanation = explainer.explain(inputs, [target])
    maps = torch.from_numpy(explanation.maps[:, 0]).to(loaded.device)
    classes = torch.from_numpy(explanation.class_indices[:, 0]).to(loaded.device)
    scores = None
    if explainer.head.name == "softmax" and not any(explanation.problems or ()):
        scores = torch.from_numpy(explanation.scores[:, 0]).to(loaded.device)
    return inputs, maps, classes, scores


class _CurveSums:
    """Running sums of the curves, for their mean over the images whose curve is finite (those
    whose AUC is: the same images as the AUC's mean)."""

    def __init__(self) -> None:
        self.fractions: list[float] = []
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, fractions: torch.Tensor, curves: Mapping[str, torch.Tensor]) -> None:
        self.fractions = fractions.tolist()
        for name, curve in curves.items():
            finite = curve[torch.isfinite(curve).all(dim=1)].double()
            self.sums[name] = self.sums.get(name, 0.0) + finite.sum(dim=0).cpu().numpy()
            self.counts[name] = self.counts.get(name, 0) + finite.shape[0]

    def means(self) -> dict[str, list[list[float]]]:
        """Each mean curve as ``[[fraction, score], ...]``; empty where no image's is finite."""
        means = {}
        for name, sums in self.sums.items():
            count = self.counts[name]
            points = zip(self.fractions, sums, strict=True)
            means[name] = [[f, float(s / count)] for f, s in points] if count else []
        return means


def _pointing(item: Item, cam: np.ndarray) -> tuple[float | None, float | None]:
    """(hit 1/0, energy inside the boxes) of one map; None for an image without boxes."""
    if not item.boxes:
        return None, None
    peak, energy = peak_and_energy(cam, item.box, item.shape, item.boxes)
    hit = peak is not None and in_boxes(peak, item.boxes)
    return float(hit), energy


def faithfulness(
    explainer: Explainer,
    items: Sequence[Item],
    settings: Settings,
    result: MethodResult,
    passes: Callable[[int], None] | None,
    advance: Callable[[int], None] | None,
) -> list[np.ndarray]:
    """Every metric but the sanity check; returns the trained model's raw maps per batch."""
    scorer = Scorer(explainer, settings.explain.chunk_size, passes)
    families = settings.families
    values = result.values
    for family in families:
        if family != "sanity":
            for name in FAMILIES[family]:
                values[name] = []
    curves = _CurveSums()
    all_maps = []
    for start, batch in _batches(items, settings.batch_size):
        inputs, maps, classes, original = _explain(explainer, batch, settings.target)
        all_maps.append(maps.cpu().numpy())
        saliency = at_input_size(maps, tuple(inputs.shape[-2:]))
        if original is None:
            original = scorer.probabilities(inputs, classes)
        if "deletion" in families:
            found = deletion_insertion(scorer, inputs, saliency, classes, original, settings.steps)
            values["deletion_auc"] += found.auc(found.deletion).tolist()
            values["insertion_auc"] += found.auc(found.insertion).tolist()
            curves.add(found.fractions, {"deletion": found.deletion, "insertion": found.insertion})
        if "confidence" in families:
            drop, increase = confidence_change(scorer, inputs, saliency, classes, original)
            values["average_drop"] += drop.tolist()
            values["confidence_increase"] += increase.tolist()
        if "road" in families:
            scores = road(
                scorer,
                inputs,
                saliency,
                classes,
                original,
                settings.percentiles,
                settings.noise,
                seed=settings.seed + start,
            )
            for name, column in scores.items():
                values[name] += column.tolist()
        if "pointing" in families:
            cams = maps.cpu().numpy()
            for item, cam in zip(batch, cams, strict=True):
                hit, energy = _pointing(item, cam)
                values["pointing_game"].append(hit)
                values["energy_pointing"].append(energy)
        if advance is not None:
            advance(len(batch))
    result.curves = curves.means()
    return all_maps


def _sanity(
    loaded: LoadedModel,
    methods: Sequence[str],
    items: Sequence[Item],
    settings: Settings,
    trained: Mapping[str, list[np.ndarray]],
    results: Mapping[str, MethodResult],
    advance: Callable[[int], None] | None,
) -> None:
    """The cascade: one randomised copy of the model per stage, every method on it."""
    stages: list[Stage] = cascade(loaded.model, settings.stages)
    rhos = {m: np.zeros((len(stages), len(items))) for m in methods}
    for s, stage in enumerate(stages):
        copy = randomised(loaded, stage, settings.seed)
        for method in methods:
            spec = replace(settings.explain, method=method, layers=results[method].layers)
            explainer = Explainer(copy, spec)
            for b, (start, batch) in enumerate(_batches(items, settings.batch_size)):
                maps = _explain(explainer, batch, settings.target)[1].cpu().numpy()
                for k, (before, after) in enumerate(zip(trained[method][b], maps, strict=True)):
                    rhos[method][s, start + k] = spearman(
                        torch.from_numpy(before), torch.from_numpy(after)
                    )
            if advance is not None:
                advance(len(items))
        del copy
    for method in methods:
        result = results[method]
        result.values["sanity_rho"] = rhos[method].max(axis=0).tolist() if stages else []
        result.stages = [
            {"reinitialised": stage.count, "down_to": stage.deepest, "rho": float(row.mean())}
            for stage, row in zip(stages, rhos[method], strict=True)
        ]


def screen(
    scorer: Scorer,
    items: Sequence[Item],
    batch_size: int,
    on_error: Callable[[str], None] | None = None,
) -> tuple[list[Item], list[tuple[str, str]]]:
    """The items whose model output is finite, and ``(input, error)`` for the others (each
    told to ``on_error``): ``camcli.targets.output_problems``, the rule ``run`` and ``check``
    apply. Such an image's every metric would be NaN, and one NaN makes every mean NaN."""
    kept, errors = [], []
    for _, batch in _batches(items, batch_size):
        inputs = to_model_input(np.stack([item.view for item in batch]), scorer.explainer.loaded)
        for item, problem in zip(batch, output_problems(scorer.logits(inputs)), strict=True):
            if problem is None:
                kept.append(item)
                continue
            message = f"{item.source.display}: {problem}"
            errors.append((item.source.display, message))
            if on_error is not None:
                on_error(message)
    return kept, errors


def scored_passes(settings: Settings) -> int:
    """Forward passes per image on perturbed inputs, by the metrics asked for (an estimate
    for ``--runtime auto``: the sanity check's are on other weights and not counted)."""
    families = settings.families
    count = 1  # each image's own score
    if "deletion" in families:
        count += 2 * (settings.steps + 1)
    if "confidence" in families:
        count += 1
    if "road" in families:
        count += 2 * len(settings.percentiles)
    return count


def evaluate_methods(
    loaded: LoadedModel,
    methods: Sequence[str],
    items: Sequence[Item],
    settings: Settings,
    *,
    errors: Sequence[tuple[str, str]] = (),
    on_error: Callable[[str], None] | None = None,
    passes: Callable[[int], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> Evaluation:
    """Each method's metrics over ``items``, in ``methods`` order.

    An image on which the model's output is not finite is not evaluated (``screen``): it
    joins ``errors`` (those of ``load_items``) and ``on_error`` hears of it; the metrics are
    over the other images, and with none left every metric is over no image. ``passes`` hears
    the forward passes run on perturbed inputs; ``advance`` first gets minus the number of
    (method, image, phase) steps in all, then the steps done as they finish. A batch size of
    ``AUTO`` is measured with the first method (``auto_batch_size``: on the CPU
    ``CPU_BATCH_SIZE``) and recorded in the result's settings.
    """
    if not items:
        raise UsageError("no image could be read; nothing to evaluate")
    if "sanity" in settings.families and not getattr(loaded.model, "differentiable", True):
        raise UsageError(
            f"the sanity metric re-initialises the weights of {loaded.name} layer by layer, "
            "which an ONNX graph run by ONNX Runtime does not allow; pick the others with "
            "--metric (deletion, confidence, road, pointing)"
        )
    explainers = {
        method: Explainer(loaded, replace(settings.explain, method=method))
        for method in dict.fromkeys(methods)
    }
    first = next(iter(explainers.values()))
    if settings.batch_size == AUTO:
        settings = replace(settings, batch_size=auto_batch_size(first, [settings.target]))
    # The first method's choice serves them all (one export, one measurement).
    chosen = None
    for explainer in explainers.values():
        chosen = explainer.use_runtime(settings.batch_size, len(items), scored_passes(settings),
                                       runtime=None if chosen is None else chosen.runtime)  # fmt: skip
    scorer = Scorer(first, settings.explain.chunk_size, passes)
    items, untrusted = screen(scorer, items, settings.batch_size, on_error)
    results = {
        m: MethodResult(m, e.layer_names, runtime=e.offload.settings())
        for m, e in explainers.items()
    }
    if advance is not None:
        stages = len(cascade(loaded.model, settings.stages)) if "sanity" in settings.families else 0
        advance(-len(explainers) * len(items) * (1 + stages))  # the total, told first
    trained = {
        method: faithfulness(explainer, items, settings, results[method], passes, advance)
        for method, explainer in explainers.items()
    }
    if "sanity" in settings.families:
        if items:
            _sanity(loaded, list(explainers), items, settings, trained, results, advance)
        else:
            for result in results.values():
                result.values["sanity_rho"] = []
    return Evaluation(
        loaded.name, list(items), [*errors, *untrusted], list(results.values()), settings
    )
