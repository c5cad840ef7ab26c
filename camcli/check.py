"""``camcli check``: a model's predictions and maps against a spec's expectations, for CI.

Measures, for each case of a spec (``camcli.spec``):

* ``class``: the rank of the expected class in the softmax prediction (1 = top-1);
  passes when ``rank <= top_k``.
* ``score``: ``p(expected class)``; passes when ``>= min_score``.
* ``pointing`` (pointing game): the map is normalised (``max(M, 0) / max(M)``) and upsampled
  onto the original image exactly like an overlay (``camcli.render.upsample`` over the region
  the model saw); the peak is the pixel ``(x, y)`` of its maximum. Passes when the pixel's
  centre ``(x + 0.5, y + 0.5)`` lies inside any of the boxes.
* ``energy`` (energy-based pointing game, Score-CAM paper): ``sum(M' inside the union of the
  boxes) / sum(M')`` for that upsampled, normalised map ``M'``; passes when ``>= min_energy``.
* ``baseline-pearson`` / ``baseline-iou``: the map against a stored baseline map of the same
  shape. Both are normalised and upsampled to the model's input grid; ``pearson`` is the
  Pearson correlation of the two grids, ``iou`` the intersection over union of their top-20%
  regions (pixels at or above the map's 80th percentile, and above zero).
"""

from __future__ import annotations

import json
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from camcli import resume_gc
from camcli.errors import EXIT_OK, EXIT_SOME_FAILED, CamcliError, InputError, UsageError
from camcli.explain import Explainer, Target, extract_logits, parse_targets, to_model_input
from camcli.images import Box, load_image, model_view
from camcli.models import LoadedModel, load_model
from camcli.render import normalise, overlay, upsample
from camcli.spec import CaseSpec, CheckSpec, SpecError, parse_spec
from camcli.writers import encode_image, encode_npy, ensure_inside, slug, write_atomic

TOP_FRACTION = 0.2  # the share of pixels in the "top region" of the baseline IoU
_UNCHANGED_RTOL = 1e-5  # a rewritten baseline within this of the old peak is "unchanged"


@dataclass
class Outcome:
    """One expectation of one case: what was measured and whether it passed."""

    expectation: str
    passed: bool
    measured: Any
    threshold: Any
    measured_text: str
    threshold_text: str
    error: bool = False

    def message(self) -> str:
        return f"{self.expectation}: measured {self.measured_text}, expected {self.threshold_text}"


@dataclass
class CaseResult:
    case: CaseSpec
    outcomes: list[Outcome] = field(default_factory=list)
    prediction: dict[str, Any] | None = None
    explained: dict[str, Any] | None = None
    peak: tuple[int, int] | None = None
    cam: np.ndarray | None = None
    view_box: Box | None = None
    seconds: float = 0.0
    error: str | None = None
    baseline_update: dict[str, Any] | None = None
    failure_files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)


@dataclass
class Report:
    spec: CheckSpec
    loaded: LoadedModel
    explainer: Explainer
    results: list[CaseResult]
    seconds: float
    updated_baselines: bool = False

    @property
    def outcomes(self) -> list[Outcome]:
        return [o for r in self.results for o in r.outcomes]

    @property
    def exit_code(self) -> int:
        return EXIT_OK if all(r.passed for r in self.results) else EXIT_SOME_FAILED


# --- setup --------------------------------------------------------------------------------


