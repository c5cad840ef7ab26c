"""What a map explains: heads, small callables over the model's output, and their targets.

Every method differentiates (or perturbs and re-scores) one matrix of scores, ``S = head(output)``
of shape (rows, K), picking for image n and target t the column ``columns[n, t]``. A head turns
whatever the model returns into that matrix, as pytorch-grad-cam's target callables do:

- ``softmax``: the logits; the manifest's scores are softmax probabilities (the default).
- ``binary``: one logit ``z`` -> ``[-z, z]``: column 1 "positive" explains ``z`` and column 0
  "negative" explains ``-z`` (pytorch-grad-cam's ``BinaryClassifierOutputTarget``); scores are
  ``sigmoid`` of the column (``sigmoid(z)``, ``1 - sigmoid(z)``).
- ``multilabel``: the logits; scores are ``sigmoid(z_c)`` and, by default, every label whose
  score reaches ``threshold`` gets a map (pytorch-grad-cam's ``ClassifierOutputTarget`` on a
  sigmoid head).
- ``segmentation``: ``S_c = sum_{ij} y_cij [argmax_k y_kij = c]`` over the (N, K, H, W) output
  ``y`` (``out`` of torchvision's dict): the class's logits summed over the pixels it wins
  (``SemanticSegmentationTarget``); ranks order classes by that area, and the score is the
  class's share of the pixels.
- ``detection``: one column per detected box ``b`` (label ``l``) chosen on the first pass,
  ``S_b = IoU(b, o) + score(o)`` where ``o`` is the output box of highest IoU with ``b``, when
  that IoU exceeds 0.5 and ``o`` has label ``l``, else 0 (``FasterRCNNBoxScoreTarget`` for one
  box). Boxes scoring below ``score_threshold`` get no map.

The argmax masks of segmentation are taken from the very output being scored: for gradient
methods that equals pytorch-grad-cam's mask fixed on the first pass (the indicator has no
gradient); the perturbation methods (Score-CAM, Ablation-CAM) re-take the mask of each
perturbed input, where pytorch-grad-cam keeps the first one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.ops import box_iou

from camcli.errors import UsageError
from camcli.layers import first_tensor
from camcli.models.loaded import LoadedModel

HEADS = ("auto", "softmax", "binary", "multilabel")
BINARY_LABELS = ["negative", "positive"]
#: The IoU above which a re-detected box counts as the box explained (pytorch-grad-cam's).
BOX_IOU_THRESHOLD = 0.5
#: An image's one record when it has none of the run's targets, per head.
NOTHING_FOUND = {
    "softmax": "no target",
    "binary": "no target",
    "multilabel": "no label reaches --threshold",
    "segmentation": "no class of the targets is in the picture",
    "detection": "no box reaches --score-threshold",
}
#: Detected boxes explained per image by default (``--top-k`` changes it).
DEFAULT_MAX_BOXES = 10


@dataclass(frozen=True)
class Target:
    """What to explain: the class at a rank of the prediction, a fixed class index, or the
    ``box``-th detected box. With ``threshold`` an image gets the map only when the target's
    score reaches it (multi-label: every label above ``--threshold``)."""

    rank: int | None = None
    index: int | None = None
    box: int | None = None
    threshold: float | None = None
    #: The n-th concept of a concept method (``dff``), 1-based; its class comes with it.
    concept: int | None = None

    @property
    def tag(self) -> str:
        if self.box is not None:
            return f"box{self.box}"
        if self.concept is not None:
            return f"concept{self.concept}"
        return f"top{self.rank}" if self.rank is not None else f"class{self.index}"


@dataclass
class Chosen:
    """The targets of a batch made concrete: per image n and target t (all (N, T) tensors).

    ``columns`` index the head's matrix ``S`` (what methods explain); ``classes`` are the
    class indices the manifest reports; ``scores`` its probabilities; ``present`` is False
    where the image has no such target (no box, a label under the threshold). ``boxes[n][t]``
    is a detected box (x0, y0, x1, y1) in model-input pixels, else None.
    """

    matrix: torch.Tensor
    columns: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    present: torch.Tensor
    boxes: list[list[tuple[float, float, float, float] | None]] | None = None


def extract_logits(output: Any) -> torch.Tensor:
    """Logits from whatever the model returns: a tensor, a tuple, a dict or an object."""
    if isinstance(output, torch.Tensor):
        logits = output
    elif hasattr(output, "logits") and isinstance(output.logits, torch.Tensor):
        logits = output.logits
    elif isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        logits = output["logits"]
    else:
        found = first_tensor(output)
        if found is None:
            raise UsageError(f"the model returned {type(output).__name__}, not logits")
        logits = found
    if logits.ndim != 2:
        raise UsageError(f"the model's output has shape {tuple(logits.shape)}, expected (N, K)")
    return logits


#: Why an image has no result when the model's output on it is not finite: ``run``'s error
#: record, ``check``'s failed case and ``evaluate``'s skipped image all say this.
OUTPUT_NOT_FINITE = "the model's output is not finite (NaN or inf in the logits)"
#: Why no class of an image ranks above another.
SCORES_EQUAL = "all scores are equal (an untrained or zero head?)"


def output_problems(matrix: torch.Tensor) -> list[str | None]:
    """Per image (row of a head's (rows, K) scores): ``OUTPUT_NOT_FINITE`` where a score is
    NaN or inf, else None.

    The one rule for trusting a model's output, shared by ``run``, ``check`` and ``evaluate``:
    such an image has no result. Its probabilities would be NaN, and NaN compares false with
    everything, so the expected class of a diverged model would come out ranked first.
    """
    finite = torch.isfinite(matrix.detach()).all(dim=1)
    return [None if ok else OUTPUT_NOT_FINITE for ok in finite.tolist()]


def scores_equal(matrix: torch.Tensor) -> list[bool]:
    """Per image (row of (rows, K) scores), whether all its scores are equal (``max == min``:
    a zero head, a constant model). Then no class ranks above another, and neither a rank nor
    a score says anything about the expected class."""
    plain = matrix.detach()
    return (plain.amax(dim=1) == plain.amin(dim=1)).tolist()


class Head:
    """``softmax``: the model's logits, scored by softmax probabilities."""

    name = "softmax"

    def __call__(self, output: Any) -> torch.Tensor:
        """The (rows, K) matrix of scores that maps explain."""
        return extract_logits(output)

    def probabilities(self, matrix: torch.Tensor) -> torch.Tensor:
        return torch.softmax(matrix, dim=1)

    def ranking(self, matrix: torch.Tensor) -> torch.Tensor:
        """What ``topN`` ranks (the logits; segmentation: the areas)."""
        return matrix

    def ranked_present(self, values: torch.Tensor) -> torch.Tensor:
        """Whether the classes at a rank exist, from their (N, 1) ranking values."""
        return torch.ones(values.shape[0], dtype=torch.bool, device=values.device)

    def choose(self, output: Any, matrix: torch.Tensor, targets: Sequence[Target]) -> Chosen:
        """The columns, classes, scores and presence of ``targets`` for each image."""
        with torch.no_grad():
            plain = matrix.detach().float()
            ranking = self.ranking(plain)
            n = plain.shape[0]
            max_rank = max((t.rank for t in targets if t.rank is not None), default=0)
            ranked = ranking.topk(max_rank, dim=1).indices if max_rank else None
            columns = []
            for target in targets:
                if target.rank is not None:
                    assert ranked is not None
                    columns.append(ranked[:, target.rank - 1])
                else:
                    columns.append(torch.full((n,), int(target.index), device=plain.device))
            chosen = torch.stack(columns, dim=1).long()
            scores = self.probabilities(plain).gather(1, chosen)
            present = torch.ones_like(chosen, dtype=torch.bool)
            for t, target in enumerate(targets):
                if target.threshold is not None:
                    present[:, t] = scores[:, t] >= target.threshold
                elif target.rank is not None:
                    present[:, t] = self.ranked_present(ranking.gather(1, chosen[:, t : t + 1]))
        return Chosen(matrix, chosen, chosen, scores, present)


class BinaryHead(Head):
    """One logit ``z`` -> ``[-z, z]`` (negative, positive), scored by ``sigmoid``."""

    name = "binary"

    def __call__(self, output: Any) -> torch.Tensor:
        logits = extract_logits(output)
        if logits.shape[1] != 1:
            raise UsageError(
                f"--head binary needs one output, the model gives {logits.shape[1]}; "
                "use --head softmax or multilabel"
            )
        return torch.cat([-logits, logits], dim=1)

    def probabilities(self, matrix: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(matrix)


class MultilabelHead(Head):
    """Independent sigmoid labels: the logits, scored by ``sigmoid``."""

    name = "multilabel"

    def probabilities(self, matrix: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(matrix)


class SegmentationHead(Head):
    """(N, K, H, W) class logits -> ``S_c = sum y_c [argmax y = c]`` (N, K)."""

    name = "segmentation"

    def __call__(self, output: Any) -> torch.Tensor:
        out = output["out"] if isinstance(output, dict) and "out" in output else output
        out = first_tensor(out)
        if out is None or out.ndim != 4:
            shape = None if out is None else tuple(out.shape)
            raise UsageError(f"a segmentation model's output should be (N, K, H, W), not {shape}")
        winners = out.detach().argmax(dim=1, keepdim=True)
        mask = torch.zeros_like(out).scatter_(1, winners, 1.0)
        # Two sums, not one: the area (mask alone) ranks the classes in ``choose``.
        self._area = mask.sum(dim=(2, 3)).float()
        return (out * mask).sum(dim=(2, 3))

    def ranking(self, matrix: torch.Tensor) -> torch.Tensor:
        return self._area.to(matrix.device)

    def ranked_present(self, values: torch.Tensor) -> torch.Tensor:
        return values[:, 0] > 0  # a rank past the classes in the picture has no mask

    def probabilities(self, matrix: torch.Tensor) -> torch.Tensor:
        area = self._area.to(matrix.device)
        return area / area.sum(dim=1, keepdim=True).clamp_min(1.0)


class DetectionHead(Head):
    """torchvision detection output (a list of dicts: boxes, labels, scores) -> one column per
    chosen box, ``IoU + score`` of its re-detection (``FasterRCNNBoxScoreTarget``)."""

    name = "detection"

    def __init__(self, score_threshold: float = 0.5) -> None:
        self.score_threshold = score_threshold
        self.boxes: torch.Tensor | None = None  # (B, 4) the boxes explained, set by choose
        self.labels: torch.Tensor | None = None

    def __call__(self, output: Any) -> torch.Tensor:
        if not isinstance(output, (list, tuple)) or not all(isinstance(o, dict) for o in output):
            raise UsageError("a detection model should return a list of dicts (boxes, scores)")
        rows = []
        for found in output:
            scores = found["scores"]
            if self.boxes is None:
                # Before boxes are chosen (the setup probe): all detections' scores.
                rows.append(scores.sum().reshape(1))
                continue
            target_boxes = self.boxes.to(scores.device)
            if len(scores) == 0:
                rows.append(scores.new_zeros(len(target_boxes)))
                continue
            iou = box_iou(target_boxes, found["boxes"])  # (B, M)
            best, index = iou.max(dim=1)
            same = found["labels"][index] == self.labels.to(scores.device)
            hit = (best > BOX_IOU_THRESHOLD) & same
            rows.append(torch.where(hit, best + scores[index], torch.zeros_like(best)))
        return torch.stack(rows)

    def probabilities(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix

    def choose(self, output: Any, matrix: torch.Tensor, targets: Sequence[Target]) -> Chosen:
        slots = len(targets)
        picked: list[list[tuple[float, float, float, float] | None]] = []
        boxes, labels, classes, scores, present = [], [], [], [], []
        for found in output:
            keep = found["scores"].detach() >= self.score_threshold
            order = found["scores"].detach()[keep].argsort(descending=True)
            kept_boxes = found["boxes"].detach()[keep][order].float()
            kept_labels = found["labels"][keep][order]
            kept_scores = found["scores"].detach()[keep][order].float()
            row: list[tuple[float, float, float, float] | None] = []
            for target in targets:
                j = (target.box or 1) - 1
                if j < len(kept_boxes):
                    boxes.append(kept_boxes[j])
                    labels.append(kept_labels[j])
                    classes.append(int(kept_labels[j]))
                    scores.append(float(kept_scores[j]))
                    present.append(True)
                    row.append(tuple(float(v) for v in kept_boxes[j].tolist()))  # type: ignore[arg-type]
                else:
                    # An empty slot: a box no output can match (label -1), score 0.
                    boxes.append(kept_boxes.new_zeros(4))
                    labels.append(torch.tensor(-1, device=kept_labels.device))
                    classes.append(0)
                    scores.append(0.0)
                    present.append(False)
                    row.append(None)
            picked.append(row)
        n = len(output)
        self.boxes = torch.stack(boxes) if boxes else torch.zeros(0, 4)
        self.labels = torch.stack(labels).long() if labels else torch.zeros(0, dtype=torch.long)
        device = matrix.device
        bound = self(output)  # (N, N * T): every image's boxes scored on every output
        columns = torch.arange(n * slots, device=device).view(n, slots)
        return Chosen(
            bound,
            columns,
            torch.tensor(classes, device=device).view(n, slots),
            torch.tensor(scores, device=device).view(n, slots),
            torch.tensor(present, device=device).view(n, slots),
            picked,
        )


def make_head(name: str, score_threshold: float = 0.5) -> Head:
    """The head called ``name``: softmax, binary, multilabel, segmentation or detection."""
    heads: dict[str, type[Head]] = {
        "softmax": Head,
        "binary": BinaryHead,
        "multilabel": MultilabelHead,
        "segmentation": SegmentationHead,
    }
    if name == "detection":
        return DetectionHead(score_threshold)
    if name not in heads:
        raise UsageError(f"unknown head {name!r} (use {', '.join(HEADS)})")
    return heads[name]()


def resolve_head(requested: str, task: str, num_outputs: int) -> str:
    """``--head`` against the model: ``auto`` is the model's task (detection, segmentation),
    else ``binary`` for one output and ``softmax`` for more."""
    if requested not in HEADS:
        raise UsageError(f"unknown --head {requested!r} (use {', '.join(HEADS)})")
    if task in ("detection", "segmentation"):
        if requested != "auto":
            raise UsageError(f"--head {requested} does not apply to a {task} model")
        return task
    if requested == "auto":
        return "binary" if num_outputs == 1 else "softmax"
    if requested == "binary" and num_outputs != 1:
        raise UsageError(f"--head binary needs a model with one output; this one has {num_outputs}")
    return requested


def apply_head(loaded: LoadedModel, requested: str = "auto") -> LoadedModel:
    """Set ``loaded.head`` from ``--head`` (``resolve_head``); a binary head's two columns
    are labelled ``negative`` and ``positive``."""
    loaded.head = resolve_head(requested, loaded.head, loaded.num_classes)
    if loaded.head == "binary":
        loaded.num_classes, loaded.labels = 2, list(BINARY_LABELS)
    return loaded


def head_targets(
    head: str,
    given: Sequence[str],
    top_k: int | None,
    parse: Callable[[], list[Target]],
    num_classes: int,
    threshold: float = 0.5,
) -> list[Target]:
    """The targets of a run for its head: ``parse()`` reads ``given`` (``--target``) and
    ``top_k`` as for any classifier, except that with neither a multi-label head explains
    every label reaching ``threshold``, and a detector explains its ``top_k`` (default 10)
    best boxes (those above its score threshold)."""
    if head == "detection":
        if given:
            raise UsageError("a detection model's targets are its boxes: use --top-k N (N boxes)")
        return [Target(box=b) for b in range(1, (top_k or DEFAULT_MAX_BOXES) + 1)]
    if head == "multilabel" and not given and top_k is None:
        if not 0.0 <= threshold <= 1.0:
            raise UsageError("--threshold must be between 0 and 1")
        return [Target(index=c, threshold=threshold) for c in range(num_classes)]
    return parse()
