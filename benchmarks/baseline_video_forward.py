"""Baseline: decode a video's frames and run the plain forward over them in batches.

What a user's own inference loop over a video does (no maps, nothing written): PyAV decodes
the frames (the decoder camcli uses), each frame gets the ImageNet view (shorter side to 256,
centre crop 224) and the model, in its default NCHW fp32 form under ``torch.inference_mode()``,
runs on batches of 16. Usage: ``baseline_video_forward.py VIDEO [DEVICE]``.
"""

from __future__ import annotations

import sys

import av
import torch
import torchvision
from torchvision import transforms

BATCH = 16


def main() -> None:
    device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
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
    frames = []
    with av.open(sys.argv[1]) as container, torch.inference_mode():
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(transform(frame.to_image()))
            if len(frames) == BATCH:
                count += int(model(torch.stack(frames).to(device)).argmax(1).shape[0])
                frames = []
        if frames:
            count += int(model(torch.stack(frames).to(device)).argmax(1).shape[0])
    print(count)


if __name__ == "__main__":
    main()
