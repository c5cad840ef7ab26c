"""``--model timm:NAME``: timm's loading (from a pre-filled hub cache, offline), random and
checkpoint weights, preprocessing, labels, layers, token reshapes against pytorch-grad-cam."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import Explainer
from camcli.layers import spatial_layout, token_prefix
from camcli.models import LoadedModel, load_model
from camcli.targets import Target
from conftest import camcli_cli, random_image, run_without_network

timm = pytest.importorskip("timm")  # the test extra installs it; the timm extra for users
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

runner = CliRunner()
REPO = "timm/resnet18.a1_in1k"  # where timm keeps resnet18's default weights


def hub_cache(root: Path, repo: str, files: dict[str, Path | bytes]) -> Path:
    """A Hugging Face hub cache holding ``files`` of ``repo`` at one snapshot, laid out as
    huggingface_hub writes it (refs/main -> snapshots/<commit>/<file>)."""
    commit = "0" * 40
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        target = snapshot / name
        if isinstance(data, Path):
            target.write_bytes(data.read_bytes())
        else:
            target.write_bytes(data)
    return root


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty private hub cache, offline, for this process and its children."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def marked_resnet18(path: Path) -> dict[str, torch.Tensor]:
    """A random resnet18 state dict whose head bias is 0..999 (recognisable once loaded)."""
    torch.manual_seed(1)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    state["fc.bias"] = torch.arange(1000, dtype=torch.float32) / 1000
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return state


def test_pretrained_weights_load_from_the_hub_cache_offline(hf_cache, tmp_path):
    state = marked_resnet18(tmp_path / "model.safetensors")
    hub_cache(hf_cache, REPO, {"model.safetensors": tmp_path / "model.safetensors"})
    loaded = load_model("timm:resnet18", device="cpu")
    assert loaded.weights == "resnet18.a1_in1k"
    assert torch.equal(loaded.model.fc.bias, state["fc.bias"])
    assert torch.equal(loaded.model.conv1.weight, state["conv1.weight"])
    # timm's data config for these weights: bicubic, crop_pct 0.95 -> resize floor(224/0.95)
    p = loaded.preprocess
    assert (p.crop_size, p.resize_size, p.interpolation) == (224, 235, "bicubic")
    assert p.mean == pytest.approx((0.485, 0.456, 0.406))
    assert loaded.labels[:2] == ["tench", "goldfish"] and len(loaded.labels) == 1000


def test_cli_runs_cached_timm_weights_and_refuses_an_empty_cache(hf_cache, tmp_path):
    marked_resnet18(tmp_path / "model.safetensors")
    filled = hub_cache(
        tmp_path / "filled", REPO, {"model.safetensors": tmp_path / "model.safetensors"}
    )
    (tmp_path / "in").mkdir()
    image = random_image(tmp_path / "in" / "a.png", size=(64, 48))
    out = tmp_path / "out"
    env = {"HF_HUB_CACHE": str(filled), "HF_HUB_OFFLINE": "1"}
    args = ("run", str(image), "-o", str(out), "--model", "timm:resnet18", "--input-size", "64")
    done = camcli_cli(*args, "-f", "npy", "-q", env=env)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and record["settings"]["weights"] == "resnet18.a1_in1k"
    assert record["settings"]["model"] == "timm:resnet18"
    assert np.load(out / "a.png.gradcam.top1.npy").shape == (2, 2)

    # The empty cache in-process (the same CLI code, without a second interpreter start).
    empty = runner.invoke(app, [*args, "-o", str(tmp_path / "out2")])
    assert empty.exit_code == 2
    message = " ".join(empty.output.split())  # the console may wrap the long line
    assert str(hf_cache / "models--timm--resnet18.a1_in1k") in message
    assert f"hf download {REPO}" in message
    assert "Traceback" not in empty.output


def test_random_weights_are_seeded_and_keep_the_callers_rng(hf_cache):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = load_model("timm:resnet18", weights="none", device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)
    b = load_model("timm:resnet18", weights="none", device="cpu")
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    assert a.weights is None and a.labels[0] == "tench"


def test_checkpoint_with_its_own_head(hf_cache, tmp_path):
    torch.manual_seed(2)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_model("timm:resnet18", checkpoint=path, device="cpu", input_size=64)
    assert loaded.num_classes == 3 and loaded.labels is None
    assert torch.equal(loaded.model.fc.weight, model.fc.weight)
    assert loaded.preprocess.crop_size == 64


def test_unknown_names_and_weights_are_usage_errors(hf_cache):
    with pytest.raises(
        UsageError, match=r"unknown model timm:resnet181.*did you mean timm:resnet18"
    ):
        load_model("timm:resnet181", weights="none")
    with pytest.raises(
        UsageError, match=r"unknown weights 'nope' for timm:resnet18 \(available: .*a1_in1k"
    ):
        load_model("timm:resnet18", weights="nope")


def reshape_vit(tensor: torch.Tensor, height: int, width: int, prefix: int = 1) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape (tutorials, vit_example.py): drop the
    leading tokens, tokens to a grid, channels first."""
    result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def pgc_gradcam_raw(model, layer, x, classes, reshape=None) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM map at the layer's resolution (before its upsampling)."""
    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        targets = [ClassifierOutputTarget(c) for c in classes]
        outputs = cam.activations_and_grads(x)
        sum(t(o) for t, o in zip(targets, outputs, strict=True)).backward()
        activations = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        return np.maximum(cam.get_cam_image(x, layer, targets, activations, grads, False), 0)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