def _resolve_classes(spec: CheckSpec, loaded: LoadedModel, problems: list[str]) -> None:
    """Class names and indices -> indices, now that the model's classes are known."""
    n = loaded.num_classes
    for case in spec.cases:
        where = f"{spec.path}: {case.label}"
        expect = case.expect_class
        if isinstance(expect, str) and not expect.strip().isdigit() and not loaded.labels:
            problems.append(
                f"{where}: expect_class {expect!r} is a class name but the model has no labels; "
                'set labels = "labels.txt" in [model], or give the class index'
            )
        elif isinstance(expect, int) and expect >= n:
            problems.append(
                f"{where}: expect_class {expect} is out of range: the model has {n} classes "
                f"(0..{n - 1})"
            )
        elif expect is not None:
            try:
                (parsed,) = parse_targets([str(expect)], None, loaded.labels, n)
            except UsageError as exc:
                problems.append(f"{where}: expect_class: {exc.message}")
            else:
                if parsed.index is None:
                    problems.append(
                        f"{where}: expect_class must be a class name or index, not {expect!r}"
                    )
                else:
                    case.expect_index = parsed.index
        if expect is not None and case.top_k > n:
            problems.append(f"{where}: top_k {case.top_k}: the model has only {n} classes")
        text = case.target_text
        if text is None:
            case.target = (
                Target(index=case.expect_index) if case.expect_index is not None else Target(rank=1)
            )
            continue
        try:
            (case.target,) = parse_targets([text], None, loaded.labels, n)
        except UsageError as exc:
            message = exc.message if exc.message.startswith("target") else f"target: {exc.message}"
            problems.append(f"{where}: {message}")


def prepare(
    spec_path: Path, *, update_baselines: bool = False, progress: bool = False
) -> tuple[CheckSpec, LoadedModel, Explainer]:
    """Validate the whole spec and load its model; a SpecError lists every problem found.

    No image is explained here: the only forward pass is the explainer's probe on noise.
    """
    spec, problems = parse_spec(spec_path, update_baselines=update_baselines)
    loaded = explainer = None
    if spec is not None:
        m = spec.model
        try:
            loaded = load_model(
                m.model,
                weights=m.weights,
                checkpoint=m.checkpoint,
                num_classes=m.num_classes,
                labels=m.labels,
                device=m.device,
                input_size=m.input_size,
                fit=m.fit,
                progress=progress,
            )
            explainer = Explainer(loaded, method=m.method, layers=m.layers)
            resume_gc()
        except CamcliError as exc:
            problems.append(f"{spec.path}: [model]: {exc.message}")
    if spec is not None and loaded is not None and explainer is not None:
        _resolve_classes(spec, loaded, problems)
    if problems:
        raise SpecError(problems)
    assert spec is not None and loaded is not None and explainer is not None
    return spec, loaded, explainer


# --- measurements -------------------------------------------------------------------------


def _box_mask(rows: slice, cols: slice, shape: tuple[int, int], boxes: Sequence) -> np.ndarray:
    """Which pixels of an upsampled region have their centre inside any of the boxes."""
    ys = rows.start + np.arange(shape[0]) + 0.5
    xs = cols.start + np.arange(shape[1]) + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return mask


def peak_and_energy(
    cam: np.ndarray, view_box: Box, image_shape: tuple[int, int], boxes: Sequence
) -> tuple[tuple[int, int] | None, float]:
    """The map's peak pixel ``(x, y)`` in the original image and its energy inside ``boxes``.

    ``M' = upsample(normalise(cam))`` over the region the model saw, as overlays draw it;
    energy ``= sum(M'[inside]) / sum(M')``. A blank map has no peak and zero energy.
    """
    region, rows, cols = upsample(normalise(cam), view_box, image_shape)
    total = float(region.sum(dtype=np.float64)) if region.size else 0.0
    if total <= 0.0:
        return None, 0.0
    i, j = np.unravel_index(int(np.argmax(region)), region.shape)
    peak = (int(cols.start + j), int(rows.start + i))
    if not boxes:
        return peak, 0.0
    mask = _box_mask(rows, cols, region.shape, boxes)
    return peak, float(region[mask].sum(dtype=np.float64)) / total


def in_boxes(peak: tuple[int, int], boxes: Sequence) -> bool:
    x, y = peak[0] + 0.5, peak[1] + 0.5
    return any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes)


def _grid(cam: np.ndarray, size: int) -> np.ndarray:
    return upsample(normalise(cam), Box(0.0, 0.0, float(size), float(size)), (size, size))[0]


