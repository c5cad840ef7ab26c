"""The methods of pytorch-grad-cam 1.5.7 and torchcam 0.5.0 that camcli added (issue 12):
FEM, KPCA-CAM, ShapleyCAM, Finer-CAM, RefineCAM, FullGrad, LeGrad, Deep Feature Factorization.

Each is compared with its reference on random-weight models (raw maps to 1e-4 of the
reference's peak), or the test shows the deliberate difference that docs/methods.md explains.
The helpers and the ``setup`` conventions are those of ``test_methods_reference``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods_reference import (
    ARCHS,
    SIZE,
    _loaded,
    _model,
    _sign_aligned,
    assert_close,
    assert_differs,
    correlation,
    gradcam_raw,
    ours,
    torchcam_raw,
)
from torch import nn

from camcli.explain import Explainer
from camcli.targets import Target

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import (  # noqa: E402
    ClassifierOutputTarget,
    FinerWeightedTarget,
)


def _setup(arch: str, model: nn.Module | None = None, batch: int = 2):
    model = _model(arch) if model is None else model
    torch.manual_seed(1)
    x = torch.randn(batch, 3, SIZE, SIZE)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    return arch, model, x, classes


@pytest.fixture(scope="module", params=list(ARCHS))
def setup(request):
    return _setup(request.param)


def reference_raw(setup, cam, layer: str, targets, create_graph: bool = False) -> np.ndarray:
    """A pytorch-grad-cam method's per-layer map (``get_cam_image``, no ReLU) for any targets;
    ``create_graph`` keeps the gradient's graph (ShapleyCAM's Hessian-vector product)."""
    _arch, model, x, _classes = setup
    module = dict(model.named_modules())[layer]
    inputs = x.clone().requires_grad_(create_graph)
    try:
        outputs = cam.activations_and_grads(inputs)
        loss = sum(t(o) for t, o in zip(targets, outputs, strict=True))
        if create_graph:
            torch.autograd.grad(loss, inputs, retain_graph=True, create_graph=True)
        else:
            loss.backward(retain_graph=True)
        activations = cam.activations_and_grads.activations[0]
        grads = cam.activations_and_grads.gradients[0]
        if not create_graph:
            activations, grads = activations.numpy(), grads.numpy()
        return cam.get_cam_image(inputs, module, targets, activations, grads, False)
    finally:
        # Its release() detaches in place, which a view (convnext's blocks) refuses.
        cam.activations_and_grads.gradients = []
        cam.activations_and_grads.activations = []
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


# --- FEM, KPCA-CAM: gradient-free, class-agnostic ---------------------------------------


def test_fem_matches_pytorch_grad_cam(setup):
    """On the larger early layers: on a 2 x 2 map no position can be 2 std above the mean."""
    layer = ARCHS[setup[0]][1]
    ref = np.maximum(gradcam_raw(setup, pytorch_grad_cam.FEM, layer), 0)
    mine = ours(setup, "fem", layer)
    assert_close(mine, ref)


def test_fem_is_the_same_map_for_every_target():
    setup = _setup("resnet18")
    explainer = Explainer(_loaded(setup[1], "resnet18"), method="fem", layers=["layer3"])
    maps = explainer.explain(setup[2], [Target(rank=1), Target(rank=2), Target(index=3)]).maps
    assert maps.shape == (2, 3, 4, 4)
    assert maps.max() > 0
    np.testing.assert_array_equal(maps[:, 0], maps[:, 2])


def test_kpcacam_matches_pytorch_grad_cam_up_to_the_sign(setup):
    """sklearn's KernelPCA on each image's centred positions (sigmoid kernel, gamma = 1/C);
    camcli's torch eigendecomposition gives the same projection once the arbitrary sign is
    fixed the Eigen-CAM way (positive correlation with the channel sum)."""
    layer = ARCHS[setup[0]][1]
    mine = ours(setup, "kpcacam", layer)
    signed = gradcam_raw(setup, pytorch_grad_cam.KPCA_CAM, layer)
    assert_close(mine, _sign_aligned(mine, signed)[0])


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_kpcacam_other_kernels_match_scikit_learn(kernel):
    setup = _setup("resnet18")
    model = setup[1]
    layer = "layer2"
    mine = ours(setup, "kpcacam", layer, attributes={"kernel": kernel})
    module = dict(model.named_modules())[layer]
    cam = pytorch_grad_cam.KPCA_CAM(model=model, target_layers=[module], kernel=kernel)
    signed = reference_raw(setup, cam, layer, [ClassifierOutputTarget(0)] * 2)
    assert_close(mine, _sign_aligned(mine, signed)[0])


def test_kpcacam_linear_kernel_is_eigencam():
    """With the linear kernel kernel PCA is PCA: the map equals Eigen-CAM's up to the scale
    (kernel PCA's ``sqrt(l) v`` is the projection on the first component, as Eigen-CAM's)."""
    setup = _setup("resnet18")
    layer = "layer3"
    kpca = ours(setup, "kpcacam", layer, attributes={"kernel": "linear"})
    eigen = ours(setup, "eigencam", layer)
    assert_close(kpca, eigen)


# --- ShapleyCAM: gradient + Hessian-vector product --------------------------------------


class SmoothNet(nn.Module):
    """A small CNN whose layers are followed by curved functions (SiLU, GELU in the head)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _smooth_net() -> nn.Module:
    torch.manual_seed(0)
    return SmoothNet().eval()


