"""Speed features must not change the maps: bf16 autocast, channels-last, batched top-k."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

import synthetic
from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.models import LoadedModel, fold_batchnorms, load_model, use_channels_last
from camcli.targets import Target
from conftest import tiny_args


def _loaded(model: nn.Module, channels_last: bool = False) -> LoadedModel:
    model = copy.deepcopy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return LoadedModel(
        model, "tiny", None, Preprocess(64, 64), list(synthetic.CLASSES),
        torch.device("cpu"), 3, channels_last=channels_last,
    )  # fmt: skip


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    images, _labels, _boxes = synthetic.dataset(6, seed=7)
    return synthetic.to_tensor(images)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_bf16_maps_match_fp32(tiny_model, batch, method):
    targets = [Target(rank=1), Target(rank=2)]
    full = Explainer(_loaded(tiny_model), method).explain(batch, targets)
    low = Explainer(_loaded(tiny_model), method, precision="bf16").explain(batch, targets)
    assert low.maps.dtype == np.float32
    assert _pearson(full.maps, low.maps) >= 0.99
    # bf16 is a real change of arithmetic: the maps are close, not bit-identical.
    assert not np.array_equal(full.maps, low.maps)
    np.testing.assert_array_equal(full.class_indices[:, 0], low.class_indices[:, 0])


def test_bf16_activations_reach_methods_in_fp32(tiny_model, batch):
    explainer = Explainer(_loaded(tiny_model), "gradcam", precision="bf16")
    activations, logits = explainer._forward(batch)
    assert logits.dtype == torch.bfloat16  # the forward really ran under autocast
    assert all(a.dtype == torch.float32 for a in activations.values())


def test_unknown_precision_is_a_usage_error(tiny_model):
    with pytest.raises(UsageError, match="unknown precision 'int8'"):
        Explainer(_loaded(tiny_model), "gradcam", precision="int8")


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_channels_last_gives_the_same_maps(tiny_model, batch, method):
    targets = [Target(rank=1), Target(index=2)]
    fast = Explainer(_loaded(tiny_model, channels_last=True), method)
    assert fast.channels_last
    plain = Explainer(_loaded(tiny_model), method)
    assert not plain.channels_last
    weight = plain.loaded.model.features[0].weight
    assert not weight.is_contiguous(memory_format=torch.channels_last)  # left as it was given
    a = fast.explain(batch, targets)
    b = plain.explain(batch, targets)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-4, atol=1e-5 * float(b.maps.max()))
    np.testing.assert_array_equal(a.class_indices, b.class_indices)


def test_load_model_runs_its_own_convnets_channels_last():
    resnet = load_model("resnet18", weights="none", device="cpu")
    assert resnet.channels_last and resnet.owned
    assert resnet.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    vit = load_model("vit_b_16", weights="none", device="cpu")
    assert not vit.channels_last


def test_channels_last_only_for_convolutional_nets():
    cpu = torch.device("cpu")
    convs = nn.Sequential(*(nn.Conv2d(3, 3, 1) for _ in range(3)))
    assert use_channels_last(convs, cpu)
    assert not use_channels_last(nn.Sequential(nn.Conv2d(3, 3, 1)), cpu)
    attention = nn.Sequential(*(nn.Conv2d(3, 3, 1) for _ in range(3)), nn.MultiheadAttention(4, 2))
    assert not use_channels_last(attention, cpu)
    assert not use_channels_last(convs, torch.device("meta"))


def test_top_k_in_one_backward_equals_per_class_gradcam(tiny_model, batch, monkeypatch):
    explainer = Explainer(_loaded(tiny_model), "gradcam")
    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    together = explainer.explain(batch, [Target(rank=r) for r in (1, 2, 3)])
    assert calls == [True]  # three classes, one batched backward pass
    for t in range(3):
        classes = together.class_indices[:, t]
        for i, cls in enumerate(classes):
            alone = explainer.explain(batch[i : i + 1], [Target(index=int(cls))])
            np.testing.assert_allclose(together.maps[i, t], alone.maps[0, 0], rtol=1e-4, atol=1e-6)


def test_top_k_falls_back_to_one_backward_per_class(tiny_model, batch, monkeypatch):
    explainer = Explainer(_loaded(tiny_model), "gradcam")
    targets = [Target(rank=1), Target(rank=2)]
    expected = explainer.explain(batch, targets).maps
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("no batching rule")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    np.testing.assert_allclose(explainer.explain(batch, targets).maps, expected, rtol=1e-5)


def test_cli_precision_bf16(tiny_checkpoint, shapes_dir, tmp_path):
    folder, _boxes = shapes_dir
    out = tmp_path / "out"
    args = ["run", str(folder), "-o", str(out), *tiny_args(tiny_checkpoint), "-q", "-f", "npy"]
    result = CliRunner().invoke(app, [*args, "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    maps = sorted(out.rglob("*.npy"))
    assert len(maps) == 12
    assert all(np.load(p).dtype == np.float32 for p in maps)
    bad = CliRunner().invoke(app, [*args, "--precision", "int8"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2", "densenet121"])
def test_folded_batch_norm_is_the_same_function_with_every_name_kept(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    with torch.no_grad():  # non-trivial statistics, as after training
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)
    reference = copy.deepcopy(model)
    names = [(n, type(m).__name__) for n, m in model.named_modules()]
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorms(model)
    assert 0 < folded <= batch_norms
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batch_norms - folded
    after = [(n, type(m).__name__) for n, m in model.named_modules()]
    assert [n for n, _ in after] == [n for n, _ in names]  # every layer name still resolves
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert fold_batchnorms(model) == 0  # nothing left to fold


def test_fold_keeps_hooked_layers_and_untraceable_models():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    conv, bn = model.layer4[1].conv2, model.layer4[1].bn2
    fold_batchnorms(model, keep=[conv])
    assert model.layer4[1].conv2 is conv and model.layer4[1].bn2 is bn  # the pair is left
    assert isinstance(model.layer4[1].bn1, nn.Identity)

    class Branchy(nn.Module):  # control flow on values: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    branchy = Branchy().eval()
    assert fold_batchnorms(branchy) == 0
    assert isinstance(branchy.bn, nn.BatchNorm2d)


def test_explainer_folds_only_models_camcli_loaded(tiny_model, batch):
    mine = _loaded(tiny_model)
    Explainer(mine, "gradcam")
    assert any(isinstance(m, nn.BatchNorm2d) for m in mine.model.modules())  # caller's: as is
    owned = _loaded(tiny_model, channels_last=True)
    owned.owned = True
    targets = [Target(rank=1), Target(index=2)]
    fast = Explainer(owned, "gradcam")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in owned.model.modules())
    a = fast.explain(batch, targets)
    b = Explainer(mine, "gradcam").explain(batch, targets)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-4, atol=1e-5 * float(b.maps.max()))
    np.testing.assert_array_equal(a.class_indices, b.class_indices)


def test_bf16_runs_the_extra_passes_of_score_cam_under_autocast(tiny_model, batch):
    targets = [Target(rank=1)]
    full = Explainer(_loaded(tiny_model), "scorecam")
    low = Explainer(_loaded(tiny_model), "scorecam", precision="bf16")
    masked = batch[:2] * 0.5
    assert full._logits(masked).dtype == torch.float32
    low_logits = low._logits(masked)
    assert low_logits.dtype == torch.float32  # handed back in fp32...
    assert not torch.equal(low_logits, full._logits(masked))  # ...but computed in bf16
    a, b = full.explain(batch, targets), low.explain(batch, targets)
    assert _pearson(a.maps, b.maps) >= 0.99
    np.testing.assert_array_equal(a.class_indices, b.class_indices)