def _top_region(grid: np.ndarray) -> np.ndarray:
    return (grid >= np.quantile(grid, 1.0 - TOP_FRACTION)) & (grid > 0)


def map_similarity(current: np.ndarray, baseline: np.ndarray, size: int) -> tuple[float, float]:
    """``(pearson, iou)`` of two same-shape maps, both normalised and upsampled to ``size``^2.

    ``pearson = cov(a, b) / (std(a) std(b))`` over all pixels (two constant grids: 1 when
    equal, else 0); ``iou = |T(a) & T(b)| / |T(a) | T(b)|`` with ``T`` the top-20% region
    (two blank maps: 1).
    """
    a = _grid(current, size).astype(np.float64).ravel()
    b = _grid(baseline, size).astype(np.float64).ravel()
    if a.std() == 0.0 or b.std() == 0.0:
        pearson = 1.0 if a.std() == b.std() == 0.0 and np.allclose(a, b) else 0.0
    else:
        pearson = float(np.corrcoef(a, b)[0, 1])
    top_a, top_b = _top_region(a), _top_region(b)
    union = int((top_a | top_b).sum())
    iou = float((top_a & top_b).sum()) / union if union else 1.0
    return pearson, iou


def _shape(array: np.ndarray) -> str:
    return "x".join(map(str, array.shape))


def _class_info(loaded: LoadedModel, index: int, probs: np.ndarray) -> dict[str, Any]:
    return {"class_index": index, "label": loaded.label(index), "score": float(probs[index])}


def _named(info: dict[str, Any]) -> str:
    label = info["label"] if info["label"] is not None else f"class {info['class_index']}"
    return f"{label!r} {info['score']:.3f}"


def _measure(
    result: CaseResult,
    loaded: LoadedModel,
    probs: np.ndarray,
    image_shape: tuple[int, int],
    update_baselines: bool,
) -> None:
    case = result.case
    cam = result.cam
    assert cam is not None and result.view_box is not None
    outcomes = result.outcomes
    if case.expect_index is not None:
        p = float(probs[case.expect_index])
        rank = 1 + int((probs > p).sum())
        top = result.prediction
        assert top is not None
        note = "" if rank == 1 else f" (top-1 is {_named(top)})"
        outcomes.append(
            Outcome(
                "class",
                rank <= case.top_k,
                rank,
                case.top_k,
                f"rank {rank}{note}",
                f"rank <= {case.top_k}",
            )
        )
        if case.min_score is not None:
            outcomes.append(
                Outcome(
                    "score",
                    p >= case.min_score,
                    round(p, 6),
                    case.min_score,
                    f"{p:.3f}",
                    f">= {case.min_score:g}",
                )
            )
    if case.boxes:
        peak, energy = peak_and_energy(cam, result.view_box, image_shape, case.boxes)
        result.peak = peak
        boxes = [list(b) for b in case.boxes]
        where = "inside the box" if len(boxes) == 1 else f"inside one of {len(boxes)} boxes"
        if case.pointing:
            hit = peak is not None and in_boxes(peak, case.boxes)
            text = (
                "blank map, no peak"
                if peak is None
                else (f"peak ({peak[0]}, {peak[1]}) " + ("inside" if hit else "outside"))
            )
            outcomes.append(
                Outcome("pointing", hit, list(peak) if peak else None, boxes, text, f"peak {where}")
            )
        if case.min_energy is not None:
            outcomes.append(
                Outcome(
                    "energy",
                    energy >= case.min_energy,
                    round(energy, 6),
                    case.min_energy,
                    f"{energy:.3f}",
                    f">= {case.min_energy:g}",
                )
            )
    if case.baseline is not None and not update_baselines:
        _compare_baseline(result, loaded)


