"""Baseline: decode a folder of images, apply the ImageNet transform, plain forward in batches.

What a user's own inference script does (no maps, nothing written): the model in its default
NCHW fp32 form under ``torch.inference_mode()``. Usage: ``baseline_forward.py FOLDER [DEVICE]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torchvision import transforms

BATCH = 16


def main() -> None:
    folder = Path(sys.argv[1])
    device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    model = torchvision.models.resnet50().eval().to(device)
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    count = 0
    with torch.inference_mode():
        for start in range(0, len(paths), BATCH):
            chunk = paths[start : start + BATCH]
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in chunk])
            logits = model(batch.to(device))
            count += int(logits.argmax(1).shape[0])
    print(count)


if __name__ == "__main__":
    main()
