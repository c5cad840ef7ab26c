"""FullGrad (Srinivas & Fleuret 2019): input gradients plus every bias's gradient."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from camcli.layers import Layout, first_tensor, spatial_layout
from camcli.methods.base import CamContext, CamMethod, class_scores, require_context
from camcli.methods.refine import min_max


def effective_bias(module: nn.Module) -> torch.Tensor | None:
    """The bias a module adds to its output channels: a convolution's or linear layer's own,
    or an eval-mode batch norm's ``beta - mean * gamma / sqrt(var + eps)``; else None."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.BatchNorm2d) and module.running_var is not None:
        scale = module.running_var.detach().add(module.eps).rsqrt()
        if module.weight is not None:
            scale = scale * module.weight.detach()
        shift = -module.running_mean.detach() * scale
        return shift if module.bias is None else shift + module.bias.detach()
    return None


@dataclass
class BiasOutput:
    """One call of a module with a bias: the bias and the output it was added to."""

    bias: torch.Tensor
    output: torch.Tensor
    layout: Layout


@contextlib.contextmanager
def bias_outputs(model: nn.Module, input_hw: tuple[int, int]) -> Iterator[list[BiasOutput]]:
    """Within the block, every call of a conv / linear / batch-norm module with a bias whose
    output lies on the image grid (maps, channels-last maps or tokens) is recorded.

    Each hook hands the rest of the network a copy of the output, so an in-place operation
    after it (a ReLU with ``inplace=True``) cannot change the recorded tensor, and the
    gradient with respect to it is the gradient at that module's output.
    """
    recorded: list[BiasOutput] = []

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        bias = effective_bias(module)
        tensor = first_tensor(output)
        if bias is None or tensor is None or not tensor.requires_grad:
            return None
        layout = spatial_layout(tensor.shape, input_hw)
        if layout is None:  # the head's logits, a pooled vector: nowhere on the image
            return None
        if tensor.shape[1 if layout.kind == "nchw" else -1] != bias.numel():
            return None  # a grid-like shape that is not (channels x grid), e.g. windows
        recorded.append(BiasOutput(bias, tensor, layout))
        return tensor.clone() if isinstance(output, torch.Tensor) else None

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))
    ]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def bias_term(bias: torch.Tensor, grads: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``|b * dS/dz|`` on the grid, (N, C, h, w), for an output ``z`` in ``layout``."""
    shape = [1] * grads.ndim
    shape[1 if layout.kind == "nchw" else -1] = -1
    return layout.to_spatial((bias.reshape(shape) * grads).abs())


class FullGrad(CamMethod):
    """``S_c(x) = psi(|x * dS_c/dx|) + sum_l sum_k psi(|b_lk * dS_c/dz_lk|)``, ``psi`` each
    map min-max normalised to [0, 1] and upsampled bilinearly to the input size.

    Srinivas & Fleuret 2019, "Full-Gradient Representation for Neural Network
    Visualization", arXiv:1905.00780, eq. 7: ``z_lk`` is channel ``k`` of the output of
    layer ``l`` and ``b_lk`` the bias added to it, over every convolution, batch norm (its
    eval-mode bias ``beta - mean gamma / sigma``) and linear layer whose output lies on the
    image grid (a ViT's or Swin's MLP tokens too); the colour channels of the input term are
    normalised one by one and summed, as pytorch-grad-cam does. For a ReLU network with these
    layers ``S_c = sum x dS/dx + sum b dS/db`` exactly (completeness). Layer-free: the map is
    at the input size and ``--layer`` is not used. One extra forward with gradients, one
    backward per target.
    """

    name = "fullgrad"
    needs_grad = True
    runtime_split = False  # reads more of the model than the layer's output
    supports_eigen_smooth = False

    def saliency(self, context: CamContext, targets: torch.Tensor) -> torch.Tensor:
        image = context.batch.detach().clone().requires_grad_(True)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        maps = []
        with bias_outputs(self.model, size) as recorded, torch.enable_grad():
            logits = context.forward(image)
            count = targets.shape[1]
            for t in range(count):
                grads = torch.autograd.grad(
                    class_scores(logits, targets, t),
                    [image, *(r.output for r in recorded)],
                    retain_graph=t < count - 1,
                    allow_unused=True,
                )
                with torch.no_grad():
                    total = min_max((image * grads[0]).abs().float()).sum(dim=1)
                    for r, g in zip(recorded, grads[1:], strict=True):
                        if g is None:
                            continue
                        term = min_max(bias_term(r.bias, g, r.layout).float()).sum(dim=1)
                        total += nn.functional.interpolate(
                            term[:, None], size=size, mode="bilinear", align_corners=False
                        )[:, 0]
                maps.append(total)
        return torch.stack(maps, dim=1)

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        if "fullgrad" not in context.cache:
            context.cache["fullgrad"] = self.saliency(context, targets)
        return context.cache["fullgrad"]
