"""torchvision's detectors (``fasterrcnn_*``, ``maskrcnn_*``, ``retinanet_*``, ``fcos_*``,
``ssd*``) as a model source.

torchvision's detectors take a list of [0, 1] RGB images of any size and do their own
normalisation, resizing and batching (``GeneralizedRCNNTransform``), then map the boxes back to
each input's size. camcli feeds them its usual square view of each image (``--fit crop`` or
``stretch``, ``--input-size`` px: the detector's own size by default) unnormalised, and sets the
transform's sizes to exactly that square, so its resize is the identity: the layer's grid, the
boxes and the map all live on the pixels camcli gave the model, and overlays map them back onto
the original image as for a classifier.
"""

from __future__ import annotations

import torchvision
from torchvision.models import list_models

from camcli.config import ModelSpec
from camcli.images import Preprocess
from camcli.models.loaded import LoadedModel
from camcli.models.segmentation import load_dense


def detection_models() -> list[str]:
    return list_models(module=torchvision.models.detection)


def native_size(name: str) -> int:
    """The detector's own input size: SSD300 300 px, SSDlite and the 320 models 320, else 800
    (the R-CNN family's shorter side)."""
    if name.startswith("ssd300"):
        return 300
    return 320 if "320" in name else 800


def load_detection(spec: ModelSpec, progress: bool) -> LoadedModel:
    """A detector whose transform takes camcli's square view at its size as it is."""
    name = spec.model
    size = spec.input_size or native_size(name)
    preprocess = Preprocess(size, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", spec.fit)
    loaded = load_dense(spec, "detection", preprocess, progress)
    transform = loaded.model.transform
    if name.startswith("ssd"):
        transform.fixed_size = (size, size)
    else:
        transform.min_size, transform.max_size = (size,), size
    return loaded