def _compare_baseline(result: CaseResult, loaded: LoadedModel) -> None:
    case = result.case
    cam = result.cam
    assert case.baseline is not None and cam is not None
    baseline = np.load(case.baseline, allow_pickle=False)
    checks = [("baseline-pearson", case.min_similarity), ("baseline-iou", case.min_iou)]
    checks = [(name, low) for name, low in checks if low is not None]
    if baseline.shape != cam.shape:
        text = (
            f"baseline is {_shape(baseline)} but the map is {_shape(cam)} (another layer or "
            "input size?); run --update-baselines if the change is intended"
        )
        for name, low in checks:
            result.outcomes.append(Outcome(name, False, None, low, text, f">= {low:g}"))
        return
    pearson, iou = map_similarity(cam, baseline, loaded.preprocess.crop_size)
    for name, low in checks:
        value = pearson if name == "baseline-pearson" else iou
        label = "r" if name == "baseline-pearson" else "IoU"
        result.outcomes.append(
            Outcome(name, value >= low, round(value, 6), low, f"{label} {value:.3f}", f">= {low:g}")
        )


# --- evaluation ---------------------------------------------------------------------------


def _fail_case(result: CaseResult, reason: str, update_baselines: bool) -> None:
    """An image or model failure during the run: every expectation of the case errors."""
    case = result.case
    result.error = reason
    names = []
    if case.expect_index is not None:
        names.append("class")
        if case.min_score is not None:
            names.append("score")
    if case.boxes:
        names += ["pointing"] if case.pointing else []
        names += ["energy"] if case.min_energy is not None else []
    if case.baseline is not None and not update_baselines:
        names += ["baseline-pearson"] if case.min_similarity is not None else []
        names += ["baseline-iou"] if case.min_iou is not None else []
    for name in names or ["run"]:
        result.outcomes.append(Outcome(name, False, None, None, reason, "-", error=True))


def evaluate(
    spec: CheckSpec, loaded: LoadedModel, explainer: Explainer, *, update_baselines: bool = False
) -> list[CaseResult]:
    """Explain every case's image (in batches) and measure its expectations, in spec order.

    Per batch: one inference forward for the predictions, then one ``explain`` call per
    distinct explained class, so each image's map is computed once, for its own class.
    """
    results = [CaseResult(case) for case in spec.cases]
    size = spec.model.batch_size
    for start in range(0, len(results), size):
        began = time.perf_counter()
        chunk = results[start : start + size]
        ready: list[tuple[CaseResult, np.ndarray, tuple[int, int]]] = []
        for result in chunk:
            try:
                image = load_image(result.case.image)
            except InputError as exc:
                _fail_case(result, exc.message, update_baselines)
                continue
            view, result.view_box = model_view(image, loaded.preprocess)
            ready.append((result, view, (image.height, image.width)))
        if ready:
            try:
                _explain_batch(ready, loaded, explainer, update_baselines)
            except RuntimeError as exc:  # out of memory, a model that fails on this input...
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
                for result, _, _ in ready:
                    result.outcomes.clear()
                    _fail_case(result, f"model failed ({reason})", update_baselines)
        share = (time.perf_counter() - began) / max(1, len(chunk))
        for result in chunk:
            result.seconds = share
    return results


def _explain_batch(
    ready: list[tuple[CaseResult, np.ndarray, tuple[int, int]]],
    loaded: LoadedModel,
    explainer: Explainer,
    update_baselines: bool,
) -> None:
    batch = to_model_input(np.stack([view for _, view, _ in ready]), loaded)
    with torch.inference_mode():
        logits = extract_logits(loaded.model(batch))
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    groups: dict[int, list[int]] = {}
    for i, (result, _, _) in enumerate(ready):
        target: Target = result.case.target
        ranked = np.argsort(-probs[i], kind="stable")
        index = int(target.index) if target.index is not None else int(ranked[target.rank - 1])
        result.prediction = _class_info(loaded, int(ranked[0]), probs[i])
        result.explained = _class_info(loaded, index, probs[i])
        groups.setdefault(index, []).append(i)
    for index, members in groups.items():
        rows = torch.as_tensor(members, device=batch.device)
        maps = explainer.explain(batch.index_select(0, rows), [Target(index=index)]).maps
        for k, i in enumerate(members):
            ready[i][0].cam = maps[k, 0]
    for i, (result, _, shape) in enumerate(ready):
        _measure(result, loaded, probs[i], shape, update_baselines)


