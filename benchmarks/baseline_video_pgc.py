"""Baseline: the loop pytorch-grad-cam's users write for a video (its issues 67, 197, 345).

``cv2.VideoCapture`` reads each frame; the frame gets the ImageNet view (shorter side 256,
centre crop 224); ``GradCAM(...)(input_tensor=..., targets=None)``; the map is resized to the
frame and drawn with ``show_cam_on_image``; ``cv2.VideoWriter`` (mp4v) writes the overlay.
Usage: ``baseline_video_pgc.py VIDEO OUT.mp4 [DEVICE]``.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torchvision import transforms


def main() -> None:
    source, out = sys.argv[1], sys.argv[2]
    device = torch.device(sys.argv[3] if len(sys.argv) > 3 else "cpu")
    model = torchvision.models.resnet50().eval().to(device)
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    capture = cv2.VideoCapture(source)
    fps = capture.get(cv2.CAP_PROP_FPS)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            input_tensor = transform(Image.fromarray(rgb)).unsqueeze(0).to(device)
            grayscale_cam = cam(input_tensor=input_tensor, targets=None)[0, :]
            grayscale_cam = cv2.resize(grayscale_cam, (width, height))
            visualization = show_cam_on_image(np.float32(rgb) / 255, grayscale_cam, use_rgb=True)
            writer.write(cv2.cvtColor(visualization, cv2.COLOR_RGB2BGR))
    capture.release()
    writer.release()


if __name__ == "__main__":
    main()
