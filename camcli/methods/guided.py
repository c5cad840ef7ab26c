"""Guided backpropagation and Guided Grad-CAM: saliency on the input pixels."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from camcli.hooks import ActivationRecorder
from camcli.methods.base import CamContext, CamMethod, class_scores, require_context
from camcli.methods.gradcam import GradCAM

_MISSING = object()


class _GuidedReLU(torch.autograd.Function):
    """ReLU (or ReLU6 with ``upper=6``) whose backward passes only positive gradients where
    the forward input was in the linear range: ``dx = dy * [x > 0] * [dy > 0]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.upper = upper
        return x.clamp(min=0.0, max=upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        passed = (x > 0) & (grad > 0)
        if ctx.upper is not None:
            passed &= x < ctx.upper
        return grad * passed, None


def _guided_forward(upper: float | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(x, upper)

    return forward


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Within the block every ``nn.ReLU`` and ``nn.ReLU6`` module of ``model`` is guided.

    Each module's ``forward`` is shadowed by an instance attribute, so module types, the
    module tree and the parameters never change, a module used several times (torchvision's
    ResNet blocks) is guided at every use, and ``finally`` restores the original (also after
    an exception). Functional ``F.relu`` calls are not seen and stay plain ReLUs. Yields the
    number of modules guided.
    """
    patched: list[tuple[nn.Module, object]] = []
    try:
        for module in model.modules():
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                upper = 6.0 if isinstance(module, nn.ReLU6) else None
                patched.append((module, module.__dict__.get("forward", _MISSING)))
                module.forward = _guided_forward(upper)  # type: ignore[method-assign]
        yield len(patched)
    finally:
        for module, previous in patched:
            if previous is _MISSING:
                del module.forward
            else:
                module.forward = previous  # type: ignore[method-assign]


def input_gradients(
    model: nn.Module, context: CamContext, targets: torch.Tensor, guided: bool
) -> torch.Tensor:
    """``dS_c / dX`` for every image and target: (N, T, 3, H, W), guided or plain."""
    image = context.batch.detach().clone().requires_grad_(True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(ActivationRecorder(model, {}, grad=False))  # eval, restored after
        if guided:
            stack.enter_context(guided_relus(model))
        stack.enter_context(torch.enable_grad())
        logits = context.forward(image)
        count = targets.shape[1]
        grads = [
            torch.autograd.grad(
                class_scores(logits, targets, t), image, retain_graph=t < count - 1
            )[0]
            for t in range(count)
        ]
    return torch.stack(grads, dim=1).detach().float()


def gray(saliency: torch.Tensor) -> torch.Tensor:
    """(N, T, 3, H, W) -> (N, T, H, W): the largest absolute value over the colour channels."""
    return saliency.abs().amax(dim=2)


class GuidedBackprop(CamMethod):
    """``R = dS_c / dX`` with every ReLU's backward replaced by ``dy * [x > 0] * [dy > 0]``.

    Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net",
    arXiv:1412.6806. Pixel-space and class-insensitive in practice; the colour saliency is
    ``R`` itself (N, T, 3, H, W) and the map is ``max_rgb |R|`` at the input size. The layer
    is not used. Guides ``nn.ReLU`` and ``nn.ReLU6`` modules, not functional ``F.relu``.
    """

    name = "guided-backprop"
    needs_grad = True
    runtime_split = False  # reads more of the model than the layer's output
    pixel_space = True
    supports_eigen_smooth = False

    def saliency(self, context: CamContext, targets: torch.Tensor) -> torch.Tensor:
        if "guided" not in context.cache:
            context.cache["guided"] = input_gradients(self.model, context, targets, guided=True)
        return context.cache["guided"]

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        saliency = self.saliency(context, targets)
        context.cache.setdefault("saliency", []).append(saliency)
        return gray(saliency)


class GuidedGradCAM(GuidedBackprop):
    """``R_c = GuidedBackprop_c * U(GradCAM_c)``: guided backpropagation times the Grad-CAM
    map upsampled bilinearly to the input size.

    Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", arXiv:1610.02391, section 3. Uses the layer for Grad-CAM.
    """

    name = "guided-gradcam"

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        cam = GradCAM(self.model).compute(activation, logits, targets)
        with torch.no_grad():
            upsampled = nn.functional.interpolate(
                cam, size=context.batch.shape[-2:], mode="bilinear", align_corners=False
            )
            saliency = self.saliency(context, targets) * upsampled[:, :, None]
        context.cache.setdefault("saliency", []).append(saliency)
        return gray(saliency)
