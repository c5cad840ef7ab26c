"""Random masks for the black-box methods (RISE, D-RISE), and when to stop adding them.

A mask set is a function of (seed, cells, p, input size) only: mask ``i`` comes from block
``i // MASK_BLOCK``, whose grids and shifts are drawn by a NumPy generator seeded with
``(seed, block)``. So the first N masks are the same whatever N, whichever device runs them,
however the passes are chunked and whichever images share a batch: every image of every batch
is explained with the same masks, and ``--masks auto`` only appends blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from camcli.errors import UsageError

#: Masks per block of the generator (and per step of ``--masks auto``).
MASK_BLOCK = 250
#: ``--masks auto``: stop once the map correlates with the map at half the masks at least this.
AUTO_CORRELATION = 0.98
#: ``--masks auto``: the fewest and the most masks it uses.
AUTO_MIN_MASKS = 1000
AUTO_MAX_MASKS = 8000


def parse_masks(value: int | str) -> int | None:
    """``--masks``: a positive count, or ``auto`` (None: converge, ``AUTO_MAX_MASKS`` at most)."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"--masks must be a number of masks or auto, not {value!r}") from None
    if count < 1:
        raise UsageError(f"--masks must be at least 1 (or auto), got {count}")
    return count


def check_mask_options(cells: int, p: float) -> None:
    if cells < 1:
        raise UsageError(f"--mask-cells must be at least 1, got {cells}")
    if not 0.0 < p <= 1.0:
        raise UsageError(f"--mask-p must be in (0, 1], got {p:g}")


@dataclass
class MaskSet:
    """RISE's masks for inputs of ``size`` (H, W): binary ``cells`` x ``cells`` grids, each
    cell on with probability ``p``, upsampled bilinearly to ``(cells + 1) * ceil(H / cells)``
    (and likewise for W) and cropped to H x W at a random shift in ``[0, ceil(H / cells))``
    (Petsiuk et al. 2018, section 3.2).

    The upsampling is ``torch``'s bilinear with half-pixel centres and edge clamping; the
    paper's code uses ``skimage.transform.resize(order=1, mode="reflect")``, which differs
    only within half a cell of the upsampled grid's border.
    """

    seed: int
    cells: int
    p: float
    size: tuple[int, int]
    _grids: list[np.ndarray] = field(default_factory=list, repr=False)
    _shifts: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def cell_size(self) -> tuple[int, int]:
        h, w = self.size
        return math.ceil(h / self.cells), math.ceil(w / self.cells)

    def _ensure(self, count: int) -> None:
        """Draw the blocks that the first ``count`` masks need."""
        ch, cw = self.cell_size
        while len(self._grids) * MASK_BLOCK < count:
            rng = np.random.default_rng([self.seed, len(self._grids)])
            grids = rng.random((MASK_BLOCK, self.cells, self.cells)) < self.p
            shifts = np.stack(
                [rng.integers(0, ch, MASK_BLOCK), rng.integers(0, cw, MASK_BLOCK)], axis=1
            )
            self._grids.append(grids)
            self._shifts.append(shifts)

    def grids(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``start`` to ``stop``'s binary grids (n, s, s) and (row, column) shifts (n, 2)."""
        self._ensure(stop)
        grids = np.concatenate(self._grids)[start:stop]
        shifts = np.concatenate(self._shifts)[start:stop]
        return grids, shifts

    def masks(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Masks ``start`` to ``stop`` as float32 (n, H, W) on ``device``, values in [0, 1]."""
        grids, shifts = self.grids(start, stop)
        h, w = self.size
        ch, cw = self.cell_size
        up = (self.cells + 1) * ch, (self.cells + 1) * cw
        grid = torch.from_numpy(grids).to(device=device, dtype=torch.float32)[:, None]
        upsampled = nn.functional.interpolate(grid, size=up, mode="bilinear", align_corners=False)
        shift = torch.from_numpy(shifts).to(device)
        rows = shift[:, 0, None] + torch.arange(h, device=device)  # (n, H)
        cols = shift[:, 1, None] + torch.arange(w, device=device)  # (n, W)
        index = torch.arange(len(grids), device=device)[:, None, None]
        return upsampled[:, 0][index, rows[:, :, None], cols[:, None, :]].contiguous()


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two stacks of maps (..., H, W), one value per map; 1 where
    both are constant (nothing left to converge)."""
    a = a.flatten(-2).double()
    b = b.flatten(-2).double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    denominator = (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    both_flat = (a.norm(dim=-1) == 0) & (b.norm(dim=-1) == 0)
    return torch.where(both_flat, 1.0, (a * b).sum(-1) / denominator)


class Convergence:
    """``--masks auto``: after each block, whether the running sum of weighted masks has
    converged: its correlation with the sum at half as many blocks reaches
    ``AUTO_CORRELATION`` for every target (as CB-RISE stops on a convergence test), with at
    least ``AUTO_MIN_MASKS`` masks; ``AUTO_MAX_MASKS`` at most.

    With ``S_n = s + e_n`` (noise variance ``r`` times the map's), ``corr(S_n, S_{n/2}) =
    sqrt((1 + r) / (1 + 2 r))`` and ``corr(S_n, s) = 1 / sqrt(1 + r)``: 0.98 at half is about
    0.98 with the limit map (docs/methods.md).
    """

    def __init__(self) -> None:
        self.snapshots: list[torch.Tensor] = []

    def done(self, total: torch.Tensor, masks: int) -> bool:
        self.snapshots.append(total.detach().clone())
        if masks >= AUTO_MAX_MASKS:
            return True
        blocks = len(self.snapshots)
        if masks < AUTO_MIN_MASKS or blocks % 2:
            return False
        half = self.snapshots[blocks // 2 - 1]
        return bool((map_correlation(total, half) >= AUTO_CORRELATION).all())
