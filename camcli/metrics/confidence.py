"""Average drop and increase in confidence (Chattopadhyay et al. 2018, "Grad-CAM++",
arXiv:1710.11063, section 5.1).

The image is multiplied, position by position, by its map scaled to [0, 1]
(``E = (M - min M) / (max M - min M)``, upsampled to the input), and the class probability
``O = p(c | E * x)`` compared with ``Y = p(c | x)``:

    drop = max(0, Y - O) / Y          increase = 1 if O > Y else 0

averaged over images (the paper reports both in percent). A map that keeps what the model
needs gives a small drop. torchcam's ``ClassificationMetric`` divides by ``Y + 1e-7``; here
the paper's formula is used as it stands (``Y > 0`` for any finite softmax), which moves a
drop by a relative ``1e-7 / Y``.
"""

from __future__ import annotations

import torch

from camcli.metrics.scoring import Scorer, min_max


def confidence_change(
    scorer: Scorer,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    classes: torch.Tensor,
    original: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop, increase), each (N,) float64, for ``saliency`` (N, H, W) at the input size."""
    masks = min_max(saliency)

    def build(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs[part] * masks[part, None], classes[part]

    masked = scorer.run(inputs.shape[0], build).to(original.device).double()
    before = original.double()
    drop = torch.where(before > 0, torch.relu(before - masked) / before, 0.0)
    return drop, (masked > before).double()
