"""Every method on every feature-map layout, and what a method explains.

One small model of each layout, built from torchvision's own classes (so the default layer,
the head and the in-place ops are torchvision's): a plain CNN, DenseNet (an in-place ReLU
after the layer), MobileNetV3 (hardswish, a two-layer head), ConvNeXt (a LayerNorm head),
ViT (tokens with a class token), Swin (channels-last) and MaxViT. Every method runs on a batch
of two with two targets through the Python API and gives finite maps of the right shape, or
its documented refusal. Then: a method explains the layer's output as the layer returned it,
whatever runs in place after it; changed activations go back into the layer's own layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.mobilenetv3 import _mobilenet_v3_conf
from typer.testing import CliRunner

from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.methods import METHODS, get_method_class
from camcli.models import LoadedModel
from camcli.targets import Target

CLASSES = 10
TARGETS = [Target(rank=1), Target(index=3)]


def _densenet() -> nn.Module:
    return torchvision.models.DenseNet(8, (2, 2, 2, 2), 16, num_classes=CLASSES)


def _mobilenet() -> nn.Module:
    settings, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return torchvision.models.MobileNetV3(settings, last, num_classes=CLASSES)


def _convnext() -> nn.Module:
    stages = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, None, 1)]
    return torchvision.models.ConvNeXt(stages, num_classes=CLASSES)


def tiny_vit(num_classes: int = CLASSES) -> nn.Module:
    """``--model tests/test_layouts.py:tiny_vit``: torchvision's ViT, small, a random head."""
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=num_classes,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, 0, 0.5)
    return model


def _swin() -> nn.Module:
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 2],
        window_size=[2, 2], num_classes=CLASSES,
    )  # fmt: skip


def _maxvit() -> nn.Module:
    return torchvision.models.MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16, 16],
        block_layers=[1, 1, 1], head_dim=4, stochastic_depth_prob=0.0, num_classes=CLASSES,
    )  # fmt: skip


# name -> (builder, input size, default layer, the default layer's grid side)
MODELS: dict[str, tuple[Callable[[], nn.Module], int, str, int]] = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=CLASSES), 64, "layer4", 2),
    "densenet": (_densenet, 64, "features", 2),
    "mobilenet_v3": (_mobilenet, 64, "features", 2),
    "convnext": (_convnext, 32, "features", 2),
    "vit": (tiny_vit, 32, "encoder.layers.encoder_layer_1.ln_1", 4),
    "swin": (_swin, 32, "norm", 2),
    "maxvit": (_maxvit, 32, "blocks.2", 2),
}

# The methods' documented refusals: CAM needs a global average + one linear layer head.
REFUSED = {
    ("cam", "mobilenet_v3"): "this head has 2 linear layers",
    ("cam", "convnext"): "(classifier.0 (LayerNorm2d))",
    ("cam", "vit"): "self_attention (MultiheadAttention)",
    ("cam", "maxvit"): "classifier.2 (LayerNorm)",
}

# LeGrad differentiates a torchvision ViT's or Swin's attention maps: every other model is
# refused.
REFUSED.update(
    {
        (("legrad", n)): "legrad needs a torchvision VisionTransformer"
        for n in MODELS
        if n not in ("vit", "swin")
    }
)
# RefineCAM multiplies two layers' maps or more (these tests explain the default layer); it
# runs on the ViT, Swin and CNN layouts in tests/test_methods_new.py.
SEVERAL_LAYERS = {name for name in METHODS if get_method_class(name).min_layers > 1}
# The black-box methods (rise, drise, occlusion) read no layer, so no layout: they are
# tested in tests/test_blackbox.py (a model without any layer among them). Left out here with
# the multi-layer ones.
SEVERAL_LAYERS |= {name for name in METHODS if not get_method_class(name).needs_layer}

# The Score-CAM family's many passes (one per channel and image, times 35 for SS-CAM and 10
# for IS-CAM): Score-CAM on every model but resnet18's 512 channels (the plain CNN's Score-CAM
# is tested on the tiny synthetic model), the smoothed variants on a token and a channels-last
# layout.
SCORE_MODELS = {
    "scorecam": set(MODELS) - {"resnet18"},
    "sscam": {"vit", "swin"},
    "iscam": {"vit", "swin"},
}