# --- outputs ------------------------------------------------------------------------------


def write_baselines(results: list[CaseResult], console: Console, size: int) -> None:
    """Write each case's map as its new baseline (float32 .npy, atomically); say what changed.

    Runs only after every map is computed, and writes nothing when any baseline case could
    not be computed, so the set on disk always comes from one model. ``size`` is the grid
    the similarity to the old baseline is measured on (the model's input size).
    """
    missing = [r.case for r in results if r.case.baseline is not None and r.cam is None]
    if missing:
        names = ", ".join(repr(c.name) for c in missing)
        console.print(f"[bold red]not updating any baseline:[/] no map for {escape(names)}")
        return
    for result in results:
        case = result.case
        if case.baseline is None or result.cam is None:
            continue
        cam = np.asarray(result.cam, dtype=np.float32)
        status: dict[str, Any] = {"path": str(case.baseline)}
        old = None
        if case.baseline.is_file():
            try:
                old = np.load(case.baseline, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                status["old_unreadable"] = True
        if old is None:
            status["status"] = "changed" if status.get("old_unreadable") else "new"
        elif (
            old.shape == cam.shape
            and old.dtype.kind == "f"
            and np.isfinite(old).all()
            and (
                np.abs(old.astype(np.float64) - cam).max()
                <= _UNCHANGED_RTOL * max(float(np.abs(old).max()), 1e-12)
            )
        ):
            status["status"] = "unchanged"
        else:
            status["status"] = "changed"
            if old.shape == cam.shape and old.ndim == 2:
                pearson, iou = map_similarity(cam, old.astype(np.float32), size)
                status.update(pearson=round(pearson, 6), iou=round(iou, 6))
            else:
                status["old_shape"] = list(old.shape)
        if status["status"] != "unchanged":
            write_atomic(case.baseline, encode_npy(cam))
        result.baseline_update = status
        detail = ""
        if "pearson" in status:
            detail = f" (vs the old one: r {status['pearson']:.3f}, IoU {status['iou']:.3f})"
        elif "old_unreadable" in status:
            detail = " (the old one could not be read)"
        elif "old_shape" in status:
            detail = f" (the old one was {'x'.join(map(str, status['old_shape']))})"
        console.print(
            f"{status['status']:>9}  {escape(str(case.baseline))}{detail}", highlight=False
        )


def failure_name(case: CaseSpec, suffix: str = "") -> str:
    """``<index, 2 digits>-<case name, slugged><suffix>.png``, e.g. ``03-cat_on_sofa.png``."""
    return f"{case.index:02d}-{slug(case.name, 'case')}{suffix}.png"


def _draw_boxes(rgb: np.ndarray, case: CaseSpec, peak: tuple[int, int] | None) -> np.ndarray:
    thick = max(1, round(min(rgb.shape[:2]) / 200))
    for x0, y0, x1, y1 in case.boxes:
        start = (round(x0), round(y0))
        end = (max(round(x0), round(x1) - 1), max(round(y0), round(y1) - 1))
        cv2.rectangle(rgb, start, end, (0, 255, 0), thick)
    if peak is not None:
        marker = max(7, round(min(rgb.shape[:2]) / 25))
        cv2.drawMarker(rgb, peak, (255, 255, 255), cv2.MARKER_CROSS, marker, thick + 1)
        cv2.drawMarker(rgb, peak, (0, 0, 0), cv2.MARKER_CROSS, marker, thick)
    return rgb


def save_failures(results: list[CaseResult], folder: Path) -> None:
    """For each failing case, its overlay (boxes in green, the peak as a cross); with a failed
    baseline expectation, the baseline's overlay too (``...baseline.png``)."""
    for result in results:
        if result.passed or result.cam is None or result.view_box is None:
            continue
        case = result.case
        image = np.asarray(load_image(case.image))
        outputs = [(failure_name(case), result.cam)]
        if any(o.expectation.startswith("baseline") and not o.passed for o in result.outcomes):
            assert case.baseline is not None
            baseline = np.load(case.baseline, allow_pickle=False)
            outputs.append((failure_name(case, ".baseline"), baseline))
        for name, cam in outputs:
            path = folder / name
            ensure_inside(folder, path)
            peak, _ = peak_and_energy(cam, result.view_box, image.shape[:2], ())
            rgb = _draw_boxes(overlay(image, cam, result.view_box), case, peak)
            write_atomic(path, encode_image(rgb, "png"))
            result.failure_files.append(str(path))


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "expectation": outcome.expectation,
        "passed": outcome.passed,
        "measured": outcome.measured,
        "threshold": outcome.threshold,
        "message": outcome.message(),
    }


