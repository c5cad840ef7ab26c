"""camcli's maps against pytorch-grad-cam 1.5.7, torchcam 0.5.0 and captum 0.9.

Same random-weight models (``weights=None``, fixed seed), same input tensor, same target
classes. Maps are compared raw at the layer's resolution (after the method's ReLU, before any
normalisation) to 1e-4 of the reference map's maximum. Where camcli deliberately differs,
the test shows the difference; docs/methods.md says why.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.models import LoadedModel
from camcli.targets import Target

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
captum_attr = pytest.importorskip("captum.attr")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SIZE = 64
CLASSES = 10
# (architecture, layer for gradient methods, small layer for the forward-heavy ones)
ARCHS = {
    "resnet18": ("layer4", "layer1"),
    "regnet_x_400mf": ("trunk_output", "trunk_output.block1"),
}


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None, num_classes=CLASSES).eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def setup(request):
    arch = request.param
    model = _model(arch)
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    return arch, model, x, classes


def _loaded(model: nn.Module, arch: str) -> LoadedModel:
    return LoadedModel(
        model, arch, None, Preprocess(SIZE, SIZE), None, torch.device("cpu"), CLASSES
    )


def ours(setup, method: str, layer: str, **options) -> np.ndarray:
    """camcli's raw (N, h, w) maps for each image's given class."""
    arch, model, x, classes = setup
    attributes = options.pop("attributes", {})
    explainer = Explainer(_loaded(model, arch), method=method, layers=[layer], **options)
    for key, value in attributes.items():
        setattr(explainer.method, key, value)
    targets = [Target(index=c) for c in sorted(set(classes))]
    explanation = explainer.explain(x, targets)
    columns = [targets.index(Target(index=c)) for c in classes]
    return np.stack([explanation.maps[i, t] for i, t in enumerate(columns)])


def gradcam_raw(setup, cam_class, layer: str, eigen_smooth: bool = False) -> np.ndarray:
    """pytorch-grad-cam's per-layer map before upsampling: ``get_cam_image`` then its ReLU."""
    _arch, model, x, classes = setup
    module = dict(model.named_modules())[layer]
    cam = cam_class(model=model, target_layers=[module])
    try:
        targets = [ClassifierOutputTarget(c) for c in classes]
        outputs = cam.activations_and_grads(x)
        if cam.uses_gradients:
            model.zero_grad()
            sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward(retain_graph=True)
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = (
            cam.activations_and_grads.gradients[0].numpy()
            if cam.activations_and_grads.gradients
            else None
        )
        raw = cam.get_cam_image(x, module, targets, activations, grads, eigen_smooth)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    return raw


def torchcam_raw(setup, cam_class, layer: str, **kwargs) -> np.ndarray:
    _arch, model, x, classes = setup
    with cam_class(model, layer, input_shape=(3, SIZE, SIZE), **kwargs) as extractor:
        scores = model(x)
        cams = extractor(class_idx=classes, scores=scores, normalized=False)
    model.zero_grad(set_to_none=True)
    return cams[0].detach().numpy()


