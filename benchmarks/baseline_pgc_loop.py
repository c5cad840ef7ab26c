"""Baseline: pytorch-grad-cam's README usage as a per-image loop over a folder.

For each image: load, preprocess, ``GradCAM(...)(input_tensor=..., targets=None)``,
``show_cam_on_image`` over the photo at its original size, ``cv2.imwrite``. The model sees the
same resize-256 / centre-crop-224 view camcli uses (the README's ``cam.py`` feeds the whole
photo to the model, which is far slower on large photos); the map is resized to the photo
with ``cv2.resize`` before ``show_cam_on_image``. Usage: ``baseline_pgc_loop.py FOLDER OUT
[DEVICE]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torchvision import transforms


def main() -> None:
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    device = torch.device(sys.argv[3] if len(sys.argv) > 3 else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    model = torchvision.models.resnet50().eval().to(device)
    target_layers = [model.layer4[-1]]
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    with GradCAM(model=model, target_layers=target_layers) as cam:
        for path in paths:
            image = Image.open(path).convert("RGB")
            rgb_img = np.float32(np.asarray(image)) / 255
            input_tensor = transform(image).unsqueeze(0).to(device)
            grayscale_cam = cam(input_tensor=input_tensor, targets=None)[0, :]
            grayscale_cam = cv2.resize(grayscale_cam, (rgb_img.shape[1], rgb_img.shape[0]))
            visualization = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
            rel = path.relative_to(folder).with_suffix(".gradcam.jpg")
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel), cv2.cvtColor(visualization, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
