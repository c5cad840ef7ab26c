"""The methods on the shared engine: guided backprop leaves the model as it was, batches are
per image, extra passes are chunked and skip the layers before the hooked one, smoothing
options, and the CLI for all of it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import synthetic
from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import AUGMENTATIONS, Explainer
from camcli.images import Preprocess
from camcli.methods import METHODS, get_method_class
from camcli.methods.base import CamContext
from camcli.methods.guided import guided_relus, input_gradients
from camcli.models import LoadedModel
from camcli.targets import Target
from conftest import tiny_args

runner = CliRunner()


def _tiny(model: nn.Module) -> LoadedModel:
    return LoadedModel(
        model, "tiny", None, Preprocess(64, 64), list(synthetic.CLASSES), torch.device("cpu"), 3
    )


def _images(n: int = 2, seed: int = 3) -> torch.Tensor:
    return synthetic.to_tensor(synthetic.dataset(n, seed)[0])


def _snapshot(model: nn.Module):
    return (
        [(name, type(m)) for name, m in model.named_modules()],
        [sorted(m.__dict__) for m in model.modules()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
         for m in model.modules()],
        [p.grad for p in model.parameters()],
        model.training,
    )  # fmt: skip


def test_registry_names_match_classes_and_cover_the_issue():
    wanted = {
        "gradcam", "gradcam++", "xgradcam", "hirescam", "gradcam-elementwise", "layercam",
        "eigengradcam", "smoothgradcam++", "cam", "scorecam", "sscam", "iscam", "ablationcam",
        "eigencam", "guided-backprop", "guided-gradcam",
        "randomcam", "sobel",
    }  # fmt: skip
    # Issue 12: the methods of pytorch-grad-cam 1.5.7 and torchcam 0.5.0.
    wanted |= {"fem", "kpcacam", "shapleycam", "finercam", "refinecam", "fullgrad", "legrad", "dff"}
    wanted |= {"rise", "drise", "occlusion"}  # issue 24: the black-box methods
    assert set(METHODS) == wanted
    for name, info in METHODS.items():
        cls = get_method_class(name)
        assert cls.name == name
        assert cls.needs_grad == info.needs_grad
        assert cls.__doc__ and ("arXiv" in cls.__doc__ or "20" in cls.__doc__)


def test_methods_command_lists_every_method_with_gradients_flag():
    result = runner.invoke(app, ["methods", "--json"])
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["name"]: r["needs_grad"] for r in rows} == {
        n: i.needs_grad for n, i in METHODS.items()
    }
    assert all(r["summary"] and r["paper"] for r in rows)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_guided_backprop_restores_the_model_after_success_and_after_an_exception(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=5).train()
    x = torch.randn(2, 3, 48, 48)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    model.train()
    before = _snapshot(model)
    with guided_relus(model) as count:
        assert count > 0
    assert _snapshot(model) == before

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom), guided_relus(model):
        model.eval()
        model(x)
        raise Boom
    model.train()
    assert _snapshot(model) == before
    loaded = LoadedModel(model, arch, None, Preprocess(48, 48), None, torch.device("cpu"), 5)
    for method in ("guided-backprop", "guided-gradcam"):
        Explainer(loaded, method).explain(x, [Target(rank=1)])
        assert _snapshot(model) == before
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_guided_relu_changes_the_backward_only_and_reaches_reused_modules():
    """torchvision's BasicBlock calls its one ``relu`` twice: both calls must be guided."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(1, 3, 48, 48)
    context = CamContext(model, x, lambda b: model(b))
    targets = torch.tensor([[2]])
    plain = input_gradients(model, context, targets, guided=False)
    guided = input_gradients(model, context, targets, guided=True)
    assert not torch.allclose(plain, guided)
    calls = []
    relu = model.layer1[0].relu
    with guided_relus(model):
        handle = relu.register_forward_hook(lambda m, i, o: calls.append(o))
        with torch.no_grad():
            out = model(x)
        handle.remove()
    assert len(calls) == 2
    with torch.no_grad():
        assert torch.allclose(out, model(x))


