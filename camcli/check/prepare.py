"""A spec file -> the validated spec, its loaded model and explainer; nothing is explained.

Every problem is reported in one SpecError: the spec's own, the model's, and the cases'
classes. The classes are checked against the model when it loads (even when only the
method or layer is wrong), else against the spec's labels file when it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from camcli.check.spec import CheckSpec, SpecError, parse_spec
from camcli.errors import CamcliError, UsageError
from camcli.explain import Explainer, parse_targets
from camcli.layers import resolve_layer
from camcli.models import LoadedModel, load_model, read_labels
from camcli.startup import resume_gc
from camcli.targets import Target, apply_head


def _resolve_classes(
    spec: CheckSpec, labels: Sequence[str] | None, n: int, problems: list[str]
) -> None:
    """Class names and indices -> indices, for ``n`` classes named by ``labels``."""
    for case in spec.cases:
        where = f"{spec.path}: {case.label}"
        expect = case.expect_class
        if isinstance(expect, str) and not expect.strip().isdigit() and not labels:
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
                (parsed,) = parse_targets([str(expect)], None, labels, n)
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
            (case.target,) = parse_targets([text], None, labels, n)
        except UsageError as exc:
            message = exc.message if exc.message.startswith("target") else f"target: {exc.message}"
            problems.append(f"{where}: {message}")


def _load(spec: CheckSpec, progress: bool, problems: list[str]) -> LoadedModel | None:
    try:
        loaded = load_model(spec.model, progress=progress)
    except CamcliError as exc:
        problems.append(f"{spec.path}: [model]: {exc.message}")
        return None
    if loaded.head == "detection":
        problems.append(
            f"{spec.path}: [model]: {spec.model.model} is a detector; camcli check measures one "
            "class map per image (classifiers, binary and multi-label heads, segmentation), not "
            "boxes"
        )
        return None
    return apply_head(loaded)


def _labels_file_classes(
    spec: CheckSpec, problems: list[str]
) -> tuple[list[str] | None, int | None]:
    """Without a model: the labels file's names, and the class count they (or num_classes)
    give; ``(None, None)`` when the spec has no labels file to read."""
    if spec.model.labels is None:
        return None, None
    try:
        labels = read_labels(spec.model.labels)
    except UsageError as exc:
        message = f"{spec.path}: [model]: {exc.message}"
        if message not in problems:  # a failed load may have said so already
            problems.append(message)
        return None, None
    return labels, spec.model.num_classes or len(labels)


def prepare(
    spec_path: Path,
    *,
    update_baselines: bool = False,
    progress: bool = False,
    runtime: str | None = None,
) -> tuple[CheckSpec, LoadedModel, Explainer]:
    """Validate the whole spec and load its model; a SpecError lists every problem found.
    ``runtime`` (``--runtime``) overrides the spec's ``runtime``.

    No image is explained here: the only forward passes are the explainer's probe on noise
    and, for ``runtime = "auto"`` on a large job, the runtimes' measurement.
    """
    spec, problems = parse_spec(spec_path, update_baselines=update_baselines)
    if spec is None:
        raise SpecError(problems)
    if runtime is not None:
        spec.explain = replace(spec.explain, runtime=runtime)
    loaded = _load(spec, progress, problems) if spec.model_loadable else None
    explainer = None
    if loaded is not None and spec.explainable:
        try:
            explainer = Explainer(loaded, spec.explain)
            explainer.use_runtime(spec.batch_size, images=len(spec.cases))
        except CamcliError as exc:
            problems.append(f"{spec.path}: [model]: {exc.message}")
    elif loaded is not None and "layer" not in spec.bad_model_keys:
        # The method is wrong, but every layer name can still be looked up.
        for name in spec.explain.layers:
            try:
                resolve_layer(loaded.model, name)
            except UsageError as exc:
                problems.append(f"{spec.path}: [model]: {exc.message}")
    if loaded is not None:
        resume_gc()
        _resolve_classes(spec, loaded.labels, loaded.num_classes, problems)
    else:
        labels, n = _labels_file_classes(spec, problems)
        if n is not None:
            _resolve_classes(spec, labels, n, problems)
    if problems:
        raise SpecError(problems)
    assert loaded is not None and explainer is not None
    return spec, loaded, explainer
