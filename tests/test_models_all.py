"""Every torchvision classifier explains out of the box: default layer per family, grid shape,
token and channels-last layouts, CAM's head check, and agreement with pytorch-grad-cam.

The default suite runs one model of every family at batch 1 (reduced input sizes where the
architecture allows); ``-m slow`` runs all of ``torchvision.models.list_models`` at each model's
own input size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.layers import (
    Layout,
    default_layer,
    known_default_layer,
    spatial_layout,
    trace_layers,
)
from camcli.models import head_layer, load_model
from camcli.targets import Target

ALL_MODELS = torchvision.models.list_models(module=torchvision.models)

# Families whose head is global average pooling + (dropout +) one linear layer.
CAM_FAMILIES = {
    "resnet", "densenet", "mobilenet_v2", "efficientnet", "regnet", "shufflenet", "mnasnet",
    "googlenet", "inception", "swin",
}  # fmt: skip


# Why CAM does not apply to the other families, as the error message must say.
CAM_REFUSED = {
    "vgg": "this head has 3 linear layers (classifier.0 25088->4096",
    "alexnet": "this head has 3 linear layers (classifier.1 9216->4096",
    "mobilenet_v3": "this head has 2 linear layers (classifier.0",
    "convnext": "(classifier.0 (LayerNorm2d))",
    "squeezenet": "no linear layer maps its 512 channels to the 1000 classes",
    "vit": "self_attention (MultiheadAttention)",
    "maxvit": "classifier.2 (LayerNorm), classifier.4 (Tanh)",
}


def family(name: str) -> str:
    for prefix in ("resnext", "wide_resnet"):
        if name.startswith(prefix):
            return "resnet"
    for fam in ("mobilenet_v2", "mobilenet_v3", "inception", "squeezenet", "shufflenet"):
        if name.startswith(fam):
            return fam
    return name.split("_")[0].rstrip("0123456789")


def expected_layer(name: str) -> str:
    fam = family(name)
    if fam == "vit":
        depth = {"b": 12, "l": 24, "h": 32}[name.split("_")[1]]
        return f"encoder.layers.encoder_layer_{depth - 1}.ln_1"
    return {
        "resnet": "layer4",
        "regnet": "trunk_output",
        "shufflenet": "conv5",
        "mnasnet": "layers",
        "googlenet": "inception5b",
        "inception": "Mixed_7c",
        "swin": "norm",
        "maxvit": "blocks.3",
    }.get(fam, "features")


def expected_grid(name: str, size: int) -> int:
    """The side of the default layer's grid for a ``size`` px input, from the architecture."""
    fam = family(name)
    if fam == "vit":
        return size // int(name.split("_")[2])
    if fam == "alexnet":  # conv 11/4 pad 2, then three 3/2 max pools
        side = (size + 4 - 11) // 4 + 1
        for _ in range(3):
            side = (side - 3) // 2 + 1
        return side
    if fam == "squeezenet":  # a 7/2 (1.0) or 3/2 (1.1) conv, then three 3/2 ceil-mode pools
        kernel = 7 if name == "squeezenet1_0" else 3
        side = (size - kernel) // 2 + 1
        for _ in range(3):
            side = math.ceil((side - 3) / 2) + 1
        return side
    if fam == "inception":  # unpadded stem convolutions: 299 -> 8
        return {299: 8}[size]
    return math.ceil(size / 32)


