"""Regenerate docs/example.png: camcli's Grad-CAM on the synthetic-shapes test model.

Pretrained ImageNet weights cannot be downloaded on the machines this project is built on, so
the README's picture comes from the small CNN the test suite trains (tests/synthetic.py): the
heat sits on the coloured shape that decides the class. Run: uv run python docs/make_example.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import synthetic  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(synthetic.train().state_dict(), tmp / "tiny.pt")
        (tmp / "labels.txt").write_text("\n".join(synthetic.CLASSES))
        images, _, _ = synthetic.dataset(4, seed=11)
        for i, img in enumerate(images):
            Image.fromarray(img).resize((256, 256), Image.NEAREST).save(tmp / f"shape{i}.png")
        subprocess.run(
            [sys.executable, "-m", "camcli", "run", *(str(tmp / f"shape{i}.png") for i in range(4)),
             "--out", str(tmp / "out"), "--model", f"{ROOT}/tests/synthetic.py:TinyCAMNet",
             "--checkpoint", str(tmp / "tiny.pt"), "--labels", str(tmp / "labels.txt"),
             "--input-size", "64", "--fit", "stretch", "--format", "png", "--quiet"],
            check=True,
        )  # fmt: skip
        tiles = []
        for i in range(4):
            top = np.asarray(Image.open(tmp / f"shape{i}.png"))
            bottom = np.asarray(Image.open(tmp / "out" / f"shape{i}.png.gradcam.top1.png"))
            tiles.append(np.concatenate([top, bottom], axis=0))
        Image.fromarray(np.concatenate(tiles, axis=1)).save(ROOT / "docs" / "example.png")


if __name__ == "__main__":
    main()
