"""``--model hf:ID_OR_DIR``: Hugging Face classifiers from ``save_pretrained`` folders and a
pre-filled hub cache (offline), families' default layers and token reshapes, the image
processor's preprocessing, and Grad-CAM against pytorch-grad-cam's documented HF recipe."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import Explainer, to_model_input
from camcli.images import model_view
from camcli.models import load_model
from camcli.targets import Target
from conftest import camcli_cli, random_image, run_without_network

transformers = pytest.importorskip("transformers")  # the test extra; the hf extra for users
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

runner = CliRunner()
LABELS = {0: "cat", 1: "dog", 2: "bird"}
T = transformers
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)

# family -> (config, image processor, input size, the default layer, leading tokens)
FAMILIES = {
    "vit": (
        lambda: T.ViTConfig(**VIT, image_size=32, patch_size=8),
        lambda: T.ViTImageProcessor(size={"height": 32, "width": 32}),
        32,
        "vit.layers.1.layernorm_before",
        1,
    ),
    "deit": (
        lambda: T.DeiTConfig(**VIT, image_size=32, patch_size=8),
        lambda: T.DeiTImageProcessor(
            size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}
        ),
        32,
        "deit.layers.1.layernorm_before",
        2,
    ),
    "beit": (
        lambda: T.BeitConfig(**VIT, image_size=32, patch_size=8, use_relative_position_bias=True),
        lambda: T.BeitImageProcessor(
            size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}
        ),
        32,
        "beit.layers.1.layernorm_before",
        1,
    ),
    "swin": (
        lambda: T.SwinConfig(
            image_size=32, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4
        ),
        lambda: T.ViTImageProcessor(size={"height": 32, "width": 32}),
        32,
        "swin.layernorm",
        None,
    ),
    "convnext": (
        lambda: T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
        lambda: T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),
        32,
        "convnext.encoder.stages.1",
        None,
    ),
    "resnet": (
        lambda: T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]),
        lambda: T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),
        32,
        "resnet.encoder.stages.1",
        None,
    ),
    "efficientnet": (
        lambda: T.EfficientNetConfig(
            image_size=64,
            width_coefficient=0.1,
            depth_coefficient=0.1,
            hidden_dim=128,
            initializer_range=0.2,  # the default 0.02 fades the signal to zero in a tiny net
        ),
        lambda: T.EfficientNetImageProcessor(size={"height": 64, "width": 64}),
        64,
        "efficientnet.encoder.top_activation",
        None,
    ),
    "mobilevit": (
        lambda: T.MobileViTConfig(
            image_size=64,
            hidden_sizes=[16, 16, 16],
            neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16],
            num_attention_heads=2,
            initializer_range=0.2,
        ),
        lambda: T.MobileViTImageProcessor(
            size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}
        ),
        64,
        "mobilevit.conv_1x1_exp",
        None,
    ),
}


def save_family(folder: Path, family: str) -> Path:
    """A random ``family`` classifier with 3 labelled classes and its processor, saved."""
    make_config, make_processor, *_ = FAMILIES[family]
    config = make_config()
    config.architectures = [type(config).__name__.replace("Config", "ForImageClassification")]
    config.num_labels = 3
    config.id2label = dict(LABELS)
    config.label2id = {v: k for k, v in LABELS.items()}
    torch.manual_seed(0)
    model = T.AutoModelForImageClassification.from_config(config)
    model.save_pretrained(folder)
    make_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family: save_family(root / family, family) for family in FAMILIES}


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    """No test reaches the network: an empty private hub cache, offline mode."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_loads_with_its_default_layer_tokens_and_labels(saved, family):
    *_, size, layer, leading = FAMILIES[family]
    loaded = load_model(f"hf:{saved[family]}", device="cpu")
    assert loaded.weights == "pretrained" and loaded.labels == ["cat", "dog", "bird"]
    assert loaded.preprocess.crop_size == size and loaded.num_classes == 3
    assert getattr(loaded.model, "num_prefix_tokens", None) == leading
    explainer = Explainer(loaded, method="gradcam")
    assert explainer.layer_names == [layer]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    explanation = explainer.explain(x, [Target(rank=1)])
    assert explanation.maps.max() > 0, explanation.blank
    assert explanation.maps.shape[-1] >= 2


