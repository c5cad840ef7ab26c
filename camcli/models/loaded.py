"""The loaded model that every later stage takes: module, preprocessing, labels, device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camcli.config import ModelSpec
from camcli.images import Preprocess


@dataclass
class LoadedModel:
    """A classifier ready to explain: eval mode, on its device, with preprocessing and labels."""

    model: nn.Module
    name: str
    weights: str | None
    preprocess: Preprocess
    labels: list[str] | None
    device: torch.device
    num_classes: int
    # Set by ``load_model``, which owns its model and converts it to channels-last memory
    # format; a model a caller builds keeps its layout unless the caller sets this.
    channels_last: bool = False
    # Whether camcli built this model itself (``load_model``) and may rewrite it for speed
    # (``fold_batchnorms``); a caller's model is never rewritten.
    owned: bool = False
    # What its output is (``camcli.targets``): softmax, binary or multilabel logits, a
    # segmentation's (N, K, H, W) map or a detector's boxes.
    head: str = "softmax"
    # What it was loaded from (``load_model``); None for a model a caller built.
    spec: ModelSpec | None = None

    def label(self, index: int) -> str | None:
        if self.labels is not None and 0 <= index < len(self.labels):
            return self.labels[index]
        return None


def head_layer(model: nn.Module) -> tuple[str, nn.Linear | nn.Conv2d] | None:
    """The classifier's output layer: the last linear layer, or the last convolution for
    all-convolutional heads (SqueezeNet's 1x1 ``classifier.1``)."""
    last_linear = last_conv = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_linear = (name, module)
        elif isinstance(module, nn.Conv2d):
            last_conv = (name, module)
    return last_linear or last_conv


def out_features(layer: nn.Linear | nn.Conv2d) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