@pytest.mark.parametrize("method", ["guided-backprop", "guided-gradcam", "smoothgradcam++"])
def test_a_batch_gives_each_image_its_own_map(tiny_model, method):
    """pytorch-grad-cam's guided backprop only explains the first image of a batch."""
    x = _images(2)
    explainer = Explainer(_tiny(tiny_model), method)
    targets = [Target(index=0), Target(index=2)]
    both = explainer.explain(x, targets)
    for i in range(2):
        alone = explainer.explain(x[i : i + 1], targets)
        np.testing.assert_allclose(both.maps[i], alone.maps[0], rtol=1e-4, atol=1e-6)
        if both.saliency is not None:
            np.testing.assert_allclose(both.saliency[i], alone.saliency[0], rtol=1e-4, atol=1e-7)
    assert not np.allclose(both.maps[0], both.maps[1])


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "iscam"])
def test_chunk_size_does_not_change_the_map_and_progress_is_reported(tiny_model, method):
    x = _images(2)
    reports = []
    small = Explainer(
        _tiny(tiny_model), method, chunk_size=7, progress=lambda d, t: reports.append((d, t))
    )
    if method == "iscam":
        small.method.samples = 2
    big = Explainer(_tiny(tiny_model), method, chunk_size=1000)
    samples = getattr(small.method, "samples", 1)
    if method == "iscam":
        big.method.samples = samples
    a = small.explain(x, [Target(rank=1), Target(index=1)]).maps
    b = big.explain(x, [Target(rank=1), Target(index=1)]).maps
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(np.abs(b).max()))
    total = samples * 2 * 64  # samples x images x channels
    assert reports[-1] == (total, total)
    assert len(reports) == -(-total // 7)


def test_ablation_runs_the_layers_before_the_hooked_one_once_per_chunk(tiny_model):
    x = _images(2)
    explainer = Explainer(_tiny(tiny_model), "ablationcam", layers=["features.8"], chunk_size=16)
    first = tiny_model.features[0]
    calls = []
    handle = first.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        explainer.explain(x, [Target(rank=1)])
    finally:
        handle.remove()
    # one main pass (batch 2), then 64 channels / 16 per chunk = 4 chunks per image, 1 image each
    assert calls == [2] + [1] * 8
    assert not explainer.method.expand_input


def test_ablation_falls_back_to_copies_of_the_input_when_the_batch_cannot_change():
    """A skip connection from before the layer that cannot broadcast (a concatenation) makes
    the one-image shortcut fail; the whole model then runs on copies and gives the same map
    as ablating by hand."""

    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.body = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(10, 3)

        def forward(self, x):
            s = self.stem(x)
            return self.fc(torch.cat([s, self.body(s)], 1).mean((2, 3)))

    torch.manual_seed(0)
    model = Concat().eval()
    x = torch.randn(1, 3, 16, 16)
    loaded = LoadedModel(model, "concat", None, Preprocess(16, 16), None, torch.device("cpu"), 3)
    explainer = Explainer(loaded, "ablationcam", layers=["body"], chunk_size=4)
    maps = explainer.explain(x, [Target(index=1)]).maps[0, 0]
    assert explainer.method.expand_input
    with torch.no_grad():
        s = model.stem(x)
        a = model.body(s)
        base = model(x)[0, 1]
        weights = []
        for k in range(6):
            b = a.clone()
            b[:, k] = 0
            weights.append((base - model.fc(torch.cat([s, b], 1).mean((2, 3)))[0, 1]) / base)
        expected = torch.relu((torch.stack(weights)[:, None, None] * a[0]).sum(0))
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-4, atol=1e-6)


