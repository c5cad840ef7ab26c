"""``--runtime``: which runtime runs the forward-only passes, and why (the ``Offload``).

``torch`` keeps everything in PyTorch. ``onnxruntime`` / ``openvino`` export the model once
(``camcli.runtimes.export``) and run there, on the CPU, in float32 (OpenVINO at ``--precision``
when that says bf16 or fp16; ONNX Runtime only in float32):

- the forward-only passes (``scores``): the Score-CAM family's and the black-box methods'
  masked inputs, and every perturbed input of ``evaluate``;
- for methods that read a layer from one forward pass (the gradient methods, CAM, the main
  pass of the others), the part of the model up to the layer (``split``), the rest in PyTorch
  with autograd. Where the model cannot be cut there exactly, that part stays in PyTorch and
  the reason is said once.

``auto`` (the default) follows this rule, each step's reason kept in the ``Offload``:

1. PyTorch, when the model is not on the CPU, is an ONNX file (ONNX Runtime runs it already),
   explains a detector or a segmenter, or the method has no pass a runtime can run;
2. PyTorch, when neither runtime is installed;
3. PyTorch, when the job's forward passes would take PyTorch less than ``AUTO_MIN_SECONDS``
   (their count times one warm pass of the explainer; fewer than ``AUTO_MIN_PASSES`` passes
   when that time is unknown) and the model was never exported at this size, or less than
   ``AUTO_MIN_SECONDS_CACHED`` (``AUTO_MIN_PASSES_CACHED``) even when it was: the export and
   the measurement, seconds each, would cost more than they save;
4. otherwise each installed runtime and PyTorch run the same random batch, of the size the
   passes will use, twice each, interleaved; a runtime whose scores differ from PyTorch's by
   more than ``TOLERANCE`` of their peak is out, and the fastest of the rest wins if it beats
   PyTorch by ``MARGIN`` (else PyTorch).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from camcli.errors import CamcliWarning, UsageError, install_extra
from camcli.runtimes.export import ExportFailed, cache_root, exported, fingerprint
from camcli.runtimes.sessions import PACKAGES, Session, installed, open_session, require
from camcli.runtimes.split import SplitModel, SplitRefused, split

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
#: A job whose forward passes take PyTorch less than this (seconds), and ``auto`` exports
#: nothing new; with the time of a pass unknown, fewer passes than ``AUTO_MIN_PASSES``.
AUTO_MIN_SECONDS = 60.0
AUTO_MIN_PASSES = 256
#: Below these even a cached export is not worth ``auto``'s measurement (a few seconds).
AUTO_MIN_SECONDS_CACHED = 10.0
AUTO_MIN_PASSES_CACHED = 32
#: Largest difference from PyTorch's scores a runtime may show, as a fraction of their peak.
TOLERANCE = 1e-4
#: How much faster than PyTorch ``auto`` wants a runtime before it picks it.
MARGIN = 0.05


@dataclass
class Offload:
    """What an explainer runs elsewhere: ``scores`` (an input batch -> the model's logits) for
    the forward-only passes, ``model`` (the split model) for the main pass, or neither."""

    runtime: str = "torch"
    reason: str = "--runtime torch"
    scores: Callable[[torch.Tensor], torch.Tensor] | None = None
    model: SplitModel | None = None
    #: Milliseconds per measured batch, by runtime (``auto``'s measurement).
    timings: dict[str, float] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """For the manifest's settings and ``--json``."""
        found: dict[str, Any] = {"runtime": self.runtime, "runtime_reason": self.reason}
        if self.timings:
            found["runtime_ms"] = {k: round(v, 1) for k, v in self.timings.items()}
        return found


class _Logits(nn.Module):
    """The model's output as the one logits tensor an ONNX graph returns."""

    def __init__(self, model: nn.Module, logits: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(self.model(x))


@dataclass
class Job:
    """What the explainer will ask of a runtime, for ``choose_runtime``.

    ``model`` (eval mode, on the CPU) and ``logits`` (its output -> the logits tensor);
    ``scores``: whether the method (or ``evaluate``) runs forward-only passes on whole inputs;
    ``layers``: the hooked layers when the main pass may be split at the first (else empty);
    ``size``: the input's pixels a side; ``batch``: inputs per pass; ``passes``: forward passes
    the job will run in all (None: unknown, many); ``why_not``: a reason the model stays in
    PyTorch whatever is asked (a detector, an ONNX file), or None.
    """

    model: nn.Module
    logits: Callable[[Any], torch.Tensor]
    device: torch.device
    size: int
    batch: int
    scores: bool
    layers: Sequence[str] = ()
    precision: str = "fp32"
    passes: int | None = None
    why_not: str | None = None
    #: Seconds of one image's forward pass in PyTorch (the explainer's probe), if known.
    pass_seconds: float | None = None
    #: An ONNX file model (``camcli.models.onnx.OnnxModel``): ONNX Runtime runs it already;
    #: ``--runtime openvino`` runs its forward-only passes on OpenVINO, from the file itself.
    onnx_file: Any = None

    def small(self, seconds: float = 0.0, passes: int = 0) -> str | None:
        """Why the job is too small to pay for what ``auto`` would do (rule 3): under
        ``seconds`` of PyTorch passes when a pass's time is known, else under ``passes``."""
        if self.passes is None:
            return None
        if self.pass_seconds is not None:
            total = self.passes * self.pass_seconds
            if total < seconds:
                return (
                    f"{self.passes} forward passes (about {total:.0f} s in PyTorch) are too "
                    f"few to pay for {{what}} (under {seconds:.0f} s)"
                )
            return None
        if self.passes < passes:
            return f"{self.passes} forward passes are too few to pay for {{what}} (under {passes})"
        return None


def _first(session: Session) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda batch: session(batch)[0]


def _timed(run: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        run(batch)
    return (time.perf_counter() - start) * 1000.0


def _candidates(job: Job, requested: str) -> list[str]:
    if requested != "auto":
        return [requested]
    return [
        name
        for name in ("openvino", "onnxruntime")
        if installed(name) and (name == "openvino" or job.precision == "fp32")
    ]


def _session(runtime: str, module: nn.Module, example: torch.Tensor, part: str,
             precision: str) -> Session:  # fmt: skip
    """A session on ``module``'s cached export; a cached file the runtime cannot load (cut
    short by a full disk or a killed copy) is exported again, once. Raises ExportFailed."""
    path = exported(module, example, part)
    try:
        return open_session(runtime, path, precision)
    except Exception:  # each runtime raises its own types for a file it cannot parse
        path.unlink(missing_ok=True)
    path = exported(module, example, part)
    try:
        return open_session(runtime, path, precision)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportFailed(f"{runtime} cannot load the export ({first[:200]})") from None


def _parts(job: Job, runtime: str, warn: bool) -> tuple[Any, SplitModel | None, str]:
    """(scores session or None, split model or None, what stays in PyTorch) on ``runtime``.
    Raises ExportFailed when nothing at all can be exported."""
    example = torch.randn(2, 3, job.size, job.size)
    scores = None
    model = None
    notes = []
    if job.scores:
        whole = _Logits(job.model, job.logits).eval()
        scores = _first(_session(runtime, whole, example, "logits", job.precision))
    if job.layers:
        try:
            cut = split(job.model, job.layers)
            with torch.no_grad():
                probe = cut.before(example)
            if not isinstance(probe, torch.Tensor):
                raise SplitRefused(
                    f"layer {cut.layer} returns {type(probe).__name__}, not one tensor"
                )
            before = _session(runtime, cut.before.eval(), example, f"before:{cut.layer}",
                              job.precision)  # fmt: skip
            model = SplitModel(job.model, cut, _first(before))
            if cut.tap is None:
                notes.append(
                    f"cut at {cut.at}, before layer {cut.layer} (its output is not all the "
                    "rest needs): from there on PyTorch"
                )
        except (SplitRefused, ExportFailed) as exc:
            note = f"the pass up to layer {job.layers[0]} stays in PyTorch: {exc}"
            notes.append(note)
            if warn:
                warnings.warn(note, CamcliWarning, stacklevel=4)
    return scores, model, "; ".join(notes)


def _file_scores(model: Any, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The logits of an ONNX file model on OpenVINO: the file as it is, fed in its own layout,
    a row at a time where its batch is fixed at 1."""
    from camcli.runtimes.sessions import OvSession

    session = OvSession(model.path, torch.get_num_threads(), precision)
    column = session.output_names.index(model.output) if model.output in session.output_names else 0
    nhwc = model.input.layout == "nhwc"

    def scores(batch: torch.Tensor) -> torch.Tensor:
        pixels = batch.permute(0, 2, 3, 1) if nhwc else batch
        if model.input.batch is None or pixels.shape[0] == 1:
            return session(pixels)[column]
        return torch.cat([session(pixels[i : i + 1])[column] for i in range(pixels.shape[0])])

    return scores


def _agrees(reference: torch.Tensor, other: torch.Tensor) -> float:
    """The largest difference as a fraction of the reference's peak."""
    peak = float(reference.abs().max()) or 1.0
    return float((reference.float() - other.float()).abs().max()) / peak


def choose_runtime(requested: str, job: Job) -> Offload:
    """The ``Offload`` for ``--runtime requested`` (see the module's docstring). Raises
    UsageError for an unknown runtime, one not installed, or one that cannot serve the model
    at all; otherwise a reason is kept and the passes stay in PyTorch."""
    if requested not in RUNTIMES:
        raise UsageError(f"unknown runtime {requested!r} (use {', '.join(RUNTIMES)})")
    if requested == "torch":
        return Offload("torch", "--runtime torch")
    if requested != "auto":
        require(requested)
        if requested == "onnxruntime" and job.precision != "fp32":
            raise UsageError(
                f"--runtime onnxruntime runs in float32; drop --precision {job.precision} "
                "or use --runtime openvino"
            )
    auto = requested == "auto"
    if job.onnx_file is not None and requested == "openvino" and job.scores:
        return Offload(
            "openvino",
            "--runtime openvino: the ONNX file's forward-only passes on OpenVINO (the main "
            "pass stays on ONNX Runtime)",
            scores=_file_scores(job.onnx_file, job.precision),
        )
    stays = job.why_not
    if stays is None and job.device.type != "cpu":
        stays = f"the runtimes run on the CPU and the model is on {job.device}"
    if stays is None and not job.scores and not job.layers:
        stays = "the method has no pass a runtime can run"
    if stays is not None:
        if not auto:
            raise UsageError(f"--runtime {requested} cannot serve here: {stays}")
        return Offload("torch", f"auto: {stays}")
    candidates = _candidates(job, requested)
    if not candidates:
        return Offload(
            "torch",
            f"auto: no runtime is installed ({install_extra('openvino')})",
        )
    if auto:
        small = job.small(AUTO_MIN_SECONDS_CACHED, AUTO_MIN_PASSES_CACHED)
        if small is not None:
            return Offload("torch", "auto: " + small.format(what="a measurement"))
        small = job.small(AUTO_MIN_SECONDS, AUTO_MIN_PASSES)
        if small is not None:
            key = fingerprint(_Logits(job.model, job.logits), (3, job.size, job.size), "logits")
            if not (cache_root() / f"{key}.onnx").is_file():
                return Offload("torch", "auto: " + small.format(what="an export"))
    if not auto:
        return _explicit(requested, job)
    return _measured(candidates, job)


def _explicit(runtime: str, job: Job) -> Offload:
    try:
        scores, model, notes = _parts(job, runtime, warn=True)
    except ExportFailed as exc:
        raise UsageError(
            f"--runtime {runtime}: the model does not export to ONNX ({exc})"
        ) from None
    if scores is None and model is None:
        return Offload("torch", f"--runtime {runtime}: {notes}")
    reason = f"--runtime {runtime}" + (f" ({notes})" if notes else "")
    return Offload(runtime, reason, scores, model)


def _torch_forward(job: Job, scores: bool) -> Callable[[torch.Tensor], Any]:
    if scores:
        return lambda batch: job.logits(job.model(batch))
    return job.model


def _measured(candidates: list[str], job: Job) -> Offload:
    batch = torch.randn(max(1, job.batch), 3, job.size, job.size)
    runs: dict[str, tuple[Any, SplitModel | None, str]] = {}
    skipped = []
    for name in candidates:
        try:
            runs[name] = _parts(job, name, warn=False)
        except (ExportFailed, Exception) as exc:  # a runtime that cannot load the graph
            skipped.append(
                f"{name} failed ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
            )
    use_scores = job.scores
    reference_run = _torch_forward(job, use_scores)
    functions: dict[str, Callable[[torch.Tensor], Any]] = {"torch": reference_run}
    for name, (scores, model, _notes) in runs.items():
        run = scores if use_scores else model
        if run is None:
            skipped.append(f"{name} could not split the model")
            continue
        functions[name] = run
    with torch.inference_mode():
        reference = job.logits(reference_run(batch)) if not use_scores else reference_run(batch)
    agreeing = {"torch": reference_run}
    for name, run in functions.items():
        if name == "torch":
            continue
        with torch.inference_mode():
            out = run(batch)
            out = out if use_scores else job.logits(out)
        gap = _agrees(reference, out)
        if gap > TOLERANCE:
            skipped.append(f"{name} differs from PyTorch by {gap:.1e} of the peak")
        else:
            agreeing[name] = run
    timings = {name: float("inf") for name in agreeing}
    for run in agreeing.values():
        _timed(run, batch)  # warm-up: the first call compiles and allocates
    for _ in range(2):
        for name, run in agreeing.items():
            timings[name] = min(timings[name], _timed(run, batch))
    best = min(timings, key=timings.get)
    shown = ", ".join(f"{n} {t:.0f} ms" for n, t in sorted(timings.items(), key=lambda i: i[1]))
    extra = f"; {'; '.join(skipped)}" if skipped else ""
    what = f"batch of {batch.shape[0]} at {job.size} px"
    if best == "torch" or timings[best] > timings["torch"] * (1 - MARGIN):
        return Offload(
            "torch", f"auto: PyTorch is as fast ({shown}, {what}){extra}", timings=timings
        )
    scores, model, notes = runs[best]
    notes = f"; {notes}" if notes else ""
    return Offload(best, f"auto: fastest ({shown}, {what}){notes}{extra}", scores, model, timings)


__all__ = [
    "AUTO_MIN_PASSES",
    "AUTO_MIN_SECONDS",
    "PACKAGES",
    "RUNTIMES",
    "Job",
    "Offload",
    "choose_runtime",
]
