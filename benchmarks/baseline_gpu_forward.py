"""Baseline: a decode + forward script that uses the GPU well (issue 10's yardstick).

nvJPEG decode in batches of 64 (``torchvision.io.decode_jpeg(..., device="cuda")``), resize
256 + centre crop 224 on the GPU, resnet50 forward under fp16 autocast in channels-last, no
maps and nothing written. Usage: ``baseline_gpu_forward.py FOLDER [DEVICE]``; prints the
number of images.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torchvision
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

warnings.filterwarnings("ignore", category=DeprecationWarning)
BATCH = 64
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def main() -> None:
    folder = Path(sys.argv[1])
    device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cuda")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    model = torchvision.models.resnet50().eval().to(device, memory_format=torch.channels_last)
    mean, std = MEAN.to(device), STD.to(device)
    count = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16):
        for start in range(0, len(paths), BATCH):
            data = [torchvision.io.read_file(str(p)) for p in paths[start : start + BATCH]]
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            views = [
                F.center_crop(F.resize(image, [256], antialias=True), [224]) for image in images
            ]
            batch = (torch.stack(views).float() / 255 - mean) / std
            logits = model(batch.contiguous(memory_format=torch.channels_last))
            count += int(logits.argmax(1).shape[0])
    print(count)


if __name__ == "__main__":
    main()
