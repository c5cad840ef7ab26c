"""A validated spec and its model -> one CaseResult per case: explain in batches, measure."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from camcli.check.baselines import compare_baseline
from camcli.check.expectations import measure_case
from camcli.check.faithfulness import measure_faithfulness, outcome_names
from camcli.check.results import CaseResult, Outcome, class_info
from camcli.check.spec import CheckSpec
from camcli.errors import InputError
from camcli.explain import Explainer, to_model_input
from camcli.images import load_image, model_view
from camcli.models import LoadedModel
from camcli.targets import Target, output_problems, scores_equal


def _fail_case(result: CaseResult, reason: str, update_baselines: bool) -> None:
    """An image or model failure during the run (an unreadable image, a model output that is
    not finite): every expectation of the case errors, with ``reason``."""
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
    names += outcome_names(result)
    for name in names or ["run"]:
        result.outcomes.append(
            Outcome(name, False, None, None, reason, "-", error=True, reason=reason)
        )


def run_cases(
    spec: CheckSpec, loaded: LoadedModel, explainer: Explainer, *, update_baselines: bool = False
) -> list[CaseResult]:
    """Explain every case's image (in batches) and measure its expectations, in spec order.

    Per batch: one inference forward for the predictions, then one ``explain`` call per
    distinct explained class, so each image's map is computed once, for its own class.
    """
    results = [CaseResult(case) for case in spec.cases]
    size = spec.batch_size
    for result in results:
        if result.case.video:
            began = time.perf_counter()
            _run_video_case(result, loaded, explainer, size, update_baselines)
            result.seconds = time.perf_counter() - began
    images = [r for r in results if not r.case.video]
    for start in range(0, len(images), size):
        began = time.perf_counter()
        chunk = images[start : start + size]
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
        # The head's scores (softmax, sigmoid, a segmentation class's share of the pixels).
        scores = explainer.head(loaded.model(batch)).float()
        probs_t = explainer.head.probabilities(scores)
    # A case whose model output is not finite has no prediction and no map: `run`'s rule.
    problems = output_problems(scores)
    tied = scores_equal(probs_t)
    probs = probs_t.cpu().numpy()
    groups: dict[int, list[int]] = {}
    explained: dict[int, int] = {}
    for i, (result, _, _) in enumerate(ready):
        if problems[i] is not None:
            continue
        target: Target = result.case.target
        ranked = np.argsort(-probs[i], kind="stable")
        index = int(target.index) if target.index is not None else int(ranked[target.rank - 1])
        result.prediction = class_info(loaded, int(ranked[0]), probs[i])
        result.explained = class_info(loaded, index, probs[i])
        explained[i] = index
        groups.setdefault(index, []).append(i)
    for index, members in groups.items():
        rows = torch.as_tensor(members, device=batch.device)
        explanation = explainer.explain(batch.index_select(0, rows), [Target(index=index)])
        for k, i in enumerate(members):
            problems[i] = explanation.problems[k] if explanation.problems else None
            if problems[i] is None:
                ready[i][0].cam = explanation.maps[k, 0]
    measured = []
    for i, (result, _, shape) in enumerate(ready):
        if problems[i] is not None:
            _fail_case(result, problems[i], update_baselines)
            continue
        measure_case(result, probs[i], shape, tied[i])
        if result.case.baseline is not None and not update_baselines:
            compare_baseline(result, loaded.preprocess.crop_size)
        measured.append(i)
    if measured:
        rows = torch.as_tensor(measured, device=batch.device)
        measure_faithfulness(
            [ready[i][0] for i in measured],
            explainer,
            batch.index_select(0, rows),
            [explained[i] for i in measured],
        )


def _run_video_case(
    result: CaseResult,
    loaded: LoadedModel,
    explainer: Explainer,
    size: int,
    update_baselines: bool,
) -> None:
    """A video case: every frame of its range explained (in batches) and measured as an image
    case is; each expectation passes when it holds on every frame, and shows the first frame
    where it fails (or, all passing, the frame where its value is lowest)."""
    from camcli.video.decode import VideoReader

    case = result.case
    first, last = case.frames if case.frames is not None else (0, None)
    frames: list[tuple[int, CaseResult]] = []
    try:
        with VideoReader(case.image) as reader:
            ready: list[tuple[CaseResult, np.ndarray, tuple[int, int]]] = []
            for frame in reader.frames():
                if frame.index < first:
                    continue
                if last is not None and frame.index > last:
                    break
                one = CaseResult(case, frame=frame.rgb)
                view, one.view_box = model_view(Image.fromarray(frame.rgb), loaded.preprocess)
                ready.append((one, view, frame.rgb.shape[:2]))
                frames.append((frame.index, one))
                if len(ready) == size:
                    _measured(ready, loaded, explainer, update_baselines)
                    ready = []
            if ready:
                _measured(ready, loaded, explainer, update_baselines)
            seen = reader.decoded
    except InputError as exc:
        _fail_case(result, exc.message, update_baselines)
        return
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "RuntimeError"
        _fail_case(result, f"model failed ({reason})", update_baselines)
        return
    if not frames or (last is not None and frames[-1][0] < last):
        _fail_case(result, f"{case.image}: frames {first} to {last} asked for, the video has "
                   f"{seen}", update_baselines)  # fmt: skip
        return
    chosen = frames[0][1]
    count = min(len(one.outcomes) for _, one in frames)  # a frame that failed has its own
    for k in range(count):
        failing = [(i, one) for i, one in frames if not one.outcomes[k].passed]
        if failing:
            index, one = failing[0]
        else:
            measured = [(one.outcomes[k].measured, i, one) for i, one in frames]
            numbers = [m for m in measured if isinstance(m[0], int | float)]
            _, index, one = min(numbers, key=lambda m: m[0]) if numbers else measured[0]
        picked = one.outcomes[k]
        text = f"frame {index}: {picked.measured_text}"
        if failing:
            text += f" ({len(failing)} of {len(frames)} frames fail)"
            chosen = one if chosen.passed else chosen
        result.outcomes.append(replace(picked, measured_text=text))
    result.prediction, result.explained = chosen.prediction, chosen.explained
    result.cam, result.view_box, result.peak = chosen.cam, chosen.view_box, chosen.peak
    result.frame = chosen.frame


def _measured(
    ready: list[tuple[CaseResult, np.ndarray, tuple[int, int]]],
    loaded: LoadedModel,
    explainer: Explainer,
    update_baselines: bool,
) -> None:
    """``_explain_batch`` for a video's frames; a frame that passed lets go of its pixels
    (only a failing frame is drawn), so a long range holds no more than a batch of them."""
    _explain_batch(ready, loaded, explainer, update_baselines)
    for one, _, _ in ready:
        if one.passed:
            one.frame = None