def assert_close(mine: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    ref = np.asarray(ref, dtype=np.float64)
    assert mine.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0, "the reference map is blank; the comparison would prove nothing"
    error = np.abs(mine - ref).max()
    assert error <= rel * scale, f"max |camcli - reference| = {error:.3g}, map max {scale:.3g}"


def assert_differs(mine: np.ndarray, ref: np.ndarray, rel: float = 1e-3) -> float:
    """The maps differ by more than ``rel`` of the map's maximum; returns the relative gap."""
    ref = np.asarray(ref, dtype=np.float64)
    gap = float(np.abs(mine - ref).max() / np.abs(ref).max())
    assert gap > rel, f"expected a documented difference, but the maps agree to {gap:.2g}"
    return gap


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --- gradient methods --------------------------------------------------------------------

GRADCAM_REFS = [
    ("gradcam", "GradCAM"),
    ("xgradcam", "XGradCAM"),
    ("hirescam", "HiResCAM"),
    ("gradcam-elementwise", "GradCAMElementWise"),
    ("layercam", "LayerCAM"),
]


@pytest.mark.parametrize(("method", "reference"), GRADCAM_REFS)
def test_gradient_methods_match_pytorch_grad_cam(setup, method, reference):
    layer = ARCHS[setup[0]][0]
    ref = np.maximum(gradcam_raw(setup, getattr(pytorch_grad_cam, reference), layer), 0)
    assert_close(ours(setup, method, layer), ref)


@pytest.mark.parametrize(
    ("method", "reference"),
    [("gradcam", "GradCAM"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")],
)
def test_gradient_methods_match_torchcam(setup, method, reference):
    layer = ARCHS[setup[0]][0]
    ref = torchcam_raw(setup, getattr(torchcam_methods, reference), layer)
    assert_close(ours(setup, method, layer), ref)


def test_gradcam_matches_captum(setup):
    arch, model, x, classes = setup
    layer = ARCHS[arch][0]
    module = dict(model.named_modules())[layer]
    ref = captum_attr.LayerGradCam(model, module).attribute(
        x, target=classes, relu_attributions=True
    )
    assert_close(ours(setup, "gradcam", layer), ref[:, 0].detach().numpy())


def test_gradcam_plus_plus_matches_pytorch_grad_cam_up_to_its_epsilon(setup):
    """pytorch-grad-cam adds 1e-6 to the alpha denominator ``2 G^2 + sum(A) G^3``; camcli
    adds nothing. With logits scaled up (gradients x 1e3) the epsilon vanishes and the two
    agree; on the raw model, where G^2 is itself ~1e-6 or less, it shifts the weights."""
    arch, model, x, classes = setup
    layer = ARCHS[arch][0]

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, inputs):
            return self.net(inputs) * 1e3

    scaled = (arch, Scaled().eval(), x, classes)
    ref = np.maximum(gradcam_raw(scaled, pytorch_grad_cam.GradCAMPlusPlus, f"net.{layer}"), 0)
    assert_close(ours(scaled, "gradcam++", f"net.{layer}"), ref)
    raw_ref = np.maximum(gradcam_raw(setup, pytorch_grad_cam.GradCAMPlusPlus, layer), 0)
    assert_differs(ours(setup, "gradcam++", layer), raw_ref)


def test_gradcam_plus_plus_differs_from_torchcam_by_design(setup):
    """torchcam 0.5.0 means to divide ``G^2`` by ``2 G^2 + sum_ab(G^3 A)`` but does it with
    ``alpha[mask].div_(...)``: boolean indexing makes a copy, so the division is lost and its
    alpha is ``G^2`` itself. Recomputing that from the same gradients reproduces torchcam
    exactly, so the gap to the paper's eq. 19 (camcli, pytorch-grad-cam) is that bug."""
    arch, model, x, classes = setup
    layer = ARCHS[arch][0]
    ref = torchcam_raw(setup, torchcam_methods.GradCAMpp, layer)
    mine = ours(setup, "gradcam++", layer)
    assert_differs(mine, ref)
    module = dict(model.named_modules())[layer]
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits.gather(1, torch.tensor(classes)[:, None]).sum()
    (g,) = torch.autograd.grad(score, store["a"])
    a = store["a"].detach()
    alpha = g.pow(2)
    torchcam_formula = torch.relu(((alpha * torch.relu(g)).sum((2, 3), keepdim=True) * a).sum(1))
    assert_close(torchcam_formula.detach().numpy(), ref)


def _sign_aligned(mine: np.ndarray, signed_ref: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The reference projection, ReLU'd, with each image's sign chosen to match camcli's map;
    and those signs."""
    out, signs = [], []
    for m, r in zip(mine, signed_ref, strict=True):
        sign = min((1, -1), key=lambda s: np.abs(np.maximum(s * r, 0) - m).max())
        out.append(np.maximum(sign * r, 0))
        signs.append(sign)
    return np.stack(out), signs


@pytest.mark.parametrize(
    ("method", "reference"), [("eigencam", "EigenCAM"), ("eigengradcam", "EigenGradCAM")]
)
def test_eigen_methods_match_pytorch_grad_cam_up_to_the_svd_sign(setup, method, reference):
    """Equal to pytorch-grad-cam's projection once its arbitrary SVD sign is fixed the way
    camcli fixes it: the signed projection correlates positively with the plain channel sum
    (of ``A`` for Eigen-CAM, of ``G * A`` for Eigen-Grad-CAM)."""
    arch, model, x, _classes = setup
    layer = ARCHS[arch][0]
    mine = ours(setup, method, layer)
    signed = gradcam_raw(setup, getattr(pytorch_grad_cam, reference), layer)
    aligned, signs = _sign_aligned(mine, signed)
    assert_close(mine, aligned)
    if method == "eigencam":
        module = dict(model.named_modules())[layer]
        store = {}
        handle = module.register_forward_hook(lambda m, i, o: store.update(a=o.detach()))
        with torch.no_grad():
            model(x)
        handle.remove()
        plain = store["a"].sum(1).numpy()
    else:
        plain = gradcam_raw(setup, pytorch_grad_cam.HiResCAM, layer)  # sum_k G*A, no ReLU
    for sign, r, p in zip(signs, signed, plain, strict=True):
        assert correlation(sign * r, p) > 0


def test_eigen_smooth_matches_pytorch_grad_cam(setup):
    layer = ARCHS[setup[0]][0]
    mine = ours(setup, "gradcam", layer, eigen_smooth=True)
    signed = gradcam_raw(setup, pytorch_grad_cam.GradCAM, layer, eigen_smooth=True)
    assert_close(mine, _sign_aligned(mine, signed)[0])


def test_cam_matches_torchcam(setup):
    arch = setup[0]
    layer = ARCHS[arch][0]
    ref = torchcam_raw(setup, torchcam_methods.CAM, layer)
    assert_close(ours(setup, "cam", layer), ref)


# --- forward-heavy methods (small layers keep the passes few) ---------------------------


def test_scorecam_matches_torchcam(setup):
    layer = ARCHS[setup[0]][1]
    ref = torchcam_raw(setup, torchcam_methods.ScoreCAM, layer, batch_size=64)
    assert_close(ours(setup, "scorecam", layer, chunk_size=64), ref)


def test_scorecam_differs_from_pytorch_grad_cam_by_its_upsampling(setup):
    """pytorch-grad-cam upsamples the masks with ``UpsamplingBilinear2d`` (``align_corners=
    True``, half a layer cell off the pixel grid every other upsampling in camcli and torchcam
    uses) and stretches each to [0, 1] afterwards. Same method, slightly different masks:
    the maps differ a little and agree in substance."""
    layer = ARCHS[setup[0]][1]
    mine = ours(setup, "scorecam", layer, chunk_size=64)
    ref = np.maximum(gradcam_raw(setup, pytorch_grad_cam.ScoreCAM, layer), 0)
    assert_differs(mine, ref, rel=1e-4)
    for m, r in zip(mine, ref, strict=True):
        assert correlation(m, r) > 0.9


def test_iscam_matches_torchcam(setup):
    layer = ARCHS[setup[0]][1]
    ref = torchcam_raw(setup, torchcam_methods.ISCAM, layer, batch_size=64, num_samples=2)
    mine = ours(setup, "iscam", layer, chunk_size=64, attributes={"samples": 2})
    assert_close(mine, ref)


def test_sscam_matches_torchcam_with_the_same_noise(setup):
    """SS-CAM is random; both draw the same noise here (torchcam's sampler is replaced by one
    that hands out a fixed list, camcli's ``noise`` reads the same list)."""
    arch, model, x, classes = setup
    layer = ARCHS[arch][1]
    channels = ours(setup, "gradcam", layer).shape  # only for the layer's size
    module = dict(model.named_modules())[layer]
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.update(a=o))
    with torch.no_grad():
        model(x)
    handle.remove()
    c = store["a"].shape[1]
    assert channels[0] == 2
    generator = torch.Generator().manual_seed(5)
    noises = [torch.randn(2, c, SIZE, SIZE, generator=generator) * 2.0 for _ in range(2)]

    class Fixed:
        def __init__(self) -> None:
            self.calls = 0

        def sample(self, size):
            assert tuple(size) == tuple(noises[0].shape)
            self.calls += 1
            return noises[self.calls - 1]

    with torchcam_methods.SSCAM(
        model, layer, batch_size=64, num_samples=2, input_shape=(3, SIZE, SIZE)
    ) as extractor:
        extractor._distrib = Fixed()
        scores = model(x)
        ref = extractor(class_idx=classes, normalized=False, scores=scores)[0].numpy()
    stacked = torch.stack(noises)  # (S, N, C, H, W)

    def noise(shape, sample, pair):
        return stacked[sample, pair // c, pair % c][:, None]

    explainer = Explainer(_loaded(model, arch), method="sscam", layers=[layer], chunk_size=64)
    explainer.method.samples = 2
    explainer.method.noise = noise
    targets = [Target(index=k) for k in sorted(set(classes))]
    maps = explainer.explain(x, targets).maps
    mine = np.stack([maps[i, targets.index(Target(index=k))] for i, k in enumerate(classes)])
    assert_close(mine, ref)


def test_ablationcam_matches_pytorch_grad_cam(setup):
    """Both zero the channel here: the layers end in a ReLU, so pytorch-grad-cam's
    ``min == 0`` branch applies (with negative values it uses ``min - 1e7``; camcli always
    zeroes, as the paper does)."""
    layer = ARCHS[setup[0]][1]
    ref = np.maximum(gradcam_raw(setup, pytorch_grad_cam.AblationCAM, layer), 0)
    assert_close(ours(setup, "ablationcam", layer, chunk_size=64), ref)


def test_smoothgradcam_plus_plus_without_noise_is_gradcam_plus_plus(setup):
    """With zero noise Smooth Grad-CAM++ must reduce to Grad-CAM++ (checked above against
    pytorch-grad-cam); torchcam's SmoothGradCAMpp differs by design (its alpha division is
    lost, see the Grad-CAM++ test, and it keeps the last noisy pass's gradient and activation).
    The layer is an early one: right before a GAP + linear head the gradient does not depend
    on the input, and noise would change nothing."""
    layer = ARCHS[setup[0]][1]
    plain = ours(setup, "gradcam++", layer)
    smooth = ours(setup, "smoothgradcam++", layer, attributes={"std": 0.0})
    assert_close(smooth, plain)
    noisy = ours(setup, "smoothgradcam++", layer)
    assert_differs(noisy, plain)
    torch.manual_seed(0)
    ref = torchcam_raw(setup, torchcam_methods.SmoothGradCAMpp, layer)
    assert_differs(noisy, ref)


# --- pixel space -----------------------------------------------------------------------

GUIDED_ARCHS = ("resnet18", "squeezenet1_1")


def _guided(arch: str, method: str, layer: str) -> tuple[np.ndarray, nn.Module, torch.Tensor, list]:
    model = _model(arch)
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        classes = model(x).argmax(1).tolist()
    explainer = Explainer(_loaded(model, arch), method=method, layers=[layer])
    explanation = explainer.explain(x, [Target(index=c) for c in classes])
    saliency = np.stack([explanation.saliency[i, i] for i in range(2)])
    return saliency, model, x, classes


@pytest.mark.parametrize("arch", GUIDED_ARCHS)
def test_guided_backprop_matches_captum(arch):
    """torchvision's ResNet reuses one ReLU module per block; SqueezeNet uses in-place ReLUs.
    captum guides ``nn.ReLU`` modules through backward hooks, camcli by shadowing their
    ``forward``: the gradients agree."""
    layer = "layer4" if arch == "resnet18" else "features.12"
    saliency, model, x, classes = _guided(arch, "guided-backprop", layer)
    ref = captum_attr.GuidedBackprop(model).attribute(x.clone(), target=classes)
    assert_close(saliency, ref.detach().numpy())


@pytest.mark.parametrize("arch", GUIDED_ARCHS)
def test_guided_gradcam_matches_captum(arch):
    """captum upsamples Grad-CAM with ``nearest`` by default; camcli uses bilinear like every
    other map, so captum is asked for bilinear here."""
    layer = "layer4" if arch == "resnet18" else "features.12"
    saliency, model, x, classes = _guided(arch, "guided-gradcam", layer)
    module = dict(model.named_modules())[layer]
    ref = captum_attr.GuidedGradCam(model, module).attribute(
        x.clone(), target=classes, interpolate_mode="bilinear"
    )
    assert_close(saliency, ref.detach().numpy())


def test_pytorch_grad_cam_guided_backprop_sees_only_the_first_image():
    """pytorch-grad-cam's GuidedBackpropReLUModel backpropagates ``output[0, class]`` and
    returns image 0 only; camcli gives every image its own gradient (equal to image 0's for
    image 0)."""
    saliency, model, x, classes = _guided("resnet18", "guided-backprop", "layer4")
    guided = pytorch_grad_cam.GuidedBackpropReLUModel(model, device="cpu")
    ref = guided(x.clone(), target_category=classes[0])  # (H, W, 3) for image 0 only
    assert ref.shape == (SIZE, SIZE, 3)
    assert_close(saliency[0], ref.transpose(2, 0, 1))
    assert_differs(saliency[1], ref.transpose(2, 0, 1))