class Logits(torch.nn.Module):
    """pytorch-grad-cam's HF tutorial wrapper (HuggingfaceToTensorModelWrapper): .logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def test_vit_gradcam_matches_pytorch_grad_cam_with_its_reshape(saved):
    loaded = load_model(f"hf:{saved['vit']}", device="cpu")
    reference = Logits(load_model(f"hf:{saved['vit']}", device="cpu").model).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    classes = [0, 2]
    explainer = Explainer(loaded, method="gradcam")
    maps = explainer.explain(x, [Target(index=c) for c in classes]).maps
    mine = np.stack([maps[i, i] for i in range(2)])

    def reshape(tensor: torch.Tensor) -> torch.Tensor:  # the tutorial's: drop CLS, 4x4 grid
        grid = tensor[:, 1:, :].reshape(tensor.size(0), 4, 4, tensor.size(2))
        return grid.transpose(2, 3).transpose(1, 2)

    layer = reference.model.vit.layers[-1].layernorm_before
    cam = GradCAM(model=reference, target_layers=[layer], reshape_transform=reshape)
    try:
        targets = [ClassifierOutputTarget(c) for c in classes]
        outputs = cam.activations_and_grads(x)
        sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        ref = np.maximum(cam.get_cam_image(x, layer, targets, acts, grads, False), 0)
    finally:
        cam.activations_and_grads.release()
    assert ref.max() > 0 and mine.shape == ref.shape
    assert np.abs(mine - ref).max() <= 1e-4 * ref.max()


@pytest.mark.parametrize("family", ["vit", "efficientnet", "mobilevit"])
def test_model_input_equals_the_image_processor(saved, family, tmp_path):
    """On an image already at the model's size (no resampling), camcli's normalised input is
    the processor's pixel_values: rescale, normalise, EfficientNet's second division by std,
    and MobileViT's BGR order (a pre-hook on the model) included."""
    size = FAMILIES[family][2]
    loaded = load_model(f"hf:{saved[family]}", device="cpu")
    image = Image.open(random_image(tmp_path / "x.png", size=(size, size))).convert("RGB")
    # MobileViT resizes to 72 then crops 64; both sides skip the resize here (see below)
    pixels, _box = model_view(image, replace(loaded.preprocess, resize_size=size))
    mine = to_model_input(pixels[None], loaded)
    processor = T.AutoImageProcessor.from_pretrained(saved[family])
    if family == "mobilevit":
        processor.size = {"shortest_edge": size}  # no resize: compare the arithmetic only
        seen = []  # what the model computes on, after its channel-flipping pre-hook
        handle = loaded.model.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            with torch.no_grad():
                loaded.model(mine)
        finally:
            handle.remove()
        mine = seen[0]
    expected = processor(image, return_tensors="pt")["pixel_values"]
    assert mine.shape == expected.shape
    assert torch.allclose(mine, expected, atol=1e-5), (mine - expected).abs().max()


def test_random_weights_input_size_and_checkpoint(saved, tmp_path):
    folder = saved["vit"]
    a = load_model(f"hf:{folder}", weights="none", device="cpu", input_size=48)
    b = load_model(f"hf:{folder}", weights="none", device="cpu", input_size=48)
    assert a.weights is None and a.preprocess.crop_size == 48
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert Explainer(a).explain(torch.randn(1, 3, 48, 48), [Target(rank=1)]).maps.shape[-1] == 6
    with pytest.raises(UsageError, match="takes 32 px inputs only"):
        load_model(f"hf:{folder}", device="cpu", input_size=48)

    torch.manual_seed(5)
    config = T.AutoConfig.from_pretrained(folder)
    config.num_labels = 5
    mine = T.AutoModelForImageClassification.from_config(config)
    path = tmp_path / "mine.pt"
    torch.save(mine.state_dict(), path)
    loaded = load_model(f"hf:{folder}", checkpoint=path, device="cpu")
    assert loaded.num_classes == 5 and loaded.labels is None
    assert torch.equal(loaded.model.classifier.weight, mine.classifier.weight)


