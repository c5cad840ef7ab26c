"""pytorch-grad-cam's raw Grad-CAM / Eigen-CAM maps for any of its target callables (shared by
the head, segmentation and detection tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


def pgc_raw(cam_class: type, model: nn.Module, layer: nn.Module, x: torch.Tensor,
            targets: Sequence[Callable], reshape: Callable | None = None) -> np.ndarray:  # fmt: skip
    """The per-layer map (before upsampling) pytorch-grad-cam computes: ``get_cam_image`` of
    the recorded activations and the gradients of ``sum_i target_i(output_i)``."""
    cam = cam_class(model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        outputs = cam.activations_and_grads(x)
        if cam.uses_gradients:
            model.zero_grad()
            sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward(retain_graph=True)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients
        grads = grads[0].numpy() if grads else None
        return np.maximum(cam.get_cam_image(x, layer, targets, activations, grads, False), 0)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


def assert_close(mine: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    """Equal to ``rel`` of the reference map's peak (and the reference is not blank)."""
    ref = np.asarray(ref, dtype=np.float64)
    assert mine.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0, "the reference map is blank; the comparison would prove nothing"
    error = np.abs(mine - ref).max()
    assert error <= rel * scale, f"max |camcli - reference| = {error:.3g}, map max {scale:.3g}"
