"""Ablation-CAM (Desai & Ramaswamy 2020): channels weighted by the score lost without them."""

from __future__ import annotations

import torch
from torch import nn

from camcli.hooks import substituted
from camcli.layers import token_prefix
from camcli.methods.base import CamContext, CamMethod, require_context, weighted_maps


class AblationCAM(CamMethod):
    """``M_c = ReLU(sum_k w_k A_k)`` with ``w_k = (S_c - S_c^k) / S_c``, where ``S_c^k`` is
    the class logit when channel ``k`` of the layer is set to zero.

    Desai & Ramaswamy 2020, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020. The ablated copies of the layer's
    output, built on the (N, C, h, w) grid, replace it in a forward hook in the layer's own
    layout (channels-last, or tokens with the image's own class token: the patch tokens'
    channel is zeroed, the class token kept), a chunk of channels at a time, under
    ``inference_mode``. The input fed is one image, and the hook returns ``k`` ablated copies,
    so the layers before the hooked one run once per chunk, not ``k`` times; a model that
    cannot take a batch change mid-network gets ``k`` copies of the input instead. Channels
    are always set to zero, as in the paper (pytorch-grad-cam uses ``min - 1e7`` when the
    layer has negative values). ``w_k = 0`` where ``S_c = 0``.
    """

    name = "ablationcam"
    needs_grad = False
    # Its ablated passes run in PyTorch (they change the layer's output): the main pass
    # too, so that the score it subtracts them from comes from the same arithmetic.
    runtime_split = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.expand_input = False

    def _ablated_logits(
        self, context: CamContext, image: torch.Tensor, copies: torch.Tensor
    ) -> torch.Tensor:
        assert context.module is not None
        input_hw = (int(image.shape[-2]), int(image.shape[-1]))
        with substituted(context.module, copies, input_hw, token_prefix(context.model)):
            if not self.expand_input:
                try:
                    logits = context.forward(image)
                    if logits.shape[0] == copies.shape[0]:
                        return logits
                except RuntimeError:
                    pass
                self.expand_input = True
            return context.forward(image.expand(copies.shape[0], *image.shape[1:]))

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        n, c = activation.shape[:2]
        device = activation.device
        batch = context.batch.to(device)
        ablated = torch.zeros(n * c, targets.shape[1], device=device)
        for rows in context.chunks(n * c):
            index = torch.arange(rows.start, rows.stop, device=device)
            for image in range(int(index[0]) // c, (int(index[-1]) // c) + 1):
                pair = index[index // c == image]
                channels = pair % c
                copies = activation[image].expand(len(pair), -1, -1, -1).clone()
                copies[torch.arange(len(pair), device=device), channels] = 0
                scores = self._ablated_logits(context, batch[image : image + 1], copies).float()
                ablated[pair] = scores.gather(1, targets[image].expand(len(pair), -1))
        base = logits.detach().float().gather(1, targets)  # (N, T)
        drop = base.repeat_interleave(c, dim=0) - ablated
        safe = base.repeat_interleave(c, dim=0)
        weights = torch.where(safe != 0, drop / torch.where(safe != 0, safe, 1.0), 0.0)
        return weighted_maps(weights.view(n, c, -1), activation, context.eigen_smooth)