def build(name: str) -> LoadedModel:
    """The model seeded, with every zero-initialised weight (ViT's head) made random."""
    builder, size, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = builder().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2 and not param.any():
                param.normal_(0, 0.5)
    return LoadedModel(model, name, None, Preprocess(size, size), None, torch.device("cpu"), 10)


def batch_for(loaded: LoadedModel) -> torch.Tensor:
    size = loaded.preprocess.crop_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def matrix() -> list[tuple[str, str]]:
    cases = []
    for method in METHODS:
        if method in SEVERAL_LAYERS:
            continue
        for name in MODELS:
            if name not in SCORE_MODELS.get(method, MODELS):
                continue
            cases.append((method, name))
    return cases


@pytest.fixture(scope="module")
def models() -> dict[str, LoadedModel]:
    return {}


def test_the_matrix_covers_every_method_on_a_token_and_a_channels_last_layout():
    covered = {(m, n) for m, n in matrix()}
    for method in set(METHODS) - SEVERAL_LAYERS:
        assert {(method, "vit"), (method, "swin")} <= covered
    assert {n for _, n in matrix()} == set(MODELS)


@pytest.mark.parametrize(("method", "name"), matrix())
def test_every_method_on_every_layout(models, method, name):
    if name not in models:
        models[name] = build(name)
    loaded = models[name]
    _, size, layer, grid = MODELS[name]
    refusal = REFUSED.get((method, name))
    if refusal is not None:
        with pytest.raises(UsageError, match="use --method gradcam") as info:
            Explainer(loaded, method, chunk_size=4096)
        assert refusal in str(info.value)
        return
    explainer = Explainer(loaded, method, chunk_size=4096)
    assert explainer.layer_names == [layer]
    result = explainer.explain(batch_for(loaded), TARGETS)
    at_input_size = method.startswith("guided") or method == "fullgrad"  # layer-free
    side = size if METHODS[method].needs_grad and at_input_size else grid
    assert result.maps.shape == (2, 2, side, side)
    assert np.isfinite(result.maps).all()
    assert result.class_indices[:, 1].tolist() == [3, 3]