#: Layers followed by curved functions (GELU and layer norm; SiLU), so that the Hessian term
#: is not zero. (MobileNetV3's hard-sigmoid has no second derivative in PyTorch.)
SHAPLEY_ARCHS = {"convnext_tiny": "features.5", "smoothnet": "features.3"}


@pytest.mark.parametrize("arch", list(SHAPLEY_ARCHS))
def test_shapleycam_matches_pytorch_grad_cam(arch):
    setup = _setup(arch, _smooth_net() if arch == "smoothnet" else None)
    _, model, _x, classes = setup
    layer = SHAPLEY_ARCHS[arch]
    module = dict(model.named_modules())[layer]
    cam = pytorch_grad_cam.ShapleyCAM(model=model, target_layers=[module])
    targets = [ClassifierOutputTarget(c) for c in classes]
    ref = np.maximum(reference_raw(setup, cam, layer, targets, create_graph=True), 0)
    mine = ours(setup, "shapleycam", layer)
    assert_close(mine, ref)
    # The Hessian term matters here: the map is not Grad-CAM's.
    assert_differs(mine, ours(setup, "gradcam", layer))


def test_shapleycam_is_gradcam_on_a_piecewise_linear_network():
    """After resnet18's layer3 come only ReLUs, max/avg pooling and a linear head: the
    Hessian is zero almost everywhere and ShapleyCAM is Grad-CAM."""
    setup = _setup("resnet18")
    assert_close(ours(setup, "shapleycam", "layer3"), ours(setup, "gradcam", "layer3"))


# --- Finer-CAM ----------------------------------------------------------------------------


def test_finercam_matches_torchcam(setup):
    layer = ARCHS[setup[0]][0]
    ref = torchcam_raw(setup, torchcam_methods.FinerCAM, layer)
    assert_close(ours(setup, "finercam", layer), ref)


