"""The engine: Grad-CAM against pytorch-grad-cam, CAM against Grad-CAM, hooks that never leak."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import get_model

import synthetic
from camcli.errors import UsageError
from camcli.explain import Explainer, parse_targets
from camcli.images import Preprocess
from camcli.models import LoadedModel
from camcli.targets import Target

CPU = torch.device("cpu")


def loaded_for(model: nn.Module, size: int, labels=None, classes: int = 1000) -> LoadedModel:
    return LoadedModel(model.eval(), "test", None, Preprocess(size, size), labels, CPU, classes)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return get_model("resnet18", weights=None).eval()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(1)
    return torch.randn(3, 3, 128, 128)


def test_gradcam_raw_map_matches_pytorch_grad_cam(resnet18, batch):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    explainer = Explainer(loaded_for(resnet18, 128), "gradcam", ["layer4"])
    ours = explainer.explain(batch, [Target(rank=1), Target(index=7)])
    assert ours.maps.shape == (3, 2, 4, 4)

    with GradCAM(model=resnet18, target_layers=[resnet18.layer4]) as cam:
        for column in range(2):
            classes = ours.class_indices[:, column]
            targets = [ClassifierOutputTarget(int(c)) for c in classes]
            cam(input_tensor=batch, targets=targets)
            recorded = cam.activations_and_grads
            activation = recorded.activations[0].cpu().numpy()
            gradient = recorded.gradients[0].cpu().numpy()
            raw = cam.get_cam_image(batch, resnet18.layer4, targets, activation, gradient)
            reference = np.maximum(raw, 0)
            peak = np.abs(reference).max()
            assert peak > 0
            np.testing.assert_allclose(ours.maps[:, column], reference, atol=1e-4 * peak, rtol=0)
    for p in resnet18.parameters():
        p.grad = None  # pytorch-grad-cam fills .grad; leave the shared fixture clean


def test_cam_equals_relu_gradcam_times_cells_and_the_1x1_convolution(tiny_model):
    images, _, _ = synthetic.dataset(4, seed=5)
    x = synthetic.to_tensor(images)
    loaded = loaded_for(tiny_model, 64, list(synthetic.CLASSES), 3)
    targets = [Target(rank=1), Target(rank=2), Target(index=2)]
    cam = Explainer(loaded, "cam").explain(x, targets)
    grad = Explainer(loaded, "gradcam").explain(x, targets)
    cells = cam.maps.shape[-1] * cam.maps.shape[-2]
    np.testing.assert_array_equal(cam.class_indices, grad.class_indices)
    # Grad-CAM on GAP + linear: a_k = w_k / (H W), so Grad-CAM = ReLU(CAM) / (H W).
    np.testing.assert_allclose(grad.maps * cells, np.maximum(cam.maps, 0), rtol=1e-4, atol=1e-5)
    assert (cam.maps < 0).any()  # CAM's raw map is the formula itself, no ReLU

    features = tiny_model.features(x)
    weight = tiny_model.fc.weight
    all_classes = nn.functional.conv2d(features, weight[:, :, None, None]).detach().numpy()
    for n in range(4):
        for t in range(3):
            expected = all_classes[n, cam.class_indices[n, t]]
            np.testing.assert_allclose(cam.maps[n, t], expected, rtol=1e-5, atol=1e-5)


def test_cam_refuses_heads_that_are_not_gap_plus_linear():
    torch.manual_seed(0)
    vgg = get_model("vgg11", weights=None, num_classes=10)
    with pytest.raises(UsageError, match="use --method gradcam"):
        Explainer(loaded_for(vgg, 64, classes=10), "cam")


def test_no_parameter_gets_a_grad_and_frozen_models_work(resnet18, batch):
    for p in resnet18.parameters():
        p.requires_grad_(False)
    try:
        result = Explainer(loaded_for(resnet18, 128), "gradcam").explain(batch, [Target(rank=1)])
    finally:
        for p in resnet18.parameters():
            p.requires_grad_(True)
    assert np.isfinite(result.maps).all() and result.maps.max() > 0
    assert all(p.grad is None for p in resnet18.parameters())
    Explainer(loaded_for(resnet18, 128), "gradcam").explain(batch, [Target(rank=1)])
    assert all(p.grad is None for p in resnet18.parameters())


def test_forward_below_the_layer_records_no_graph_and_cam_is_inference_only(resnet18, batch):
    seen = {}

    def spy(name):
        def hook(module, args, output):
            seen[name] = (output.requires_grad, output.is_inference())

        return hook

    handles = [resnet18.layer3.register_forward_hook(spy("layer3"))]
    handles.append(resnet18.fc.register_forward_hook(spy("fc")))
    try:
        Explainer(loaded_for(resnet18, 128), "gradcam", ["layer4"]).explain(batch, [Target(rank=1)])
        assert seen["layer3"] == (False, False)  # below the hooked layer: no autograd graph
        assert seen["fc"][0] is True  # above it: recorded, for the backward to layer4 only
        small = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
        )
        small[0].register_forward_hook(spy("conv"))
        Explainer(loaded_for(small, 32, classes=2), "cam", ["1"]).explain(
            torch.randn(2, 3, 32, 32), [Target(rank=1)]
        )
        assert seen["conv"] == (False, True)
    finally:
        for handle in handles:
            handle.remove()


def test_hooks_are_removed_and_training_flags_restored_even_after_errors(resnet18, batch):
    resnet18.train()
    resnet18.layer2.eval()
    flags = {name: m.training for name, m in resnet18.named_modules()}
    loaded = LoadedModel(resnet18, "test", None, Preprocess(128, 128), None, CPU, 1000)
    explainer = Explainer(loaded, "gradcam", ["layer4"])
    explainer.explain(batch, [Target(rank=1)])
    with pytest.raises(RuntimeError):
        explainer.explain(torch.randn(2, 5, 128, 128), [Target(rank=1)])  # wrong channel count
    for name, module in resnet18.named_modules():
        assert not module._forward_hooks, name
        assert not module._backward_hooks, name
        assert module.training == flags[name], name
    resnet18.eval()


def test_multiple_targets_and_batch_rows_are_independent(resnet18, batch):
    explainer = Explainer(loaded_for(resnet18, 128), "gradcam")
    together = explainer.explain(batch, [Target(rank=1), Target(rank=3)])
    for n in range(batch.shape[0]):
        alone = explainer.explain(batch[n : n + 1], [Target(rank=1), Target(rank=3)])
        np.testing.assert_allclose(together.maps[n], alone.maps[0], rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(together.class_indices[n], alone.class_indices[0])
    logits = resnet18(batch).detach()
    probs = torch.softmax(logits, 1)
    top = logits.topk(3, 1).indices
    np.testing.assert_array_equal(together.class_indices[:, 0], top[:, 0].numpy())
    np.testing.assert_array_equal(together.class_indices[:, 1], top[:, 2].numpy())
    np.testing.assert_allclose(together.scores[:, 0], probs.gather(1, top[:, :1])[:, 0], rtol=1e-5)


def test_models_returning_tuples_dicts_or_objects_work(tiny_model):
    class Wrapped(nn.Module):
        def __init__(self, inner, kind):
            super().__init__()
            self.inner, self.kind = inner, kind

        def forward(self, x):
            logits = self.inner(x)
            if self.kind == "tuple":
                return logits, {"aux": logits * 0}
            return {"logits": logits}

    x = synthetic.to_tensor(synthetic.dataset(2, seed=3)[0])
    base = Explainer(loaded_for(tiny_model, 64, classes=3), "gradcam").explain(x, [Target(rank=1)])
    for kind in ("tuple", "dict"):
        wrapped = loaded_for(Wrapped(tiny_model, kind), 64, classes=3)
        result = Explainer(wrapped, "gradcam", ["inner.features"]).explain(x, [Target(rank=1)])
        np.testing.assert_allclose(result.maps, base.maps, rtol=1e-5, atol=1e-7)


def test_inplace_relu_after_the_layer_does_not_corrupt_the_map():
    torch.manual_seed(0)
    densenet = get_model("densenet121", weights=None, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64)
    result = Explainer(loaded_for(densenet, 64, classes=4), "gradcam").explain(x, [Target(rank=1)])
    assert np.isfinite(result.maps).all() and result.maps.max() > 0


def test_parse_targets():
    labels = ["tabby cat", "tiger_cat", "dog", "dog"]
    assert parse_targets([], None, labels, 4) == [Target(rank=1)]
    assert parse_targets(["top2", "1", "Tabby Cat", "tiger cat"], 2, labels, 4) == [
        Target(rank=2), Target(index=1), Target(index=0), Target(rank=1),
    ]  # fmt: skip
    with pytest.raises(UsageError, match=r"unknown class name 'tabbby'; did you mean 'tabby cat'"):
        parse_targets(["tabbby"], None, labels, 4)
    with pytest.raises(UsageError, match="ambiguous"):
        parse_targets(["dog"], None, labels, 4)
    with pytest.raises(UsageError, match="out of range"):
        parse_targets(["9"], None, labels, 4)
    with pytest.raises(UsageError, match="no labels"):
        parse_targets(["cat"], None, None, 4)
