"""The shared engine's contract: one small class per method."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from camcli.config import ExplainSpec
from camcli.hooks import ActivationRecorder

Progress = Callable[[int, int], None]  # (passes done, passes in all) for one batch's extra work

# vmap's notice for ops without a batching rule (``target_gradients``): the result is still
# right. Filtered once here: ``warnings.catch_warnings`` around the call would race with the
# loader threads (overlapping exits restore stale filter lists).
warnings.filterwarnings(
    "ignore", message="There is a performance drop because we have not yet implemented"
)


@dataclass
class CamContext:
    """What a method may need beyond one layer's activation: the model, its input, options.

    ``batch`` is the normalised model input (N, 3, H, W) the activation came from; ``forward``
    maps such a batch to logits (N, K). ``chunk_size`` bounds how many extra forward passes run
    at once (Score-CAM, Ablation-CAM, smoothing); ``progress`` is told after each chunk.
    ``cache`` is shared by every layer of one explanation (guided backprop is layer-free).
    """

    model: nn.Module
    batch: torch.Tensor
    forward: Callable[[torch.Tensor], torch.Tensor]
    layer: str = ""
    module: nn.Module | None = None
    chunk_size: int = 32
    eigen_smooth: bool = False
    progress: Progress | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    #: The explainer's head (``camcli.targets``): its ``probabilities`` score the black-box
    #: methods' masked inputs; a detection head holds the boxes explained.
    head: Any = None
    #: The model's own output for a batch (a detector's boxes), under the same precision and
    #: memory layout as ``forward``.
    outputs: Callable[[torch.Tensor], Any] | None = None

    def record(self, batch: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(activation at this context's layer, logits) for another input batch.

        With ``grad`` the activation is a leaf of a graph that reaches the logits, as in the
        main forward pass; otherwise everything runs under ``inference_mode``.
        """
        assert self.module is not None, "record() needs the context's layer"
        layers = {self.layer: self.module}
        mode = torch.no_grad() if grad else torch.inference_mode()
        with ActivationRecorder(self.model, layers, grad=grad) as recorder, mode:
            logits = self.forward(batch)
        return recorder.activations[self.layer], logits

    def chunks(self, total: int) -> Iterator[slice]:
        """Slices of ``range(total)`` of at most ``chunk_size``, reporting progress after each."""
        size = max(1, int(self.chunk_size))
        for start in range(0, total, size):
            stop = min(total, start + size)
            yield slice(start, stop)
            if self.progress is not None:
                self.progress(stop, total)


class CamMethod:
    """Turn one layer's activations (and, for gradient methods, the logits) into maps.

    ``compute`` gets the activation ``A`` of shape (N, C, H, W) recorded by the hooks, the
    logits (N, K), the target class indices (N, T) and, from the explainer, a ``CamContext``;
    it returns raw maps (N, T, H, W) in float32: the method's formula, after its ReLU, before
    any normalisation. Pixel-space methods return maps at the model input size instead.
    """

    name: ClassVar[str]
    needs_grad: ClassVar[bool]
    #: True for methods whose map lives on input pixels (guided backprop), not on a layer.
    pixel_space: ClassVar[bool] = False
    #: Whether ``--eigen-smooth`` (first principal component of ``w * A``) applies.
    supports_eigen_smooth: ClassVar[bool] = True
    #: The fewest layers the method works with (RefineCAM multiplies several layers' maps).
    min_layers: ClassVar[int] = 1
    #: The most layers it works with (None: any number; DFF's concepts are one layer's).
    max_layers: ClassVar[int | None] = None
    #: Whether ``--aug-smooth`` (maps of flipped and scaled copies, averaged) applies.
    supports_aug_smooth: ClassVar[bool] = True
    #: False for black-box methods (``camcli.methods.blackbox``): no layer is resolved or
    #: probed, ``compute`` gets the input batch as its ``activation`` and returns maps at the
    #: input size.
    needs_layer: ClassVar[bool] = True
    #: Whether the extra passes are plain forwards of whole inputs (``context.forward``
    #: outside any hook), which a runtime may run (``--runtime``, ``camcli.runtimes``).
    runtime_passes: ClassVar[bool] = False
    #: Whether the main pass may run the model up to the first hooked layer on a runtime:
    #: False for methods that read more of the model than their layers' outputs.
    runtime_split: ClassVar[bool] = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def configure(self, spec: ExplainSpec, head: str, size: int) -> None:
        """Read the method's own options from ``spec`` for a model with ``head`` (its name)
        and inputs of ``size`` pixels; raise UsageError for values that cannot work."""

    def settings(self) -> dict[str, Any]:
        """The method's own options that decide its maps, for the records' settings
        (``--skip-existing`` redoes an image made with others); none by default."""
        return {}

    def extra_passes(self, channels: int, size: int) -> int:
        """Forward passes per image beyond the main one, for a layer of ``channels`` channels
        at inputs of ``size`` pixels (``--runtime auto`` weighs a job by them)."""
        return 0

    def check(self, layer: str, activation: torch.Tensor, logits: torch.Tensor) -> None:
        """Validate at setup, on a probe batch, that the method applies to this model/layer."""

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward_context(self) -> contextlib.AbstractContextManager:
        """Entered around the explainer's forward pass (ShapleyCAM: attention kernels that
        have a second derivative)."""
        return contextlib.nullcontext()

    def fuse(self, maps: list[torch.Tensor]) -> torch.Tensor | None:
        """The layers' (N, T, h, w) maps combined into one, or None for the engine's default
        (each upsampled to the input size, then averaged)."""
        return None


