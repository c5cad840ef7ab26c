"""A spec file -> the validated spec, its loaded model and explainer; nothing is explained."""

from __future__ import annotations

from pathlib import Path

from camcli import resume_gc
from camcli.errors import CamcliError, UsageError
from camcli.explain import Explainer, Target, parse_targets
from camcli.models import LoadedModel, load_model
from camcli.spec import CheckSpec, SpecError, parse_spec


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