def test_aug_smooth_is_flip_equivariant_and_averages_the_augmentations(tiny_model):
    x = _images(1)
    explainer = Explainer(_tiny(tiny_model), "gradcam", aug_smooth=True)
    target = [Target(index=1)]
    smooth = explainer.explain(x, target).maps
    flipped = explainer.explain(x.flip(-1), target).maps
    assert smooth.shape == (1, 1, 64, 64)
    np.testing.assert_allclose(smooth, flipped[..., ::-1], rtol=1e-4, atol=1e-6)
    plain = Explainer(_tiny(tiny_model), "gradcam")
    by_hand = 0
    for flip, factor in AUGMENTATIONS:
        view = x * factor
        view = view.flip(-1) if flip else view
        m = torch.from_numpy(plain.explain(view, target).maps)
        m = nn.functional.interpolate(m, size=(64, 64), mode="bilinear")
        by_hand = by_hand + (m.flip(-1) if flip else m)
    np.testing.assert_allclose(smooth, by_hand.numpy() / len(AUGMENTATIONS), rtol=1e-4, atol=1e-7)


def test_eigen_smooth_changes_weighted_methods_and_is_refused_where_meaningless(tiny_model):
    x = _images(1)
    plain = Explainer(_tiny(tiny_model), "gradcam").explain(x, [Target(rank=1)]).maps
    smooth = Explainer(_tiny(tiny_model), "gradcam", eigen_smooth=True).explain(x, [Target(rank=1)])
    assert not np.allclose(plain, smooth.maps)
    assert np.corrcoef(plain.ravel(), smooth.maps.ravel())[0, 1] > 0.5
    for method in ("eigencam", "guided-backprop"):
        with pytest.raises(UsageError, match="--eigen-smooth does not apply"):
            Explainer(_tiny(tiny_model), method, eigen_smooth=True)


def test_cli_guided_backprop_writes_colour_and_gray_saliency_at_the_image_size(
    tiny_checkpoint, tmp_path
):
    images, _, _ = synthetic.dataset(1, seed=5)
    big = Image.fromarray(images[0]).resize((96, 80))
    src = tmp_path / "in"
    src.mkdir()
    big.save(src / "shape.png")
    out = tmp_path / "out"
    args = ["run", str(src), "--out", str(out), *tiny_args(tiny_checkpoint)]
    args += ["--method", "guided-gradcam", "-f", "png", "-f", "npy", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    colour = np.asarray(Image.open(out / "shape.png.guided-gradcam.top1.png"))
    gray = np.asarray(Image.open(out / "shape.png.guided-gradcam.top1.gray.png"))
    raw = np.load(out / "shape.png.guided-gradcam.top1.npy")
    assert colour.shape == (80, 96, 3) and gray.shape == (80, 96)
    assert raw.shape == (64, 64)
    assert gray.max() > 200 and colour.std() > 0
    # --fit stretch: the 64x64 model view spans the whole 96x80 image, so the gray picture is
    # the raw map resized onto it
    resized = np.asarray(Image.fromarray(raw).resize((96, 80), Image.BILINEAR))
    assert np.corrcoef(resized.ravel(), gray.ravel().astype(float))[0, 1] > 0.95


def test_cli_smoothing_and_chunk_options_reach_the_engine(tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    args = ["run", str(folder / "a"), "--out", str(out), *tiny_args(tiny_checkpoint), "-q"]
    result = runner.invoke(app, [*args, "--method", "scorecam", "--chunk-size", "20",
                                 "--eigen-smooth", "-f", "npy"])  # fmt: skip
    assert result.exit_code == 0, result.output
    maps = sorted(out.rglob("*.scorecam.top1.npy"))
    assert len(maps) == 6 and np.load(maps[0]).shape == (16, 16)
    result = runner.invoke(app, [*args, "--method", "gradcam", "--aug-smooth", "-f", "npy"])
    assert result.exit_code == 0, result.output
    maps = sorted(out.rglob("*.gradcam.top1.npy"))
    assert len(maps) == 6 and np.load(maps[0]).shape == (64, 64)
    result = runner.invoke(app, [*args, "--method", "eigencam", "--eigen-smooth"])
    assert result.exit_code == 2
    assert "--eigen-smooth does not apply to eigencam" in result.output
