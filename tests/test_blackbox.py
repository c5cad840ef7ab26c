"""Black-box methods (rise, drise, occlusion): their formulas in float64 from the same masks,
captum's Occlusion, convergence and localisation on models with a known answer, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.methods.masks import AUTO_MAX_MASKS, MaskSet, map_correlation
from camcli.models.loaded import LoadedModel
from camcli.targets import Target
from conftest import camcli_cli, tiny_args

CPU = torch.device("cpu")
SIZE = 64
#: The region RegionNet reads: rows 8-23, columns 32-55.
ROWS, COLS = slice(8, 24), slice(32, 56)


class RegionNet(nn.Module):
    """A classifier with a known answer and no layer at all: class 0's logit is
    ``12 (mean of channel 0 over the region - 0.5)``, class 1's is 0. Only the region matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = x[:, 0, ROWS, COLS].mean(dim=(1, 2))
        return torch.stack([12.0 * (inside - 0.5), torch.zeros_like(inside)], dim=1)


def region_probability(x: np.ndarray) -> np.ndarray:
    """RegionNet's softmax probability of class 0 for (n, 3, H, W), in float64."""
    logit = 12.0 * (x[:, 0, ROWS, COLS].mean(axis=(1, 2)) - 0.5)
    return 1.0 / (1.0 + np.exp(-logit))


def region_image(seed: int = 0) -> torch.Tensor:
    """Channel 0 is 1 over the region, noise elsewhere."""
    noise = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    x = 0.3 * noise
    x[:, 0, ROWS, COLS] += 1.0
    return x


def loaded_model(
    model: nn.Module, classes: int, head: str = "softmax", size: int = SIZE
) -> LoadedModel:
    return LoadedModel(model.eval(), "test", None, Preprocess(size, size), None, CPU, classes,
                       head=head)  # fmt: skip


def peak(saliency: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(saliency), saliency.shape))


# --- rise -------------------------------------------------------------------------------------


def test_rise_equals_the_papers_formula_in_float64():
    """``S = sum_i P(I * M_i) M_i / (N p)`` from the same masks, two images in one batch, a
    chunk size that does not divide N."""
    n, cells, p, seed = 300, 5, 0.4, 3
    x = torch.cat([region_image(0), region_image(1)])
    loaded = loaded_model(RegionNet(), 2)
    explainer = Explainer(loaded, "rise", masks=n, mask_cells=cells, mask_p=p, seed=seed,
                          chunk_size=37)  # fmt: skip
    assert explainer.layer_names == []  # no layer is looked for: the model has none
    result = explainer.explain(x, [Target(index=0), Target(index=1)])
    masks = MaskSet(seed, cells, p, (SIZE, SIZE)).masks(0, n, CPU).double().numpy()
    assert masks.shape == (n, SIZE, SIZE) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - p) < 0.05
    for i in range(2):
        image = x[i].double().numpy()
        prob0 = region_probability(image[None] * masks[:, None])
        for t, prob in enumerate((prob0, 1.0 - prob0)):
            expected = np.einsum("n,nhw->hw", prob, masks) / (n * p)
            np.testing.assert_allclose(result.maps[i, t], expected, atol=1e-5 * expected.max())
    assert result.details == [{"masks": n}, {"masks": n}]


def test_masks_do_not_depend_on_how_many_or_where():
    """The first masks of a set are the same whatever the count asked for; one seed, one set."""
    a = MaskSet(0, 7, 0.5, (40, 40))
    b = MaskSet(0, 7, 0.5, (40, 40))
    np.testing.assert_array_equal(a.masks(0, 600, CPU)[500:], b.masks(500, 600, CPU))
    other = MaskSet(1, 7, 0.5, (40, 40)).masks(0, 10, CPU)
    assert not torch.equal(a.masks(0, 10, CPU), other)


