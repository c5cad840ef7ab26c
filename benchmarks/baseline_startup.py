"""Baseline for start-up: import torch and torchvision, build resnet50, one forward pass."""

from __future__ import annotations

import torch
import torchvision

model = torchvision.models.resnet50().eval()
with torch.inference_mode():
    model(torch.randn(1, 3, 224, 224))