def test_finercam_against_pytorch_grad_cam_differs_only_in_the_objective(setup):
    """pytorch-grad-cam's ``FinerWeightedTarget`` weighs each reference by its softmax
    probability, ``sum_m p_m (y_c - y_m) / sum_m p_m`` (alpha = 1, gradients through the
    p_m too); camcli and torchcam take ``y_c - gamma mean_m y_m``. Given camcli's objective
    as a target, pytorch-grad-cam's Grad-CAM engine gives camcli's map exactly; given its
    own, a different one."""
    arch, model, x, classes = setup
    layer = ARCHS[arch][0]
    logits = model(x).detach()
    from camcli.methods.finer import reference_classes

    picked = torch.tensor(classes)[:, None]
    refs = reference_classes(logits, picked, 3)[:, 0].tolist()
    module = dict(model.named_modules())[layer]

    def contrastive(c, others):
        return lambda out: out[c] - 0.6 * out[others].mean()

    mine = ours(setup, "finercam", layer)
    same = [contrastive(c, r) for c, r in zip(classes, refs, strict=True)]
    cam = pytorch_grad_cam.GradCAM(model=model, target_layers=[module])
    assert_close(mine, np.maximum(reference_raw(setup, cam, layer, same), 0))
    weighted = [FinerWeightedTarget(c, r, 1.0) for c, r in zip(classes, refs, strict=True)]
    finer = pytorch_grad_cam.FinerCAM(model=model, target_layers=[module])
    ref = np.maximum(reference_raw(setup, finer.base_cam, layer, weighted), 0)
    assert_differs(mine, ref)


def test_finercam_several_targets_per_image_match_one_at_a_time():
    setup = _setup("resnet18", batch=3)
    _, model, x, _ = setup
    loaded = _loaded(model, "resnet18")
    targets = [Target(rank=1), Target(rank=2), Target(index=7)]
    together = Explainer(loaded, method="finercam", layers=["layer4"]).explain(x, targets).maps
    for t, target in enumerate(targets):
        alone = Explainer(loaded, method="finercam", layers=["layer4"]).explain(x, [target])
        np.testing.assert_allclose(together[:, t], alone.maps[:, 0], rtol=1e-5, atol=1e-7)
    assert together.max() > 0


# --- RefineCAM ----------------------------------------------------------------------------

REFINE_LAYERS = {
    "resnet18": ["layer3", "layer4"],
    "regnet_x_400mf": ["trunk_output.block3", "trunk_output.block4"],
}


def ours_layers(setup, method: str, layers: list[str], **attributes) -> np.ndarray:
    """camcli's raw (N, h, w) maps over several layers for each image's given class."""
    arch, model, x, classes = setup
    explainer = Explainer(_loaded(model, arch), method=method, layers=layers)
    for key, value in attributes.items():
        setattr(explainer.method, key, value)
    targets = [Target(index=c) for c in sorted(set(classes))]
    maps = explainer.explain(x, targets).maps
    return np.stack([maps[i, targets.index(Target(index=c))] for i, c in enumerate(classes)])


@pytest.mark.parametrize("base", ["GradCAM", "LayerCAM"])
def test_refinecam_matches_torchcam(setup, base):
    """torchcam's default base, GradCAMpp, has the lost-division bug (see
    test_methods_reference); with Grad-CAM or LayerCAM as the base the refinement agrees."""
    from camcli.methods import gradcam

    arch, model = setup[:2]
    layers = REFINE_LAYERS[arch]
    ref = torchcam_raw(
        setup, torchcam_methods.RefineCAM, layers, base_method=getattr(torchcam_methods, base)
    )
    mine = ours_layers(setup, "refinecam", layers, base=getattr(gradcam, base)(model))
    assert mine.shape[-2:] == (4, 4)  # the largest layer's grid
    assert_close(mine, ref)