def camcli_raw(loaded: LoadedModel, layer: str, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    explainer = Explainer(loaded, method="gradcam", layers=[layer])
    targets = [Target(index=c) for c in classes]
    maps = explainer.explain(x, targets).maps
    return np.stack([maps[i, i] for i in range(len(classes))])


def assert_close(mine: np.ndarray, ref: np.ndarray) -> None:
    scale = np.abs(ref).max()
    assert scale > 0, "blank reference: the comparison would prove nothing"
    assert mine.shape == ref.shape
    assert np.abs(mine - ref).max() <= 1e-4 * scale


@pytest.mark.parametrize(
    ("name", "size", "layer", "grid"),
    [("resnet18", 64, "layer4", (2, 2)), ("vit_tiny_patch16_224", 64, "blocks.11.norm1", (4, 4))],
)
def test_gradcam_matches_pytorch_grad_cam_with_its_reshape(hf_cache, name, size, layer, grid):
    loaded = load_model(f"timm:{name}", weights="none", device="cpu", input_size=size)
    explainer = Explainer(loaded, method="gradcam")
    assert explainer.layer_names == [layer]  # the automatic default
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    classes = [3, 7]
    mine = camcli_raw(loaded, layer, x, classes)
    # The same seeded build, untouched (camcli folds batch norms into the model it explains).
    reference_model = load_model(f"timm:{name}", weights="none", input_size=size).model
    module = reference_model.get_submodule(layer)
    reshape = (lambda t: reshape_vit(t, *grid)) if "vit" in name else None
    assert_close(mine, pgc_gradcam_raw(reference_model, module, x, classes, reshape))


def test_register_tokens_use_the_declared_prefix(hf_cache):
    """A ViT with 4 register tokens at 32 px: 1 + 4 + 2*2 = 9 tokens, which the shape alone
    would read as a 3x3 grid; timm's num_prefix_tokens (5) gives the 2x2 patch grid."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, reg_tokens=4, num_classes=4
    ).eval()
    assert token_prefix(model) == 5
    assert spatial_layout((1, 9, 32), (32, 32)).grid == (3, 3)  # what the shape suggests
    assert spatial_layout((1, 9, 32), (32, 32), token_prefix(model)).grid == (2, 2)
    from camcli.images import Preprocess

    loaded = LoadedModel(model, "vit-reg", None, Preprocess(32, 32), None, torch.device("cpu"), 4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mine = camcli_raw(loaded, "blocks.1.norm1", x, [0, 2])
    ref = pgc_gradcam_raw(
        model, model.blocks[1].norm1, x, [0, 2], lambda t: reshape_vit(t, 2, 2, 5)
    )
    assert_close(mine, ref)


def test_models_and_layers_commands(hf_cache):
    listed = runner.invoke(app, ["models", "timm:*vit_tiny*"])
    assert listed.exit_code == 0
    names = listed.output.split()
    assert "timm:vit_tiny_patch16_224" in names and all(n.startswith("timm:") for n in names)
    assert runner.invoke(app, ["models", "timm:*no_such_model*"]).exit_code == 1

    result = runner.invoke(
        app, ["layers", "timm:vit_tiny_patch16_224", "--input-size", "32", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    (default,) = [r for r in rows if r["default"]]
    assert default["name"] == "blocks.11.norm1" and default["grid"] == [2, 2]
    assert default["layout"] == "tokens"
    embed = next(r for r in rows if r["name"] == "patch_embed")
    assert embed["grid"] == [2, 2]  # 4 tokens, before the class token joins


def test_missing_timm_is_a_usage_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    result = runner.invoke(app, ["layers", "timm:resnet18"])
    assert result.exit_code == 2
    assert "`uv sync --extra timm` in the camcli checkout (or `pip install '.[timm]'` there)" in (
        result.output
    )


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "offline"])
def test_uncached_weights_without_network_are_one_line_at_once(hf_cache, tmp_path, offline):
    # Before: 55 s and 23 lines of the hub client's retries before camcli's message.
    line = run_without_network(tmp_path, "timm:resnet18", offline=offline)
    assert line.startswith("error: timm:resnet18.a1_in1k weights are not in the cache")
    assert "hf download timm/resnet18.a1_in1k" in line