class _OutOfPlaceDenseNet(torchvision.models.DenseNet):
    """torchvision's DenseNet with the head's ReLU out of place: the same function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=False)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


@pytest.fixture(scope="module")
def densenet_pair() -> tuple[LoadedModel, LoadedModel]:
    in_place = build("densenet")
    out_of_place = _OutOfPlaceDenseNet(8, (2, 2, 2, 2), 16, num_classes=CLASSES).eval()
    out_of_place.load_state_dict(in_place.model.state_dict())
    size = in_place.preprocess
    return in_place, LoadedModel(
        out_of_place, "densenet", None, size, None, torch.device("cpu"), CLASSES
    )


@pytest.mark.parametrize("method", [m for m in METHODS if m not in SEVERAL_LAYERS | {"legrad"}])
def test_an_in_place_relu_after_the_layer_does_not_change_the_maps(densenet_pair, method):
    in_place, out_of_place = densenet_pair
    x = batch_for(in_place)
    with torch.no_grad():
        assert torch.equal(in_place.model(x), out_of_place.model(x))
    maps = []
    for loaded in (in_place, out_of_place):
        explainer = Explainer(loaded, method, chunk_size=4096)
        if method in ("sscam", "iscam"):
            explainer.method.samples = 2
        maps.append(explainer.explain(x, TARGETS).maps)
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-6 * float(maps[1].max()))


def test_cam_on_densenet_is_the_head_weights_times_the_relu_of_the_layer():
    """DenseNet's head is ReLU, global average, linear: CAM is ``sum_k w_k^c ReLU(A_k)``,
    whose spatial mean plus the bias is the logit; Grad-CAM differs (it sees ``A``)."""
    loaded = build("densenet")
    x = batch_for(loaded)
    cam = Explainer(loaded, "cam").explain(x, TARGETS)
    gradcam = Explainer(loaded, "gradcam").explain(x, TARGETS)
    model = loaded.model
    with torch.no_grad():
        features = model.features(x)
        weight = model.classifier.weight[torch.from_numpy(cam.class_indices)]  # (N, T, C)
        expected = torch.einsum("ntc,nchw->nthw", weight, torch.relu(features))
        logits = model(x).gather(1, torch.from_numpy(cam.class_indices))
        bias = model.classifier.bias[torch.from_numpy(cam.class_indices)]
    np.testing.assert_allclose(cam.maps, expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        cam.maps.mean(axis=(2, 3)), (logits - bias).numpy(), rtol=1e-4, atol=1e-5
    )
    # Not Grad-CAM's ReLU(CAM) / (h w): the ReLU inside the head gates Grad-CAM's gradient.
    assert not np.allclose(gradcam.maps, np.maximum(cam.maps, 0) / 4, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_ablation_puts_the_ablated_copies_back_in_the_layers_layout(name):
    """Ablation-CAM's weights are the drops of the class logit with each channel zeroed in the
    layer's own layout (the class token kept), computed here by hand."""
    loaded = build(name)
    model = loaded.model
    x = batch_for(loaded)[:1]
    layer = dict(model.named_modules())[MODELS[name][2]]
    result = Explainer(loaded, "ablationcam", chunk_size=5).explain(x, [Target(index=3)])
    outputs = []
    handle = layer.register_forward_hook(lambda m, a, out: outputs.append(out.clone()))
    with torch.no_grad():
        base = model(x)[0, 3]
    handle.remove()
    (activation,) = outputs
    channels = activation.shape[-1]
    prefix = 1 if name == "vit" else 0
    weights = []
    for k in range(channels):
        ablated = activation.clone()
        if name == "vit":
            ablated[:, prefix:, k] = 0
        else:
            ablated[..., k] = 0
        hook = layer.register_forward_hook(lambda m, a, out, new=ablated: new)
        with torch.no_grad():
            weights.append((base - model(x)[0, 3]) / base)
        hook.remove()
    grid = MODELS[name][3]
    spatial = activation[:, prefix:].reshape(1, grid, grid, channels)[0]
    expected = torch.relu((spatial * torch.stack(weights)).sum(-1))
    assert float(expected.max()) > 0
    np.testing.assert_allclose(result.maps[0, 0], expected.numpy(), rtol=1e-4, atol=1e-6)


runner = CliRunner()


def _cli_ablation(tmp_path, model: str, *options: str) -> np.ndarray:
    from PIL import Image

    image = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = runner.invoke(app, [
        "run", str(image), "-m", model, "--weights", "none", "--method", "ablationcam",
        "--device", "cpu", "--out", str(out), "-f", "npy", *options,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "failed" not in result.output
    (saved,) = sorted(out.rglob("*.npy"))
    cam = np.load(saved)
    assert cam.ndim == 2 and np.isfinite(cam).all()
    return cam


def test_cli_ablationcam_writes_maps_on_swin_t(tmp_path):
    """Was "addmm: mat1 and mat2 shapes cannot be multiplied": NCHW copies fed to Swin's head."""
    _cli_ablation(tmp_path, "swin_t", "--input-size", "64", "--chunk-size", "256")


def test_cli_ablationcam_writes_maps_on_a_vit(tmp_path):
    """Was a traceback ("received 4-D query tensor"): NCHW copies fed to ViT's attention.
    torchvision's ViT class, small (vit_b_16 itself is the slow test below)."""
    cam = _cli_ablation(tmp_path, f"{__file__}:tiny_vit", "--chunk-size", "64")
    assert cam.max() > 0


@pytest.mark.slow
def test_cli_ablationcam_writes_maps_on_vit_b_16(tmp_path):
    _cli_ablation(tmp_path, "vit_b_16", "--chunk-size", "256")


@pytest.mark.parametrize("seed", range(5))
def test_cam_refuses_a_head_with_small_logits_whatever_the_probe(seed):
    """A fresh MaxViT's logits are about 1e-4: an absolute tolerance accepted its LayerNorm,
    linear, tanh, linear head as 'pooling + linear' for some probe inputs."""
    loaded = build("maxvit")
    torch.manual_seed(seed)
    with pytest.raises(UsageError, match=r"classifier\.2 \(LayerNorm\)"):
        Explainer(loaded, method="cam")