def report_json(report: Report) -> dict[str, Any]:
    outcomes = report.outcomes
    failed_cases = [r for r in report.results if not r.passed]
    cases = []
    for r in report.results:
        row: dict[str, Any] = {
            "index": r.case.index,
            "name": r.case.name,
            "image": str(r.case.image),
            "passed": r.passed,
            "error": r.error,
            "prediction": r.prediction,
            "explained": r.explained,
            "peak": list(r.peak) if r.peak else None,
            "expectations": [_outcome_json(o) for o in r.outcomes],
        }
        if r.baseline_update is not None:
            row["baseline_update"] = r.baseline_update
        if r.failure_files:
            row["failure_overlays"] = r.failure_files
        cases.append(row)
    return {
        "spec": str(report.spec.path),
        "passed": report.exit_code == EXIT_OK,
        "exit_code": report.exit_code,
        "model": {
            "name": report.loaded.name,
            "method": report.explainer.method_name,
            "layers": report.explainer.layer_names,
            "input_size": report.loaded.preprocess.crop_size,
            "device": str(report.loaded.device),
        },
        "summary": {
            "cases": len(report.results),
            "failed_cases": len(failed_cases),
            "expectations": len(outcomes),
            "passed": sum(o.passed for o in outcomes),
            "failed": sum(not o.passed for o in outcomes),
        },
        "seconds": round(report.seconds, 3),
        "updated_baselines": report.updated_baselines,
        "cases": cases,
    }


def junit_xml(report: Report) -> bytes:
    """One ``<testcase>`` per expectation (``classname`` = the spec, ``name`` = ``case: what``);
    a failed one holds ``<failure message="...measured ..., expected ...">``."""
    outcomes = report.outcomes
    failures = sum(not o.passed and not o.error for o in outcomes)
    errors = sum(o.error for o in outcomes)
    spec_name = str(report.spec.path)
    common = {
        "tests": str(len(outcomes)),
        "failures": str(failures),
        "errors": str(errors),
        "time": f"{report.seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": "camcli check", **common})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": spec_name,
            **common,
            "skipped": "0",
            "timestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "hostname": socket.gethostname(),
        },
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("model", report.loaded.name),
        ("method", report.explainer.method_name),
        ("layers", "+".join(report.explainer.layer_names)),
        ("input_size", str(report.loaded.preprocess.crop_size)),
    ):
        ET.SubElement(properties, "property", {"name": key, "value": value})
    classname = "camcli." + slug(report.spec.path.stem, "spec")
    for result in report.results:
        case = result.case
        share = result.seconds / max(1, len(result.outcomes))
        for outcome in result.outcomes:
            element = ET.SubElement(
                suite,
                "testcase",
                {
                    "classname": classname,
                    "name": f"{case.name}: {outcome.expectation}",
                    "file": str(report.spec.path),
                    "time": f"{share:.3f}",
                },
            )
            if outcome.passed:
                continue
            kind = "error" if outcome.error else "failure"
            detail = [
                f"spec: {report.spec.path}, {case.label}",
                f"image: {case.image}",
                outcome.message(),
            ]
            if result.explained:
                detail.append(f"map of: {_named(result.explained)}")
            if result.prediction:
                detail.append(f"top-1: {_named(result.prediction)}")
            detail += [f"overlay: {f}" for f in result.failure_files]
            failure = ET.SubElement(
                element, kind, {"message": outcome.message(), "type": f"camcli.{kind}"}
            )
            failure.text = "\n".join(detail)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _table(report: Report) -> Table:
    table = Table(
        box=None, title=f"camcli check {escape(str(report.spec.path))}", title_justify="left"
    )
    for column in ("case", "expectation", "measured", "threshold", "result"):
        table.add_column(column, overflow="fold")
    for result in report.results:
        first = True
        for outcome in result.outcomes:
            verdict = (
                "[green]pass[/]"
                if outcome.passed
                else ("[bold red]ERROR[/]" if outcome.error else "[bold red]FAIL[/]")
            )
            table.add_row(
                escape(result.case.name) if first else "",
                outcome.expectation,
                escape(outcome.measured_text),
                escape(outcome.threshold_text),
                verdict,
            )
            first = False
    return table