def test_rise_converges_and_finds_the_region():
    """Two seeds' maps at N = 4000 correlate above 0.9 and peak in the region; ``auto`` stops
    early with a map that correlates at least 0.98 with the 8000-mask map of its seed."""
    loaded = loaded_model(RegionNet(), 2)
    x = region_image()

    def rise(masks: int | str, seed: int) -> tuple[torch.Tensor, int]:
        explainer = Explainer(loaded, "rise", masks=masks, seed=seed, chunk_size=500)
        result = explainer.explain(x, [Target(index=0)])
        return torch.from_numpy(result.maps[0, 0]), result.details[0]["masks"]

    a, _ = rise(4000, 0)
    b, _ = rise(4000, 1)
    assert float(map_correlation(a, b)) > 0.9
    for saliency in (a, b):
        row, col = peak(saliency.numpy())
        assert ROWS.start <= row < ROWS.stop and COLS.start <= col < COLS.stop
    reference, _ = rise(8000, 0)
    auto, used = rise("auto", 0)
    assert used <= 2500 < AUTO_MAX_MASKS  # at most half OpenVINO XAI's default 5000
    assert float(map_correlation(auto, reference)) >= 0.98


def test_refusals_name_the_method_to_use():
    with pytest.raises(UsageError, match="use --method drise"):
        Explainer(loaded_model(SquareDetector(), 2, "detection"), "rise")
    with pytest.raises(UsageError, match="use --method rise"):
        Explainer(loaded_model(RegionNet(), 2), "drise")
    with pytest.raises(UsageError, match="--mask-p must be in"):
        Explainer(loaded_model(RegionNet(), 2), "rise", mask_p=0.0)
    with pytest.raises(UsageError, match="--masks must be at least 1"):
        Explainer(loaded_model(RegionNet(), 2), "rise", masks=0)
    with pytest.raises(UsageError, match="larger than the 64 px model input"):
        Explainer(loaded_model(RegionNet(), 2), "occlusion", window=65)
    with pytest.raises(UsageError, match="--mask-cells must be at least 1"):
        Explainer(loaded_model(RegionNet(), 2), "rise", mask_cells=0)
    with pytest.raises(UsageError, match="--stride 9 is larger than --window 8"):
        Explainer(loaded_model(RegionNet(), 2), "occlusion", window=8, stride=9)
    with pytest.raises(UsageError, match="--masks must be a number of masks or auto"):
        Explainer(loaded_model(RegionNet(), 2), "rise", masks="many")


def test_layer_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="uses no layer: --layer is ignored"):
        explainer = Explainer(loaded_model(RegionNet(), 2), "occlusion", ["anything"], window=8,
                              stride=8)  # fmt: skip
    assert explainer.layer_names == []


# --- drise ------------------------------------------------------------------------------------


