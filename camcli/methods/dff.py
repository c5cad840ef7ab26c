"""Deep Feature Factorization (Collins et al. 2018): NMF concepts of one layer's activations."""

from __future__ import annotations

import numpy as np
import torch

from camcli.hooks import substituted
from camcli.methods.base import CamContext, CamMethod, require_context


def nmf(x: torch.Tensor, k: int, max_iter: int = 200, tol: float = 1e-4, seed: int = 0):
    """``X ~ W H`` with ``W, H >= 0`` for a non-negative (m, p) ``X``: (W (m, k), H (k, p)).

    Minimises ``||X - W H||_F^2`` by coordinate descent (HALS: each column of ``W``, then
    each row of ``H``, set to its non-negative least-squares optimum in turn), from
    scikit-learn's ``init="random"`` start (``|N(0, 1)| sqrt(mean X / k)``, numpy's generator
    seeded with ``seed``: the same start as ``sklearn.decomposition.NMF(init="random",
    random_state=seed)``, so the same local optimum). Stops when the projected gradient's
    L1 norm falls to ``tol`` times the first sweep's, or after ``max_iter`` sweeps. In the
    dtype and on the device of ``x``.
    """
    m, p = x.shape
    rng = np.random.RandomState(seed)
    scale = float(np.sqrt(x.mean().item() / k))
    start_h = np.abs(scale * rng.standard_normal(size=(k, p)))
    start_w = np.abs(scale * rng.standard_normal(size=(m, k)))
    w = torch.as_tensor(start_w, dtype=x.dtype, device=x.device).contiguous()
    ht = torch.as_tensor(start_h.T, dtype=x.dtype, device=x.device).contiguous()

    def sweep(data: torch.Tensor, factor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """One pass over ``factor``'s columns, ``data ~ factor other.T``; the violation."""
        gram = other.T @ other
        cross = data @ other
        violation = torch.zeros((), dtype=data.dtype, device=data.device)
        for t in range(k):
            grad = factor @ gram[:, t] - cross[:, t]
            projected = torch.where(factor[:, t] == 0, grad.clamp(max=0), grad)
            violation += projected.abs().sum()
            if gram[t, t] != 0:
                factor[:, t] = (factor[:, t] - grad / gram[t, t]).clamp(min=0)
        return violation

    first = None
    for _ in range(max_iter):
        violation = sweep(x, w, ht) + sweep(x.T, ht, w)
        first = violation if first is None else first
        if first == 0 or violation / first <= tol:
            break
    return w, ht.T


class DeepFeatureFactorization(CamMethod):
    """``A - o ~ W H``: each image's activation (C channels x H*W positions, each channel
    shifted by its minimum ``o``) factorised into ``k`` non-negative concepts; concept ``j``'s
    map is row ``H_j`` and its embedding ``W_j + o``, which the rest of the network scores
    (the embedding at every position of the layer, forwarded to the logits).

    Collins, Achanta & Süsstrunk 2018, "Deep Feature Factorization for Concept Discovery",
    arXiv:1806.10206; the factorisation is ``nmf`` (pytorch-grad-cam's, through scikit-learn,
    factorises a whole batch at once; camcli one image at a time, so an image's concepts do
    not depend on its batch). In ``camcli run`` the targets are the concepts: ``--concepts K``
    maps, each recorded with the class its embedding scores highest and that class's softmax
    probability. Given a class (``camcli check``, the library), the map is that of the
    concept that gives the class the highest probability. One layer, no ``--aug-smooth``
    (concepts found on a flipped copy are other concepts).
    """

    name = "dff"
    needs_grad = False
    # Its ablated passes run in PyTorch (they change the layer's output): the main pass
    # too, so that the score it subtracts them from comes from the same arithmetic.
    runtime_split = False
    supports_eigen_smooth = False
    supports_aug_smooth = False
    max_layers = 1
    #: Concepts factorised for class targets.
    default_concepts = 5

    def concepts(
        self, activation: torch.Tensor, context: CamContext, count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps (N, k, h, w), concept logits (N, k, K)) for ``count`` = k concepts."""
        n, c, h, w = activation.shape
        maps, embeddings = [], []
        for image in range(n):
            features = torch.nan_to_num(activation[image].double()).reshape(c, h * w)
            offset = features.amin(dim=1, keepdim=True)
            weights, rows = nmf(features - offset, count)
            maps.append(rows.reshape(count, h, w))
            embeddings.append((weights + offset).T)  # (k, C)
        assert context.module is not None
        batch = context.batch.to(activation.device)
        logits = []
        for image, embedding in enumerate(embeddings):
            grid = embedding[:, :, None, None].expand(-1, -1, h, w).to(activation.dtype)
            size = (int(batch.shape[-2]), int(batch.shape[-1]))
            with substituted(context.module, grid, size):
                copies = batch[image : image + 1].expand(count, -1, -1, -1)
                logits.append(context.forward(copies).float())
        return torch.stack(maps).float(), torch.stack(logits)

    def compute(
        self,
        activation: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        context: CamContext | None = None,
    ) -> torch.Tensor:
        context = require_context(context, self.name)
        maps, concept_logits = self.concepts(activation, context, self.default_concepts)
        probabilities = torch.softmax(concept_logits, dim=2)  # (N, k, K)
        index = targets[:, None, :].expand(-1, probabilities.shape[1], -1)
        best = probabilities.gather(2, index).argmax(dim=1)  # (N, T): the concept per class
        picked = best[:, :, None, None].expand(-1, -1, *maps.shape[-2:])
        return maps.gather(1, picked)


def concept_table(concept_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each concept's most probable class and its probability: (N, k) each."""
    probabilities = torch.softmax(concept_logits, dim=2)
    scores, classes = probabilities.max(dim=2)
    return classes, scores
