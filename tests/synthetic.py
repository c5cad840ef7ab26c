"""Synthetic shapes and a tiny GAP + linear CNN trained on them in seconds (fixed seed).

Each image is gray noise with one coloured shape (a square, a disc or a cross) at a random
place; the class is the shape's colour. Only the shape carries the class, so a model that
classifies these must look at it, and its CAM and Grad-CAM peaks must land inside the
shape's box: the localisation tests use that.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CLASSES = ("red", "green", "blue")
_HUES = np.array([[1.0, 0.15, 0.15], [0.15, 1.0, 0.15], [0.2, 0.3, 1.0]])
SIZE = 64


def draw(rng: np.random.Generator, label: int, size: int = SIZE) -> tuple[np.ndarray, tuple]:
    """One RGB uint8 image and the shape's box (x0, y0, x1, y1), pixel edges, end exclusive."""
    img = rng.normal(90, 25, (size, size, 3)).clip(0, 255)
    side = int(rng.integers(14, 21))
    x0 = int(rng.integers(0, size - side))
    y0 = int(rng.integers(0, size - side))
    colour = _HUES[label] * rng.uniform(170, 255)
    shape = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:side, 0:side]
    centre = (side - 1) / 2
    if shape == 0:
        mask = np.ones((side, side), bool)
    elif shape == 1:
        mask = (yy - centre) ** 2 + (xx - centre) ** 2 <= (side / 2) ** 2
    else:
        bar = side // 3
        mask = (np.abs(yy - centre) <= bar / 2) | (np.abs(xx - centre) <= bar / 2)
    patch = img[y0 : y0 + side, x0 : x0 + side]
    patch[mask] = colour
    return img.astype(np.uint8), (x0, y0, x0 + side, y0 + side)


def dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    images, boxes = [], []
    for label in labels:
        img, box = draw(rng, int(label))
        images.append(img)
        boxes.append(box)
    return np.stack(images), labels, boxes


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Normalised like camcli does with the ImageNet mean and std."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


class TinyCAMNet(nn.Module):
    """conv stack -> global average pooling -> linear: the CAM architecture, 16x16 maps."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, 16, 1), *block(16, 32, 2), *block(32, 64, 1), *block(64, 64, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class SpreadNet(TinyCAMNet):
    """TinyCAMNet on its input divided by each channel's spread (its standard deviation over
    the pixels): finite on a picture, not on a flat one (c / 0), nor on the all-zero input
    that deletion ends with and insertion starts from (0 / 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x / x.std(dim=(2, 3), keepdim=True))


def train(seed: int = 0, n: int = 600, epochs: int = 3) -> TinyCAMNet:
    torch.manual_seed(seed)
    images, labels, _ = dataset(n, seed)
    x, y = to_tensor(images), torch.from_numpy(labels).long()
    model = TinyCAMNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, n: int = 300, seed: int = 99) -> float:
    images, labels, _ = dataset(n, seed)
    with torch.inference_mode():
        pred = model(to_tensor(images)).argmax(1).numpy()
    return float((pred == labels).mean())
