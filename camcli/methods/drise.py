"""D-RISE (Petsiuk et al. 2021): RISE for detectors, one map per detected box."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from camcli.methods.base import CamContext
from camcli.methods.blackbox import MaskedMethod


def box_similarity(
    boxes: torch.Tensor, labels: torch.Tensor, found: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``max_j IoU(b_t, d_j) [label_j = label_t] score_j`` for each target box (T,): D-RISE's
    similarity of the targets to one masked image's detections ``found`` (0 with none)."""
    if len(found["boxes"]) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), device=boxes.device)
    detected = found["boxes"].float().to(boxes.device)
    iou = box_iou(boxes.float(), detected)  # (T, M)
    same = labels.to(boxes.device)[:, None] == found["labels"].to(boxes.device)[None, :]
    scores = found["scores"].float().to(boxes.device)[None, :]
    return (iou * same * scores).amax(dim=1)


class DRISE(MaskedMethod):
    """``S_t = 1 / (N p) sum_i w_i M_i``, ``w_i = max_j s(d_t, D(I * M_i)_j)`` for each box t.

    Petsiuk et al. 2021, "Black-box Explanation of Object Detectors via Saliency Maps",
    arXiv:2006.03204, section 3: the similarity of the target detection ``d_t`` (box ``L_t``,
    class probabilities ``P_t``, objectness ``O_t``) to a detection ``d_j`` of the masked
    image is ``IoU(L_t, L_j) * cos(P_t, P_j) * O_j``. A torchvision detector returns a label
    and a score per box, not a probability vector: with one-hot classes the cosine is the
    indicator ``[label_j = label_t]``, and the objectness is the box's score, so
    ``s = IoU * [same label] * score_j`` (0 when the masked image has no detection). The
    paper sums ``w_i M_i``; dividing by ``N p`` (as RISE) changes only the scale. Masks are
    ``MaskSet``'s with 16 x 16 cells by default (the paper's), ``--masks`` N (default 4000) or
    ``auto``, ``--mask-p``, ``--seed``. Target boxes are those the detector found on the
    image (``--score-threshold``, ``--top-k``). N forward passes per image.
    """

    name = "drise"
    default_cells = 16
    heads = ("detection",)
    refusal = "drise explains detectors' boxes; for a classifier use --method rise"
    supports_aug_smooth = False

    def weigh(self, context: CamContext, masked: torch.Tensor, image: int,
              targets: torch.Tensor) -> torch.Tensor:  # fmt: skip
        assert context.outputs is not None
        head = context.head
        columns = targets[image]
        boxes = head.boxes.to(masked.device)[columns]
        labels = head.labels.to(masked.device)[columns]
        outputs = context.outputs(masked)
        return torch.stack([box_similarity(boxes, labels, found) for found in outputs])
