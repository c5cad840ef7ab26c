"""torchvision's semantic segmentation models (``deeplabv3_*``, ``fcn_*``, ``lraspp_*``) as a
model source; the shared loading of torchvision's dense models (segmentation, detection).

Segmentation models take the ImageNet-normalised image and return ``{"out": (N, K, H, W)}``
(``camcli.targets.SegmentationHead`` explains it). Their weights' preset resizes the shorter
side to 520 px; camcli feeds them its usual square view (``--fit crop``: shorter side resized
to the input size, centre crop; ``--fit stretch``: the whole image squashed), 520 px unless
``--input-size`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from camcli.config import ModelSpec
from camcli.errors import CheckpointError, UsageError
from camcli.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from camcli.models import torchvision as tv
from camcli.models.checkpoints import read_checkpoint
from camcli.models.devices import resolve_device
from camcli.models.labels import read_labels
from camcli.models.loaded import LoadedModel

DEFAULT_SIZE = 520


def segmentation_models() -> list[str]:
    return list_models(module=torchvision.models.segmentation)


def seeded_dense(name: str, num_classes: int | None) -> nn.Module:
    """A random-weight build from ``RANDOM_INIT_SEED``. ``weights_backbone=None``: torchvision's
    dense builders would otherwise download an ImageNet backbone."""
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tv.RANDOM_INIT_SEED)
        return get_model(name, weights=None, weights_backbone=None, **kwargs)


def load_dense(
    spec: ModelSpec,
    head: str,
    preprocess: Preprocess,
    progress: bool,
) -> LoadedModel:
    """Build a torchvision dense model in eval mode: its weights through the classifier
    source's safe loader, ``--weights none`` seeded, or a ``--checkpoint`` state dict."""
    name, weights, checkpoint = spec.model, spec.weights, spec.checkpoint
    num_classes, labels = spec.num_classes, spec.labels
    dev = resolve_device(spec.device)
    named = weights is not None and weights.lower() not in ("none", "default")
    if checkpoint is not None and named:
        raise UsageError(f"--weights {weights} and --checkpoint conflict; leave --weights out")
    chosen = None if checkpoint is not None else tv.resolve_weights(name, weights)
    if chosen is not None:
        if num_classes is not None and num_classes != len(chosen.meta["categories"]):
            raise UsageError(
                f"--num-classes {num_classes} does not fit pretrained weights {chosen.name}"
            )
        model = tv.load_pretrained(name, chosen, progress)
    else:
        model = seeded_dense(name, num_classes)
    if checkpoint is not None:
        state = read_checkpoint(checkpoint)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{Path(checkpoint)}: does not fit {name} ({reason})") from None
    model.eval().to(dev)
    default = get_model_weights(name).DEFAULT
    categories = list((chosen or default).meta["categories"])
    count = num_classes or len(categories)
    if labels is not None:
        label_list: list[str] | None = read_labels(labels)
        if len(label_list) != count:
            raise UsageError(f"{labels}: has {len(label_list)} labels but {name} has {count}")
    else:
        label_list = categories if count == len(categories) else None
    return LoadedModel(
        model=model,
        name=name,
        weights=chosen.name if chosen is not None else None,
        preprocess=preprocess,
        labels=label_list,
        device=dev,
        num_classes=count,
        owned=True,
        head=head,
    )


def load_segmentation(spec: ModelSpec, progress: bool) -> LoadedModel:
    """A segmentation model fed ImageNet-normalised square views of ``input_size`` (520)."""
    size = spec.input_size or DEFAULT_SIZE
    preprocess = Preprocess(size, size, IMAGENET_MEAN, IMAGENET_STD, "bilinear", spec.fit)
    return load_dense(spec, "segmentation", preprocess, progress)