def test_refinecam_against_pytorch_grad_cam_differs_in_the_fusion_resolution():
    """pytorch-grad-cam upsamples each layer's normalised map to the input size before the
    product (and normalises the product); camcli and torchcam multiply at the largest layer's
    grid. Redoing pytorch-grad-cam's order from camcli's own per-layer maps gives its
    result; camcli's refined map, upsampled, is close but not equal."""
    from camcli.methods.gradcam import GradCAM
    from camcli.methods.refine import min_max

    setup = _setup("resnet18")
    _, model, x, classes = setup
    layers = REFINE_LAYERS["resnet18"]
    modules = [dict(model.named_modules())[name] for name in layers]
    refine = pytorch_grad_cam.RefineCAM(model, modules, base_method=pytorch_grad_cam.GradCAM)
    ref = refine(x, [ClassifierOutputTarget(c) for c in classes])
    for cam in refine.base_cam_per_layer:
        cam.activations_and_grads.release()

    def upsampled(maps: np.ndarray) -> torch.Tensor:
        return nn.functional.interpolate(
            torch.from_numpy(maps)[:, None].double(), size=(SIZE, SIZE), mode="bilinear"
        )

    per_layer = [
        upsampled(min_max(torch.from_numpy(ours(setup, "gradcam", n))[:, None])[:, 0].numpy())
        for n in layers
    ]
    redone = min_max(per_layer[0] * per_layer[1])[:, 0].numpy()
    assert_close(redone, ref)
    mine = ours_layers(setup, "refinecam", layers, base=GradCAM(model))
    mine_up = min_max(upsampled(mine))[:, 0].numpy()
    assert_differs(mine_up, ref)
    for m, r in zip(mine_up, ref, strict=True):
        assert correlation(m, r) > 0.9


def test_refinecam_needs_two_layers():
    from camcli.errors import UsageError

    model = _model("resnet18")
    with pytest.raises(UsageError, match="refinecam combines the maps of 2 layers or more"):
        Explainer(_loaded(model, "resnet18"), method="refinecam", layers=["layer4"])


def test_refinecam_with_aug_smooth_is_at_the_input_size_and_in_unit_range():
    setup = _setup("resnet18")
    _, model, x, _ = setup
    explainer = Explainer(
        _loaded(model, "resnet18"), method="refinecam", layers=["layer3", "layer4"],
        aug_smooth=True,
    )  # fmt: skip
    maps = explainer.explain(x, [Target(rank=1), Target(rank=2)]).maps
    assert maps.shape == (2, 2, SIZE, SIZE)
    assert 0 < maps.max() <= 1 and maps.min() >= 0


# --- FullGrad -----------------------------------------------------------------------------


