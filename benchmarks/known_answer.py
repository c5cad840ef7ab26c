"""A resnet18 with a known answer for the ``rise`` row (issue 24), built in about a minute of CPU.

Pretrained weights cannot be downloaded here, and a resnet18 with random weights has a flat
softmax (top-1 probability about 0.01) that masking barely moves, so RISE's map on it is
sampling noise. This one keeps torchvision's resnet18 backbone with seeded random weights,
frozen, and trains only a new ``fc`` (512 -> 3, multinomial logistic regression on the pooled
features, computed once) on synthetic 224 px pictures: a textured gray background with one
square whose colour (red, green or blue) is the class. Only the square carries the class,
so the class probability falls when masks hide it and RISE's map must peak on it.

``picture(seed)`` draws one such picture and its square's box; ``build(n, steps)`` returns
the model (eval mode, 1 x 3 x 224 x 224 ImageNet-normalised input, 3 logits) and its accuracy
on held-out pictures.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SIZE = 224
CLASSES = ("red", "green", "blue")
_HUES = np.array([[1.0, 0.15, 0.15], [0.15, 1.0, 0.15], [0.2, 0.3, 1.0]])
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def draw(rng: np.random.Generator, label: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One SIZE x SIZE RGB uint8 picture and its square's box (x0, y0, x1, y1), end exclusive:
    gray with a blotchy low-frequency texture and pixel noise, one square of 48 to 72 px."""
    coarse = rng.normal(0, 30, (8, 8))
    blotches = np.kron(coarse, np.ones((SIZE // 8, SIZE // 8)))
    base = rng.uniform(90, 160) + blotches
    img = base[..., None] + rng.normal(0, 20, (SIZE, SIZE, 3))
    side = int(rng.integers(48, 73))
    x0 = int(rng.integers(0, SIZE - side))
    y0 = int(rng.integers(0, SIZE - side))
    img[y0 : y0 + side, x0 : x0 + side] = _HUES[label] * rng.uniform(170, 255)
    return img.clip(0, 255).astype(np.uint8), (x0, y0, x0 + side, y0 + side)


def picture(seed: int = 11, label: int = 1) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The benchmark's picture (seed 11: a green 63 px square in the upper right, box
    (137, 33, 200, 96)) and its square's box. Green, not red: RISE's masked pixels are the
    ImageNet mean colour, a brownish gray that the model reads as red, so with the square
    hidden the red class stays high but the green one drops to about 0."""
    return draw(np.random.default_rng(seed), label)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 to N x 3 x H x W, normalised with the ImageNet mean and std."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - _MEAN) / _STD


def _features(backbone: nn.Module, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, ...]:
    labels = rng.integers(0, len(CLASSES), n)
    feats = []
    with torch.inference_mode():
        for start in range(0, n, 32):
            batch = np.stack([draw(rng, int(c))[0] for c in labels[start : start + 32]])
            feats.append(backbone(to_tensor(batch)))
    return torch.cat(feats), torch.from_numpy(labels).long()


def build(n: int = 256, steps: int = 300, seed: int = 0) -> tuple[nn.Module, float]:
    """resnet18 (seeded random backbone, frozen) with an ``fc`` trained on the squares; the
    model in eval mode and its accuracy on n // 4 held-out pictures."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None).eval()
    model.fc = nn.Identity()
    rng = np.random.default_rng(seed)
    x, y = _features(model, rng, n)
    x_test, y_test = _features(model, rng, max(n // 4, 1))
    mean, std = x.mean(0), x.std(0) + 1e-6
    fc = nn.Linear(x.shape[1], len(CLASSES))
    opt = torch.optim.Adam(fc.parameters(), lr=1e-2, weight_decay=1e-4)
    z = (x - mean) / std
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(fc(z), y).backward()
        opt.step()
    # Fold the standardisation into the layer: fc((f - mean) / std) = W' f + b'.
    folded = nn.Linear(x.shape[1], len(CLASSES))
    with torch.no_grad():
        folded.weight.copy_(fc.weight / std)
        folded.bias.copy_(fc.bias - (fc.weight * mean / std).sum(1))
        accuracy = float((folded(x_test).argmax(1) == y_test).float().mean())
    model.fc = folded
    return model.eval(), accuracy