def class_scores(logits: torch.Tensor, targets: torch.Tensor, column: int) -> torch.Tensor:
    """The sum over the batch of each image's logit for its ``column``-th target class.

    Images are independent in eval mode, so the gradient of this sum with respect to the batch
    of activations holds every image's own gradient.
    """
    return logits.gather(1, targets[:, column : column + 1]).sum()


def target_gradients(
    activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``dS_c / dA`` for each of the T target columns: (T, N, C, H, W), in one backward pass.

    The T backward passes are batched with ``vmap`` (``is_grads_batched``): one-hot rows of the
    logits' gradient select each image's class. An op without a batching rule falls back to one
    backward per target. The graph is always retained: with several layers, every layer's
    activation hangs off the same forward graph (it is freed with the logits).
    """
    count = targets.shape[1]
    if count > 1:
        onehot = torch.zeros((count, *logits.shape), dtype=logits.dtype, device=logits.device)
        onehot.scatter_(2, targets.t().unsqueeze(2), 1.0)
        try:
            (grads,) = torch.autograd.grad(
                logits, activation, grad_outputs=onehot, is_grads_batched=True,
                retain_graph=True,
            )  # fmt: skip
            return grads
        except RuntimeError:
            pass
    return torch.stack(
        [
            torch.autograd.grad(
                class_scores(logits, targets, column), activation, retain_graph=True
            )[0]
            for column in range(count)
        ]
    )


def principal_projection(weighted: torch.Tensor) -> torch.Tensor:
    """First principal component of (N, C, H, W) as a signed (N, H, W) map (Eigen-CAM).

    Each image's H*W positions are the samples and its C channels the features: centre the
    channels, take the top right-singular vector ``v`` and project, ``(A - mean) v``. A
    singular vector's sign is arbitrary, so it is oriented to correlate positively with the
    channel sum (the plain, unsmoothed map); pytorch-grad-cam leaves the sign to the SVD.
    """
    n, c, h, w = weighted.shape
    samples = weighted.float().reshape(n, c, h * w).transpose(1, 2)  # (N, HW, C)
    samples = torch.nan_to_num(samples)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = torch.einsum("npc,nc->np", centred, vh[:, 0, :])
    plain = samples.sum(dim=2)
    agreement = ((projection - projection.mean(1, keepdim=True)) * plain).sum(dim=1)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(projection.dtype)
    return (projection * sign[:, None]).reshape(n, h, w)


def combine(weighted: torch.Tensor, eigen_smooth: bool) -> torch.Tensor:
    """(N, C, H, W) weighted activations -> (N, H, W): the channel sum or, smoothed, their
    first principal component (pytorch-grad-cam's ``eigen_smooth``)."""
    if eigen_smooth:
        return principal_projection(weighted)
    return weighted.sum(dim=1)


class GradientCam(CamMethod):
    """Gradient methods that combine ``A`` with ``G = dS_c/dA`` into weighted activations.

    Subclasses define ``weighted(A, G) -> (N, C, H, W)``; the map is
    ``ReLU(sum_k weighted_k)`` (or its first principal component with ``--eigen-smooth``).
    """

    needs_grad = True
    #: Always take the principal component (Eigen-Grad-CAM) rather than the channel sum.
    eigen: ClassVar[bool] = False

    def weighted(self, activation: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradients(
        self, activation: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> Iterator[torch.Tensor]:
        """``dS_c/dA`` for each target column in turn, from one forward graph."""
        yield from target_gradients(activation, logits, targets)

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        eigen = self.eigen or (context is not None and context.eigen_smooth)
        maps = []
        for grads in self.gradients(activation, logits, targets):
            with torch.no_grad():
                weighted = self.weighted(activation.detach().float(), grads.float())
                maps.append(torch.relu(combine(weighted, eigen)))
        return torch.stack(maps, dim=1).float()


def require_context(context: CamContext | None, name: str) -> CamContext:
    if context is None:
        raise TypeError(f"{name} runs extra forward passes and needs a CamContext")
    return context


def weighted_maps(
    weights: torch.Tensor, activation: torch.Tensor, eigen_smooth: bool
) -> torch.Tensor:
    """``ReLU(sum_k w_k^c A_k)`` for per-image channel weights (N, C, T) -> (N, T, H, W)."""
    activation = activation.float()
    if not eigen_smooth:
        return torch.relu(torch.einsum("nct,nchw->nthw", weights.float(), activation))
    maps = [
        combine(weights[:, :, t, None, None].float() * activation, eigen_smooth=True)
        for t in range(weights.shape[2])
    ]
    return torch.relu(torch.stack(maps, dim=1))