class SquareDetector(nn.Module):
    """A detector in torchvision's output format that finds the red square: the box around
    the pixels whose channel 0 exceeds 0.5 (label 1), scored by their share of a 16 x 16
    square (at most 1); with none, no detection."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        found = []
        for image in x:
            red = image[0] > 0.5
            if not bool(red.any()):
                empty = torch.zeros((0, 4))
                found.append({"boxes": empty, "labels": torch.zeros(0, dtype=torch.long),
                              "scores": torch.zeros(0)})  # fmt: skip
                continue
            rows = torch.nonzero(red.any(dim=1)).flatten()
            cols = torch.nonzero(red.any(dim=0)).flatten()
            box = torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]]).float()
            score = (red.sum() / 256.0).clamp(max=1.0).reshape(1)
            found.append({"boxes": box, "labels": torch.ones(1, dtype=torch.long),
                          "scores": score})  # fmt: skip
        return found


def square_image() -> torch.Tensor:
    x = 0.2 * torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x[:, 0, 30:46, 10:26] = 1.0  # the square: x 10-26, y 30-46
    return x


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_drise_equals_its_formula_and_peaks_in_the_box():
    n, cells, p = 400, 8, 0.5
    detector = SquareDetector()
    loaded = loaded_model(detector, 2, "detection")
    x = square_image()
    explainer = Explainer(loaded, "drise", masks=n, mask_cells=cells, mask_p=p, chunk_size=64,
                          score_threshold=0.5)  # fmt: skip
    result = explainer.explain(x, [Target(box=1), Target(box=2)])
    assert result.present.tolist() == [[True, False]]
    box = np.array(result.boxes[0][0])
    np.testing.assert_allclose(box, [10, 30, 26, 46])
    masks = MaskSet(0, cells, p, (SIZE, SIZE)).masks(0, n, CPU)
    weights = []
    for mask in masks:
        (found,) = detector(x * mask)
        weights.append(max((iou(box, d.numpy()) * float(s) * (int(label) == 1)
                            for d, s, label in zip(found["boxes"], found["scores"],
                                                   found["labels"], strict=True)),
                           default=0.0))  # fmt: skip
    expected = np.einsum("n,nhw->hw", np.array(weights), masks.double().numpy()) / (n * p)
    np.testing.assert_allclose(result.maps[0, 0], expected, atol=1e-5 * expected.max())
    assert not result.maps[0, 1].any()  # no second box: no map
    row, col = peak(result.maps[0, 0])
    assert 30 <= row < 46 and 10 <= col < 26


# --- occlusion --------------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(16, 5)
        with torch.no_grad():  # large logits: occluding moves the probabilities by a lot
            self.fc.weight.mul_(40.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("window", "stride", "baseline"), [(8, 8, 0.0), (7, 3, 0.0), (10, 6, 0.5), (13, 5, -1.0)]
)
def test_occlusion_equals_captum(window, stride, baseline):
    from captum.attr import Occlusion

    model = SmallNet().eval()
    loaded = loaded_model(model, 5, size=32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    explainer = Explainer(loaded, "occlusion", window=window, stride=stride, baseline=baseline,
                          chunk_size=13)  # fmt: skip
    result = explainer.explain(x, [Target(rank=1), Target(index=2)])
    occlusion = Occlusion(lambda batch: torch.softmax(model(batch), dim=1))
    for t in range(2):
        target = torch.from_numpy(result.class_indices[:, t])
        with torch.no_grad():
            expected = occlusion.attribute(x, sliding_window_shapes=(3, window, window),
                                           strides=(3, stride, stride), baselines=baseline,
                                           target=target, perturbations_per_eval=16)  # fmt: skip
        torch.testing.assert_close(expected[:, 0], expected[:, 2])  # one map for all channels
        reference = expected[:, 0].numpy()
        peak_value = np.abs(reference).max()
        np.testing.assert_allclose(result.maps[:, t], reference, atol=1e-5 * peak_value, rtol=0)


# --- the command line -------------------------------------------------------------------------


def _maps(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(out.glob("**/*.npy"))}


def _shapes(tmp_path: Path, count: int = 3) -> Path:
    import synthetic

    images, _labels, _boxes = synthetic.dataset(count, seed=7)
    folder = tmp_path / "shapes"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def test_cli_rise_is_reproducible_and_independent_of_batching(tmp_path, tiny_checkpoint):
    folder = _shapes(tmp_path)
    runs = {
        "a": ["--batch-size", "4", "--chunk-size", "64"],
        "b": ["--batch-size", "4", "--chunk-size", "64"],
        "c": ["--batch-size", "1", "--chunk-size", "5"],
    }
    for name, extra in runs.items():
        done = camcli_cli("run", str(folder), *tiny_args(tiny_checkpoint), "--method", "rise",
                          "--masks", "64", "--seed", "1", "-f", "npy", "-o",
                          str(tmp_path / name), "--quiet", *extra, env={})  # fmt: skip
        assert done.returncode == 0, done.stderr
    a, b, c = (_maps(tmp_path / name) for name in runs)
    assert len(a) == 3 and a.keys() == b.keys() == c.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])  # the same run twice: the same bytes
        np.testing.assert_allclose(a[key], c[key], atol=1e-5 * np.abs(a[key]).max())
        assert a[key].shape == (SIZE, SIZE)  # at the model input size
    records = [
        json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()
    ]
    assert {r["masks"] for r in records} == {64}
    assert all(r["settings"]["masks"] == 64 and r["settings"]["seed"] == 1 for r in records)
    assert {r["layer"] for r in records} == {""}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "rise", "--mask-p", "1.5"], "--mask-p must be in (0, 1]"),
        (["--method", "occlusion", "--stride", "0"], "--stride must be at least 1"),
    ],
)
def test_cli_bad_values_are_one_line_usage_errors(tmp_path, tiny_checkpoint, flags, message):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    done = camcli_cli("run", str(image), *tiny_args(tiny_checkpoint), *flags, "-o",
                      str(tmp_path / "out"), env={})  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert message in line


def test_cli_check_spec_with_rise(tmp_path, tiny_checkpoint):
    import synthetic

    images, labels, boxes = synthetic.dataset(1, seed=11)
    Image.fromarray(images[0]).save(tmp_path / "shape.png")
    spec = tmp_path / "spec.toml"
    box = ", ".join(str(v) for v in boxes[0])
    spec.write_text(
        f'[model]\nmodel = "{tiny_checkpoint["model"]}"\ncheckpoint = "{tiny_checkpoint["checkpoint"]}"\n'
        f'labels = "{tiny_checkpoint["labels"]}"\ninput_size = 64\nfit = "stretch"\n'
        'device = "cpu"\nmethod = "rise"\nmasks = 500\nseed = 2\nmask_cells = 6\n\n'
        f'[[case]]\nimage = "shape.png"\nexpect_class = {int(labels[0])}\nbox = [{box}]\n'
    )
    done = camcli_cli("check", str(spec), "--json", env={})
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and report["model"]["method"] == "rise"
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.read_text().replace("masks = 500", "masks = 0"))
    done = camcli_cli("check", str(bad), env={})
    assert done.returncode == 2 and "masks must be at least 1" in done.stderr


def test_cli_evaluate_occlusion(tmp_path, tiny_checkpoint):
    folder = _shapes(tmp_path, 2)
    done = camcli_cli("evaluate", str(folder), *tiny_args(tiny_checkpoint), "--method",
                      "occlusion", "--method", "gradcam", "--window", "16", "--stride", "8",
                      "--metric", "deletion", "--json", env={})  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert list(report["methods"]) == ["occlusion", "gradcam"]
    assert report["methods"]["occlusion"]["metrics"]


def _hits(tiny_model, method: str, count: int, **options) -> int:
    """How many of ``count`` synthetic shapes get the map's peak inside their box."""
    import synthetic

    images, _labels, boxes = synthetic.dataset(count, seed=2024)
    loaded = LoadedModel(tiny_model, "tiny", None, Preprocess(SIZE, SIZE),
                         list(synthetic.CLASSES), CPU, 3)  # fmt: skip
    explainer = Explainer(loaded, method, chunk_size=512, **options)
    maps = explainer.explain(synthetic.to_tensor(images), [Target(rank=1)]).maps[:, 0]
    hits = 0
    for saliency, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        row, col = peak(saliency)
        hits += bool(x0 <= col < x1 and y0 <= row < y1)
    return hits


