"""A case's faithfulness expectations: RISE insertion / deletion AUC (``camcli evaluate``).

* ``insertion_auc``: passes when the case's insertion AUC is ``>= insertion_auc_min``;
* ``deletion_auc``: passes when its deletion AUC is ``<= deletion_auc_max``;

each measured as ``camcli evaluate`` does (20 steps, zero baseline, the softmax probability
of the explained class; ``camcli.metrics.deletion``).
"""

from __future__ import annotations

import numpy as np
import torch

from camcli.check.results import CaseResult, compared
from camcli.explain import Explainer
from camcli.metrics.deletion import deletion_insertion
from camcli.metrics.scoring import Scorer, at_input_size

STEPS = 20


def wants_faithfulness(result: CaseResult) -> bool:
    case = result.case
    return case.insertion_auc_min is not None or case.deletion_auc_max is not None


def outcome_names(result: CaseResult) -> list[str]:
    """The outcomes the case's faithfulness expectations give (for failed cases too)."""
    names = []
    if result.case.insertion_auc_min is not None:
        names.append("insertion_auc")
    if result.case.deletion_auc_max is not None:
        names.append("deletion_auc")
    return names


def measure_faithfulness(
    results: list[CaseResult], explainer: Explainer, inputs: torch.Tensor, classes: list[int]
) -> None:
    """Deletion and insertion for the cases that expect them, batched; appends outcomes.

    ``inputs`` (N, 3, H, W) are the cases' model inputs and ``classes`` the explained classes.
    """
    rows = [i for i, result in enumerate(results) if wants_faithfulness(result)]
    if not rows:
        return
    scorer = Scorer(explainer)
    index = torch.as_tensor(rows, device=inputs.device)
    chosen = inputs.index_select(0, index)
    cams = np.stack([results[i].cam for i in rows])
    maps = torch.from_numpy(cams).to(inputs.device)
    saliency = at_input_size(maps, tuple(chosen.shape[-2:]))
    targets = torch.as_tensor([classes[i] for i in rows], device=inputs.device)
    original = scorer.probabilities(chosen, targets)
    curves = deletion_insertion(scorer, chosen, saliency, targets, original, STEPS)
    insertion = curves.auc(curves.insertion).tolist()
    deletion = curves.auc(curves.deletion).tolist()
    for k, i in enumerate(rows):
        case = results[i].case
        if case.insertion_auc_min is not None:
            results[i].outcomes.append(
                compared("insertion_auc", insertion[k], case.insertion_auc_min)
            )
        if case.deletion_auc_max is not None:
            results[i].outcomes.append(
                compared("deletion_auc", deletion[k], case.deletion_auc_max, at_most=True)
            )