def _model_label(name: str) -> str:
    """``/long/path/nets.py:build`` -> ``nets.py:build``; torchvision names as they are."""
    where, _, attr = name.rpartition(":")
    return f"{Path(where).name}:{attr}" if where.endswith(".py") else name


def summary_line(report: Report) -> str:
    outcomes = report.outcomes
    failed = [r for r in report.results if not r.passed]
    passed = sum(o.passed for o in outcomes)
    head = "PASS" if not failed else "FAIL"
    text = (
        f"{head}: {passed} of {len(outcomes)} expectations passed in {len(report.results)} "
        f"cases ({_model_label(report.loaded.name)}, {report.explainer.method_name} at "
        f"{'+'.join(report.explainer.layer_names)}, {report.seconds:.1f} s)"
    )
    if report.updated_baselines:
        counts: dict[str, int] = {}
        for r in report.results:
            if r.baseline_update is not None:
                status = r.baseline_update["status"]
                counts[status] = counts.get(status, 0) + 1
        text += "; baselines: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    if failed:
        names = ", ".join(repr(r.case.name) for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        text += f"; failing cases: {names}{more}"
    return text


def run_check(
    spec_path: Path,
    *,
    update_baselines: bool = False,
    junit: Path | None = None,
    json_out: bool = False,
    save_failures_to: Path | None = None,
    console: Console | None = None,
) -> int:
    """Validate the spec (SpecError, exit 2, before any image is explained), run it, report.

    Returns 0 when every expectation holds, 1 otherwise. Baselines are written (with
    ``update_baselines``) only after every case has been computed.
    """
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    if junit is not None and junit.is_dir():
        raise UsageError(f"--junit {junit}: is a directory; give a file name such as report.xml")
    if save_failures_to is not None and save_failures_to.exists() and not save_failures_to.is_dir():
        raise UsageError(f"--save-failures {save_failures_to}: exists and is not a directory")
    began = time.perf_counter()
    spec, loaded, explainer = prepare(
        spec_path, update_baselines=update_baselines, progress=console.is_terminal
    )
    results = evaluate(spec, loaded, explainer, update_baselines=update_baselines)
    report = Report(spec, loaded, explainer, results, 0.0, update_baselines)
    if update_baselines:
        write_baselines(results, console, loaded.preprocess.crop_size)
    if save_failures_to is not None and report.exit_code != EXIT_OK:
        save_failures_to.mkdir(parents=True, exist_ok=True)
        save_failures(results, save_failures_to)
    report.seconds = time.perf_counter() - began
    if report.outcomes:
        console.print(_table(report))
    style = "bold green" if report.exit_code == EXIT_OK else "bold red"
    console.print(f"[{style}]{escape(summary_line(report))}[/]")
    if json_out:
        sys.stdout.write(json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n")
        sys.stdout.flush()
    if junit is not None:
        write_atomic(junit, junit_xml(report))
    return report.exit_code