def test_occlusion_localises_on_the_trained_model(tiny_model):
    assert _hits(tiny_model, "occlusion", 8, window=12, stride=4) >= 7


@pytest.mark.slow
def test_rise_localises_on_the_trained_model(tiny_model):
    assert _hits(tiny_model, "rise", 8, masks=1500) >= 7


def test_drise_on_a_torchvision_detector_equals_its_formula():
    """A random-weight Faster R-CNN made to find boxes (as tests/test_detection.py): the map
    from the detections of the same masked batch, recomputed here box by box in float64."""
    from camcli.models import load_model
    from camcli.targets import apply_head

    n, size = 6, 128
    loaded = apply_head(load_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights="none",
                                   device="cpu", input_size=size))  # fmt: skip
    with torch.no_grad():
        loaded.model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    explainer = Explainer(loaded, "drise", masks=n, chunk_size=n, score_threshold=0.3)
    result = explainer.explain(x, [Target(box=1)])
    assert result.present.all() and result.details == [{"masks": n}]
    box, label = np.array(result.boxes[0][0]), int(result.class_indices[0, 0])
    masks = MaskSet(0, 16, 0.5, (size, size)).masks(0, n, CPU)
    with torch.inference_mode():
        found = loaded.model(x * masks[:, None])  # the same batch as the method's one chunk
    weights = [
        max((iou(box, d.double().numpy()) * float(s) * (int(c) == label)
             for d, s, c in zip(f["boxes"], f["scores"], f["labels"], strict=True)), default=0.0)
        for f in found
    ]  # fmt: skip
    assert any(weights)
    expected = np.einsum("n,nhw->hw", np.array(weights), masks.double().numpy()) / (n * 0.5)
    np.testing.assert_allclose(result.maps[0, 0], expected, atol=1e-5 * expected.max())
