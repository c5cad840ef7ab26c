"""Regenerate docs/video.png: frames of `camcli run clip.mp4`'s overlay video.

A synthetic clip (a red square crossing gray noise, tests/clips.py) explained by the small CNN
the test suite trains (tests/synthetic.py; pretrained weights cannot be downloaded where this
project is built): three frames of the overlay video, the heat following the square.
Run: uv run python docs/make_video.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import synthetic  # noqa: E402
from clips import square_frames, write_clip  # noqa: E402

FRAMES = 30
SHOWN = (0, 14, 29)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save(synthetic.train().state_dict(), tmp / "tiny.pt")
        (tmp / "labels.txt").write_text("\n".join(synthetic.CLASSES))
        small, _ = square_frames(FRAMES, 64, 48)
        big = [np.asarray(Image.fromarray(f).resize((256, 192), Image.NEAREST)) for f in small]
        clip = write_clip(tmp / "clip.mp4", big, rate=10)
        subprocess.run(
            [sys.executable, "-m", "camcli", "run", str(clip), "--out", str(tmp / "out"),
             "--model", f"{ROOT}/tests/synthetic.py:TinyCAMNet", "--checkpoint",
             str(tmp / "tiny.pt"), "--labels", str(tmp / "labels.txt"), "--input-size", "64",
             "--fit", "stretch", "--quiet"],
            check=True,
        )  # fmt: skip
        with av.open(str(tmp / "out" / "clip.mp4.gradcam.top1.mp4")) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        gap = np.full((192, 8, 3), 255, np.uint8)
        tiles = []
        for i in SHOWN:
            tiles += [frames[i], gap]
        Image.fromarray(np.concatenate(tiles[:-1], axis=1)).save(ROOT / "docs" / "video.png")


if __name__ == "__main__":
    main()