class Scaled(nn.Module):
    """The model's logits times 1e3: every gradient grows 1e3-fold, so a reference's small
    epsilon (pytorch-grad-cam's 1e-7 in each map's normalisation) becomes negligible."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.net = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs) * 1e3


def test_fullgrad_matches_pytorch_grad_cam(setup):
    """pytorch-grad-cam normalises each map as ``(x - min) / (max - min + 1e-7)``; with
    gradients of 1e-5 that epsilon is 1%, so both run on the logits scaled by 1e3 (camcli
    adds no epsilon; a constant map is 0)."""
    arch, model, x, classes = setup
    scaled = (arch, Scaled(model).eval(), x, classes)
    cam = pytorch_grad_cam.FullGrad(scaled[1], [])
    targets = [ClassifierOutputTarget(c) for c in classes]
    inputs = x.clone().requires_grad_(True)
    try:
        outputs = cam.activations_and_grads(inputs)
        sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        ref = cam.compute_cam_per_layer(inputs, targets, False)[:, 0]
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    mine = ours(scaled, "fullgrad", f"net.{ARCHS[arch][0]}")
    assert mine.shape == (2, SIZE, SIZE)
    assert_close(mine, ref)


def test_fullgrad_completeness_in_float64():
    """For a ReLU network with batch norms in eval mode, ``S_c = sum x dS/dx + sum_l
    sum_k b_lk sum_ij dS/dz_lkij + b_head[c]``: the biases recorded are all of them."""
    from camcli.methods.fullgrad import bias_outputs

    model = _model("resnet18").double()
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64, requires_grad=True)
    with bias_outputs(model, (SIZE, SIZE)) as recorded:
        logits = model(x)
    classes = logits.argmax(1)
    score = logits.gather(1, classes[:, None]).sum()
    grads = torch.autograd.grad(score, [x, *(r.output for r in recorded)])
    total = (x * grads[0]).sum((1, 2, 3))
    for r, g in zip(recorded, grads[1:], strict=True):
        total = total + (r.bias[None, :, None, None] * g).sum((1, 2, 3))
    total = total + model.fc.bias[classes]
    assert len(recorded) == 20  # every conv's batch norm (no conv has a bias of its own)
    torch.testing.assert_close(
        total, logits.gather(1, classes[:, None])[:, 0], rtol=1e-9, atol=1e-9
    )


def test_fullgrad_on_a_folded_model_equals_the_unfolded_one():
    """camcli folds batch norms into the convolutions of a model it owns: the folded conv's
    bias is the batch norm's eval-mode bias (torchvision's convolutions have none of their
    own), on the same output, so the map is the same."""
    setup = _setup("resnet18")
    _, model, x, _ = setup
    targets = [Target(rank=1), Target(rank=3)]
    plain = Explainer(_loaded(model, "resnet18"), method="fullgrad").explain(x, targets).maps
    owned = _loaded(_model("resnet18"), "resnet18")
    owned.owned = True
    explainer = Explainer(owned, method="fullgrad")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in owned.model.modules())
    folded = explainer.explain(x, targets).maps
    assert plain.shape == (2, 2, SIZE, SIZE)
    np.testing.assert_allclose(folded, plain, rtol=1e-3, atol=1e-3 * plain.max())


def _tiny_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model.eval()


def _tiny_swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
        num_classes=10,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("arch", ["vit", "swin"])
def test_fullgrad_on_transformers_counts_the_linear_biases(arch):
    """On torchvision's ViT and Swin the MLPs' linear layers (tokens, or channels-last maps)
    carry most biases; pytorch-grad-cam only sees Conv2d / BatchNorm2d (the patch
    embedding), so camcli's map adds the linear terms to its."""
    from camcli.images import Preprocess
    from camcli.methods.fullgrad import bias_outputs
    from camcli.models import LoadedModel

    model = _tiny_vit() if arch == "vit" else _tiny_swin()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    with bias_outputs(model, (32, 32)) as recorded, torch.enable_grad():
        model(x.requires_grad_(True))
    kinds = {r.layout.kind for r in recorded}
    assert len(recorded) >= 5
    assert kinds == ({"nchw", "tokens"} if arch == "vit" else {"nchw", "nhwc"})
    loaded = LoadedModel(model, arch, None, Preprocess(32, 32), None, torch.device("cpu"), 10)
    maps = (
        Explainer(loaded, method="fullgrad")
        .explain(x.detach(), [Target(rank=1), Target(rank=2)])
        .maps
    )
    assert maps.shape == (3, 2, 32, 32)
    assert np.isfinite(maps).all() and (maps > 0).mean() > 0.9
    assert not np.allclose(maps[:, 0], maps[:, 1])


# --- LeGrad -------------------------------------------------------------------------------

LEGRAD_VITS = {"vit8": (8, 2, 2), "vit4": (4, 3, 4)}  # patch size, blocks, heads


def _vit(name: str) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    patch, blocks, heads = LEGRAD_VITS[name]
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=patch, num_layers=blocks, num_heads=heads, hidden_dim=32,
        mlp_dim=64, num_classes=10,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model.eval()


@pytest.mark.parametrize("name", list(LEGRAD_VITS))
def test_legrad_matches_torchcam(name):
    from camcli.images import Preprocess
    from camcli.models import LoadedModel

    model = _vit(name)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(len(model.encoder.layers))]
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    classes = model(x).argmax(1).tolist()
    with torchcam_methods.LeGrad(model, blocks[-2:]) as extractor:
        ref = extractor(class_idx=classes, scores=model(x), normalized=False)[0].detach()
    model.zero_grad(set_to_none=True)
    loaded = LoadedModel(model, name, None, Preprocess(32, 32), None, torch.device("cpu"), 10)
    targets = [Target(index=c) for c in sorted(set(classes))]
    # One block: the map at the patch grid.
    with torchcam_methods.LeGrad(model, blocks[-1]) as extractor:
        last = extractor(class_idx=classes, scores=model(x), normalized=False)[0].detach()
    maps = Explainer(loaded, method="legrad", layers=[blocks[-1]]).explain(x, targets).maps
    mine = np.stack([maps[i, targets.index(Target(index=c))] for i, c in enumerate(classes)])
    assert mine.shape == (3, *last.shape[-2:])
    assert_close(mine, last.numpy())
    # Two blocks: camcli averages them at the input size; upsampling is linear.
    maps = Explainer(loaded, method="legrad", layers=blocks[-2:]).explain(x, targets).maps
    mine = np.stack([maps[i, targets.index(Target(index=c))] for i, c in enumerate(classes)])
    upsampled = nn.functional.interpolate(ref[:, None], size=(32, 32), mode="bilinear")[:, 0]
    assert_close(mine, upsampled.numpy())