def hub_snapshot(cache: Path, repo: str, source: Path) -> None:
    """``source``'s files as huggingface_hub lays out a downloaded repo in its cache."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "1" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())


def test_cli_hub_id_from_the_cache_offline_and_the_uncached_error(saved, offline_hub, tmp_path):
    filled = tmp_path / "filled"
    hub_snapshot(filled, "camcli-tests/tiny-vit", saved["vit"])
    (tmp_path / "in").mkdir()
    image = random_image(tmp_path / "in" / "a.png", size=(40, 32))
    out = tmp_path / "out"
    env = {"HF_HUB_CACHE": str(filled), "HF_HUB_OFFLINE": "1"}
    args = ("run", str(image), "--model", "hf:camcli-tests/tiny-vit", "-f", "npy", "-q")
    done = camcli_cli(*args, "-o", str(out), "--target", "dog", env=env)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert (record["status"], record["label"], record["class_index"]) == ("ok", "dog", 1)
    assert np.load(out / "a.png.gradcam.class1.npy").shape == (4, 4)

    # The empty cache in-process (the same CLI code, without a second interpreter start).
    refused = runner.invoke(app, [*args, "-o", str(tmp_path / "out2")])
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())  # the console may wrap the long line
    assert str(offline_hub / "models--camcli-tests--tiny-vit") in message
    assert "hf download camcli-tests/tiny-vit" in message
    assert "Traceback" not in refused.output


def test_layers_command_check_spec_and_missing_folder(saved, tmp_path):
    result = runner.invoke(app, ["layers", f"hf:{saved['deit']}", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    (default,) = [r for r in rows if r["default"]]
    assert default["name"] == "deit.layers.1.layernorm_before"
    assert (default["layout"], default["grid"]) == ("tokens", [4, 4])

    spec = tmp_path / "check.toml"
    (tmp_path / "img.png").write_bytes(random_image(tmp_path / "x.png", size=(32, 32)).read_bytes())
    os.symlink(saved["vit"], tmp_path / "vit")
    spec.write_text(
        '[model]\nmodel = "hf:vit"\ndevice = "cpu"\n\n'
        '[[case]]\nname = "any"\nimage = "img.png"\nexpect_class = "cat"\ntop_k = 3\n'
    )
    checked = runner.invoke(app, ["check", str(spec), "--json"])
    assert checked.exit_code == 0, checked.output
    body = json.loads(checked.stdout)
    assert body["passed"] is True and body["model"]["name"] == f"hf:{tmp_path / 'vit'}"
    assert body["model"]["layers"] == ["vit.layers.1.layernorm_before"]

    with pytest.raises(UsageError, match="no such folder"):
        load_model(f"hf:{tmp_path / 'nothing'}")


def test_missing_transformers_is_a_usage_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    result = runner.invoke(app, ["layers", "hf:org/name"])
    assert result.exit_code == 2
    assert "`uv sync --extra hf` in the camcli checkout (or `pip install '.[hf]'` there)" in (
        result.output
    )


def test_models_lists_the_hub_cache(saved, offline_hub):
    hub_snapshot(offline_hub, "camcli-tests/tiny-vit", saved["vit"])
    hub_snapshot(offline_hub, "camcli-tests/tiny-deit", saved["deit"])
    result = runner.invoke(app, ["models", "hf:*vit*"])
    assert result.exit_code == 0
    assert result.output.split() == ["hf:camcli-tests/tiny-vit"]


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "offline"])
def test_uncached_hub_id_without_network_is_one_line_at_once(tmp_path, offline):
    # Before: 32 s and 12 lines of the hub client's retries before camcli's message.
    line = run_without_network(tmp_path, "hf:camcli-tests/absent", offline=offline)
    assert line.startswith("error: hf:camcli-tests/absent model config is not in the cache")
    assert "hf download camcli-tests/absent" in line