def prepare_untrained(model: nn.Module) -> None:
    """Make an untrained model's top class depend on the image.

    torchvision zero-initialises some heads (ViT's), so the logits are constant and every
    gradient map blank: those weights get small random values. And a random output bias can
    pick the top class with no evidence in the image at all (its CAM negative everywhere,
    its Grad-CAM blank), so the output layer's bias is zeroed.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.ndim >= 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        head = head_layer(model)
        if head is not None and head[1].bias is not None:
            head[1].bias.zero_()


def explain_model(name: str, size: int | None, method: str = "gradcam", loaded=None):
    torch.manual_seed(0)
    if loaded is None:
        loaded = load_model(name, weights="none", device="cpu", input_size=size)
        prepare_untrained(loaded.model)
    explainer = Explainer(loaded, method=method)
    side = loaded.preprocess.crop_size
    batch = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    return loaded, explainer, explainer.explain(batch, [Target(rank=1)])


def check_model(name: str, size: int | None) -> None:
    loaded, explainer, result = explain_model(name, size)
    side = loaded.preprocess.crop_size
    grid = expected_grid(name, side)
    assert explainer.layer_names == [expected_layer(name)]
    # The explainer takes torchvision's defaults from a table; tracing must agree with it.
    assert known_default_layer(loaded.model) == expected_layer(name)
    assert trace_layers(loaded.model, side, torch.device("cpu"))[1] == expected_layer(name)
    assert result.maps.shape == (1, 1, grid, grid)
    assert np.isfinite(result.maps).all()
    assert result.maps.max() > result.maps.min(), f"{name}: constant map"

    if family(name) in CAM_FAMILIES:
        _, cam_explainer, cam = explain_model(name, size, method="cam", loaded=loaded)
        assert cam_explainer.layer_names == explainer.layer_names
        assert cam.maps.shape == result.maps.shape
        assert np.isfinite(cam.maps).all()
        assert cam.maps.max() > cam.maps.min()
        if family(name) == "densenet":
            # A ReLU between layer and pooling: CAM is the head's weights times ReLU(A), as
            # documented, not (h w) times Grad-CAM (whose gradients the ReLU gates).
            expected = rectified_cam(loaded, explainer.layer_names[0], cam.class_indices)
            np.testing.assert_allclose(
                cam.maps, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max())
            )
            assert not np.allclose(result.maps, np.maximum(cam.maps, 0) / (grid * grid))
        else:
            # On a pooling + linear head Grad-CAM is ReLU(CAM) / (h w) exactly.
            expected = np.maximum(cam.maps, 0) / (grid * grid)
            np.testing.assert_allclose(
                result.maps, expected, rtol=1e-3, atol=1e-4 * float(expected.max())
            )
    else:
        with pytest.raises(UsageError, match="use --method gradcam") as info:
            Explainer(loaded, method="cam")
        assert CAM_REFUSED[family(name)] in str(info.value)


def rectified_cam(loaded, layer: str, class_indices: np.ndarray) -> np.ndarray:
    """``sum_k w_k^c ReLU(A_k)`` for ``explain_model``'s batch, ``A`` as the layer returned it
    (copied before DenseNet's in-place ReLU runs on it), ``w`` the head's linear weights."""
    side = loaded.preprocess.crop_size
    batch = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    model = loaded.model
    captured = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, a, out: captured.append(out.clone()))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        handle.remove()
    weight = head_layer(model)[1].weight.detach()[torch.from_numpy(class_indices)]
    with torch.no_grad():
        maps = torch.einsum("ntc,nchw->nthw", weight, torch.relu(captured[0]))
    return maps.numpy()


# One model of every family, batch 1, reduced input where the architecture allows it. The
# sizes of inception_v3, alexnet, ViT and MaxViT are their own (fixed or minimal) ones.
FAST = {
    "resnet18": 64,
    "resnext50_32x4d": 64,
    "vgg11": 64,
    "alexnet": None,
    "densenet121": 64,
    "mobilenet_v2": 64,
    "mobilenet_v3_small": 64,
    "efficientnet_b0": 64,
    "efficientnet_v2_s": 64,
    "regnet_x_400mf": 64,
    "regnet_y_400mf": 64,
    "convnext_tiny": 64,
    "shufflenet_v2_x0_5": 64,
    "mnasnet0_5": 64,
    "squeezenet1_1": 64,
    "googlenet": 64,
    "inception_v3": None,
    "vit_b_32": None,
    "swin_t": 64,
    "swin_v2_t": 64,
    "maxvit_t": None,
}


def test_fast_set_covers_every_family():
    assert {family(n) for n in FAST} == {family(n) for n in ALL_MODELS}
    assert CAM_FAMILIES | set(CAM_REFUSED) == {family(n) for n in ALL_MODELS}
    assert set(FAST) <= set(ALL_MODELS)
    assert len(ALL_MODELS) == 80


@pytest.mark.parametrize("name", list(FAST))
def test_family_representative(name):
    check_model(name, FAST[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_at_its_own_size(name):
    check_model(name, None)


@pytest.mark.parametrize(
    ("name", "size"),
    [("inception_v3", 299), ("efficientnet_b3", 300), ("vit_b_16", 224), ("swin_v2_t", 256)],
)
def test_input_size_from_default_weights_transforms(name, size):
    assert load_model(name, weights="none", device="cpu").preprocess.crop_size == size


@pytest.mark.slow
def test_vit_h_14_without_weights_uses_its_own_224_px():
    # Its DEFAULT weights (SWAG) are 518 px, but weights=None builds a 224 px model.
    assert load_model("vit_h_14", weights="none", device="cpu").preprocess.crop_size == 224


def test_fixed_size_model_rejects_other_input_size():
    with pytest.raises(UsageError, match=r"vit_b_32 takes 224 px inputs only"):
        load_model("vit_b_32", weights="none", device="cpu", input_size=128)


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((2, 768, 7, 7), Layout("nchw", (7, 7))),
        ((2, 7, 7, 768), Layout("nhwc", (7, 7))),
        ((2, 197, 768), Layout("tokens", (14, 14), 1)),
        ((2, 196, 384), Layout("tokens", (14, 14), 0)),
        ((2, 1000), None),
        ((2, 40, 768), Layout("tokens", (6, 6), 4)),  # a class token and 3 register tokens
        ((2, 16, 8, 3), None),  # neither (8, 3) nor (16, 8) is a square input's grid
    ],
)
def test_spatial_layout(shape, layout):
    assert spatial_layout(shape, (224, 224)) == layout


def test_token_grid_must_fit_the_input():
    assert spatial_layout((1, 197, 768), (8, 8)) is None


def test_layouts_round_trip():
    tokens = torch.randn(2, 1 + 3 * 4, 5)
    layout = Layout("tokens", (3, 4), 1)
    spatial = layout.to_spatial(tokens)
    assert spatial.shape == (2, 5, 3, 4)
    # Patch token i is grid cell (i // w, i % w): row-major, as patch embeddings flatten.
    assert torch.equal(spatial[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])
    assert torch.equal(layout.from_spatial(spatial, tokens), tokens)
    nhwc = torch.randn(2, 3, 4, 5)
    channels_last = Layout("nhwc", (3, 4))
    assert torch.equal(channels_last.to_spatial(nhwc)[:, :, 2, 1], nhwc[:, 2, 1])
    rebuilt = channels_last.from_spatial(channels_last.to_spatial(nhwc), nhwc)
    assert torch.equal(rebuilt, nhwc) and rebuilt.is_contiguous()


def _pgc_raw_gradcam(model, layer, reshape, batch, class_index):
    """pytorch-grad-cam's Grad-CAM of one layer, before its resize and min-max scaling."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(class_index)]
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        cam(input_tensor=batch, targets=targets)
        grads = cam.activations_and_grads
        raw = cam.get_cam_image(
            batch, layer, targets, grads.activations[0].numpy(), grads.gradients[0].numpy(), False
        )
    return np.maximum(raw, 0)


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_transformers_match_pytorch_grad_cam(name):
    from pytorch_grad_cam.utils.reshape_transforms import (
        swinT_reshape_transform,
        vit_reshape_transform,
    )

    loaded, explainer, ours = explain_model(name, None)
    (layer_name,) = explainer.layer_names
    layer = dict(loaded.model.named_modules())[layer_name]
    if name.startswith("vit"):
        reshape = vit_reshape_transform  # documented: drop the class token, 14x14 grid
    else:
        # torchvision's Swin is channels-last (N, 7, 7, C): flattened to tokens, it is the
        # documented Swin transform's input.
        def reshape(tensor):
            return swinT_reshape_transform(tensor.flatten(1, 2))

    side = loaded.preprocess.crop_size
    batch = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    theirs = _pgc_raw_gradcam(loaded.model, layer, reshape, batch, int(ours.class_indices[0, 0]))
    assert theirs.shape == ours.maps[:, 0].shape
    assert ours.maps.max() > 0
    np.testing.assert_allclose(ours.maps[:, 0], theirs, rtol=0, atol=1e-4 * float(theirs.max()))
    # No parameter got a gradient from camcli (pgc's backward fills .grad: clear it first).
    loaded.model.zero_grad(set_to_none=True)
    explainer.explain(batch, [Target(rank=1)])
    assert all(p.grad is None for p in loaded.model.parameters())


def test_layers_command_shows_grid_per_layer():
    runner = CliRunner()
    result = runner.invoke(app, ["layers", "vit_b_32", "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    ln = rows["encoder.layers.encoder_layer_11.ln_1"]
    assert ln["shape"] == [1, 50, 768]
    assert ln["grid"] == [7, 7] and ln["layout"] == "tokens" and ln["default"]
    assert rows["conv_proj"]["grid"] == [7, 7] and rows["conv_proj"]["layout"] == "nchw"
    assert rows["heads.head"]["grid"] is None

    table = runner.invoke(app, ["layers", "swin_t", "--input-size", "64"])
    assert table.exit_code == 0, table.output
    line = next(x for x in table.stdout.splitlines() if x.split()[:1] == ["norm"])
    assert "1x2x2x768" in line and "2x2 (NHWC)" in line and "default" in line


def test_trace_skips_class_score_maps():
    # SqueezeNet's last 1x1 convolution gives one map per class, after the feature stage.
    loaded = load_model("squeezenet1_1", weights="none", device="cpu", input_size=64)
    infos, default = trace_layers(loaded.model, 64, loaded.device)
    shapes = {i.name: i.shape for i in infos}
    assert shapes["classifier.1"] == (1, 1000, 3, 3)
    assert default == "features"


def test_default_layer_is_traced_for_models_outside_torchvision(tiny_model):
    assert known_default_layer(tiny_model) is None
    resnet_like = type("MyResNet", (torchvision.models.ResNet,), {"__module__": "mine"})
    model = resnet_like(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    assert known_default_layer(model) is None
    assert default_layer(model, 64, torch.device("cpu")) == "layer4"
    assert (
        default_layer(tiny_model, 64, torch.device("cpu"))
        == trace_layers(tiny_model, 64, torch.device("cpu"))[1]
    )
