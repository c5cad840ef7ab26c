"""CAM (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization")."""

from __future__ import annotations

import torch
from torch import nn

from camcli.errors import UsageError
from camcli.methods.base import CamContext, CamMethod, combine


class CAM(CamMethod):
    """``M_c = sum_k w_k^c A_k``: the head's linear weights for class c times the feature maps.

    Zhou et al. 2016, "Learning Deep Features for Discriminative Localization",
    arXiv:1512.04150.

    Needs a head that is global average pooling followed by one linear layer (dropout and
    flatten in between are fine), so that ``logits = W mean_hw(A) + b``. For all classes at
    once this is a 1x1 convolution of ``A`` with ``W``; no gradient is needed. The raw map has
    no ReLU (it is the formula itself); negative evidence is clipped only when rendering.

    Where the head applies a ReLU before the pooling (torchvision's DenseNet: ``features``,
    then ``relu``, average, ``classifier``), ``logits = W mean_hw(ReLU(A)) + b`` and the map is
    ``M_c = sum_k w_k^c ReLU(A_k)``: CAM of the rectified features, whose spatial mean plus the
    bias is still the logit. It is then not ``(h w)`` times Grad-CAM's map, which weighs
    ``A`` itself by gradients that the ReLU zeroes where ``A < 0``. Both heads are recognised
    on numbers (the probe's logits), whatever the modules are.
    """

    name = "cam"
    needs_grad = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.linear: nn.Linear | None = None
        #: Whether the head rectifies the layer's output before pooling (DenseNet).
        self.relu = False

    def check(self, layer: str, activation: torch.Tensor, logits: torch.Tensor) -> None:
        if activation.ndim != 4:
            raise UsageError(
                f"cam needs a (N, C, H, W) feature map but layer {layer!r} gives "
                f"{tuple(activation.shape)}; use --method gradcam"
            )
        channels = activation.shape[1]
        classes = logits.shape[1]
        candidates = [
            m
            for m in self.model.modules()
            if isinstance(m, nn.Linear)
            and m.in_features == channels
            and m.out_features == classes
            # An all-zero head (ViT's initialisation) predicts constant logits from any input,
            # which proves nothing about the pooling in between.
            and bool(m.weight.detach().abs().max() > 0)
        ]
        # Checked on numbers, not on module types: in eval mode dropout is the identity, and
        # functional pooling or flattening in forward() is invisible to the module tree.
        # Relative to the logits' own scale: an absolute floor would accept any head whose
        # logits are all small (a freshly initialised MaxViT's are about 1e-4).
        tolerance = 1e-3 * float(logits.abs().max())
        for relu in (False, True):
            features = torch.relu(activation.float()) if relu else activation.float()
            pooled = features.mean(dim=(2, 3))
            for linear in reversed(candidates):
                bias = None if linear.bias is None else linear.bias.float()
                predicted = nn.functional.linear(pooled, linear.weight.float(), bias)
                if torch.allclose(predicted, logits.float(), atol=tolerance, rtol=1e-3):
                    self.linear, self.relu = linear, relu
                    return
        raise UsageError(
            f"cam needs the class scores to be one linear layer on the spatial average of "
            f"layer {layer!r} (global average pooling + linear, dropout and a ReLU before the "
            "pooling allowed); "
            f"{self._head_problem(layer, channels, classes, bool(candidates))}; "
            "use --method gradcam (it works on any layer)"
        )

    def _head_problem(self, layer: str, channels: int, classes: int, matched: bool) -> str:
        """Why this head is not pooling + linear, from the modules registered after the layer."""
        after = _modules_after(self.model, layer)
        linears = [(n, m) for n, m in after if isinstance(m, nn.Linear)]
        if not matched and len(linears) > 1:
            chain = ", ".join(f"{n} {m.in_features}->{m.out_features}" for n, m in linears)
            return (
                f"this head has {len(linears)} linear layers ({chain}) with nonlinearities "
                "between them, so no single weight per channel and class exists"
            )
        if not matched:
            return (
                f"no linear layer maps its {channels} channels to the {classes} classes "
                f"(the layers after it: {_names(after)})"
            )
        between = [(n, m) for n, m in after if not isinstance(m, (*_POOL_OR_NOOP, nn.Linear))]
        return f"other layers change the pooled features before the linear one ({_names(between)})"

    def all_class_maps(self, activation: torch.Tensor) -> torch.Tensor:
        """Maps for every class at once: one 1x1 convolution, (N, K, H, W)."""
        assert self.linear is not None, "check() must run first"
        weight = self.linear.weight.to(activation.dtype)
        return nn.functional.conv2d(self.features(activation), weight[:, :, None, None]).float()

    def features(self, activation: torch.Tensor) -> torch.Tensor:
        """What the head pools: ``A``, or ``ReLU(A)`` where it rectifies first."""
        return torch.relu(activation) if self.relu else activation

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        assert self.linear is not None, "check() must run first"
        activation = self.features(activation)
        weight = self.linear.weight[targets].to(activation.dtype)  # (N, T, C)
        if context is not None and context.eigen_smooth:
            maps = [
                combine(weight[:, t, :, None, None] * activation, eigen_smooth=True)
                for t in range(targets.shape[1])
            ]
            return torch.stack(maps, dim=1).float()
        return torch.einsum("ntc,nchw->nthw", weight, activation).float()


_POOL_OR_NOOP = (
    nn.AdaptiveAvgPool2d,
    nn.AvgPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.Identity,
)


def _modules_after(model: nn.Module, layer: str) -> list[tuple[str, nn.Module]]:
    """Modules registered after ``layer`` (neither inside it nor one of its parents): leaves,
    and attention modules as a whole."""
    names = [name for name, _ in model.named_modules()]
    start = names.index(layer) if layer in names else len(names)
    found: list[tuple[str, nn.Module]] = []
    for name, module in list(model.named_modules())[start + 1 :]:
        if name.startswith(f"{layer}.") or any(name.startswith(f"{n}.") for n, _ in found):
            continue
        if isinstance(module, nn.MultiheadAttention) or not any(True for _ in module.children()):
            found.append((name, module))
    return found


def _names(modules: list[tuple[str, nn.Module]], limit: int = 5) -> str:
    if not modules:
        return "computed inside forward(), outside any module"
    shown = ", ".join(f"{n} ({type(m).__name__})" for n, m in modules[:limit])
    more = f" and {len(modules) - limit} more" if len(modules) > limit else ""
    return shown + more