def test_legrad_default_layer_is_the_last_block_and_other_models_are_refused():
    from camcli.errors import UsageError
    from camcli.images import Preprocess
    from camcli.models import LoadedModel

    model = _vit("vit8")
    loaded = LoadedModel(model, "vit", None, Preprocess(32, 32), None, torch.device("cpu"), 10)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    default = Explainer(loaded, method="legrad")  # encoder.layers.encoder_layer_1.ln_1
    block = Explainer(loaded, method="legrad", layers=["encoder.layers.encoder_layer_1"])
    targets = [Target(rank=1), Target(rank=2)]
    np.testing.assert_array_equal(default.explain(x, targets).maps, block.explain(x, targets).maps)
    with pytest.raises(UsageError, match="legrad needs a torchvision VisionTransformer"):
        Explainer(_loaded(_model("resnet18"), "resnet18"), method="legrad", layers=["layer4"])


# --- Deep Feature Factorization -------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_dff_matches_pytorch_grad_cam_image_by_image(arch):
    """pytorch-grad-cam factorises the whole batch at once with scikit-learn's NMF; camcli
    factorises each image alone (its concepts must not depend on its batch), with a torch
    coordinate descent from the same start. Per image the concept maps, the embeddings and
    the classes they score agree (the reference fed one image at a time, in float64)."""
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff

    setup = _setup(arch)
    _, model, x, _ = setup
    layer = ARCHS[arch][0]
    module = dict(model.named_modules())[layer]
    head = model.fc
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    explainer = Explainer(_loaded(model, arch), method="dff", layers=[layer])
    from camcli.explain import concept_targets

    explanation = explainer.explain(x, concept_targets(4))
    for i in range(2):
        concepts, maps = dff(store["a"][i : i + 1].double().numpy().copy(), n_components=4)
        assert_close(explanation.maps[i], maps[0])
        with torch.no_grad():
            probabilities = torch.softmax(head(torch.from_numpy(concepts.T).float()), dim=1)
        scores, classes = probabilities.max(dim=1)
        np.testing.assert_array_equal(explanation.class_indices[i], classes.numpy())
        np.testing.assert_allclose(explanation.scores[i], scores.numpy(), rtol=1e-4)


@pytest.mark.parametrize(
    ("arch", "layers", "grid"),
    [
        # ln_1 inside each block: the last block's output tokens do not reach the class token.
        ("vit", ["encoder.layers.encoder_layer_0.ln_1", "encoder.layers.encoder_layer_1.ln_1"], 4),
        ("swin", ["features.1", "features.3"], 8),
    ],
)
def test_refinecam_on_token_and_channels_last_layouts(arch, layers, grid):
    from camcli.images import Preprocess
    from camcli.models import LoadedModel

    model = _tiny_vit() if arch == "vit" else _tiny_swin()
    loaded = LoadedModel(model, arch, None, Preprocess(32, 32), None, torch.device("cpu"), 10)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    explainer = Explainer(loaded, method="refinecam", layers=layers)
    maps = explainer.explain(x, [Target(rank=1), Target(index=3)]).maps
    assert maps.shape == (2, 2, grid, grid)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.max() > 0
