"""Users' own fine-tuned checkpoints: every head layout, --num-classes, DataParallel prefixes,
class-count inference and mismatch messages, through `camcli run`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import get_model
from typer.testing import CliRunner

import synthetic
from camcli.cli import app
from camcli.errors import CamcliWarning, CheckpointError
from camcli.models import load_model
from conftest import SYNTHETIC_MODEL, random_image

runner = CliRunner()


def save_finetuned(path, name, num_classes=5, wrap=None, **kwargs):
    """A state dict as a user's training script saves it, with a random (non-zero) head."""
    torch.manual_seed(0)
    model = get_model(name, weights=None, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():  # zero-initialised heads (ViT) would give blank maps
                param.normal_(0, 0.02)
    state = model.state_dict()
    if wrap == "dataparallel":
        state = nn.DataParallel(model).state_dict()
    elif wrap == "dict":
        state = {"epoch": torch.tensor(3), "state_dict": state}
    torch.save(state, path)
    return model.state_dict()


def run_cli(tmp_path, name, checkpoint, *extra):
    image = random_image(tmp_path / "img.png", size=(96, 80))
    out = tmp_path / "out"
    args = ["run", str(image), "--model", name, "--checkpoint", str(checkpoint), "--out", str(out)]
    args += ["--format", "npy", "--device", "cpu", "--quiet", *extra]
    return runner.invoke(app, args), out


# (model, head attribute, input size): one per head layout.
HEADS = [
    ("resnet18", "fc", "64"),
    ("mobilenet_v3_small", "classifier.3", "64"),  # two linear layers
    ("efficientnet_b0", "classifier.1", "64"),  # dropout + linear
    ("convnext_tiny", "classifier.2", "64"),  # LayerNorm2d + flatten + linear
    ("squeezenet1_1", "classifier.1", "64"),  # a 1x1 convolution, no linear layer
    ("vit_b_32", "heads.head", None),  # 224 px only
]


@pytest.mark.parametrize(("name", "head", "size"), HEADS)
def test_checkpoint_with_num_classes_runs(tmp_path, name, head, size):
    checkpoint = tmp_path / "finetuned.pt"
    saved = save_finetuned(checkpoint, name)
    sizes = ["--input-size", size] if size else []
    result, out = run_cli(
        tmp_path, name, checkpoint, "--num-classes", "5", "--weights", "none", *sizes
    )
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "ok" and 0 <= record["class_index"] < 5
    assert record["label"] is None  # a user's checkpoint has no ImageNet labels
    cam = np.load(record["outputs"][0])
    assert np.isfinite(cam).all() and cam.max() > cam.min()

    loaded = load_model(name, checkpoint=checkpoint, num_classes=5, weights="none", device="cpu")
    assert loaded.num_classes == 5
    layer = dict(loaded.model.named_modules())[head]
    assert (layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels) == 5
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "mobilenet_v3_small"])
def test_class_count_is_inferred_without_num_classes(tmp_path, name):
    checkpoint = tmp_path / "finetuned.pt"
    save_finetuned(checkpoint, name, num_classes=7)
    loaded = load_model(name, checkpoint=checkpoint, weights="none", device="cpu")
    assert loaded.num_classes == 7 and loaded.labels is None


@pytest.mark.parametrize("wrap", ["dataparallel", "dict"])
def test_wrapped_state_dicts_load(tmp_path, wrap):
    checkpoint = tmp_path / "dp.pt"
    saved = save_finetuned(checkpoint, "resnet18", wrap=wrap)
    if wrap == "dataparallel":
        assert all(k.startswith("module.") for k in torch.load(checkpoint, weights_only=True))
    result, out = run_cli(
        tmp_path, "resnet18", checkpoint, "--num-classes", "5", "--input-size", "64"
    )
    assert result.exit_code == 0, result.output
    assert (out / "manifest.jsonl").is_file()
    loaded = load_model("resnet18", checkpoint=checkpoint, device="cpu")
    assert torch.equal(loaded.model.fc.weight, saved["fc.weight"])


def test_inception_checkpoint_with_aux_head_loads(tmp_path):
    # Fine-tuning inception_v3 keeps its auxiliary classifier; explaining does not need it.
    checkpoint = tmp_path / "inception.pt"
    saved = save_finetuned(checkpoint, "inception_v3", aux_logits=True, init_weights=False)
    assert any(k.startswith("AuxLogits.") for k in saved)
    loaded = load_model("inception_v3", checkpoint=checkpoint, num_classes=5, device="cpu")
    assert loaded.preprocess.crop_size == 299
    assert torch.equal(loaded.model.fc.weight, saved["fc.weight"])


def test_wrong_num_classes_exits_2_naming_the_head_keys(tmp_path):
    checkpoint = tmp_path / "five.pt"
    save_finetuned(checkpoint, "resnet18")
    result, out = run_cli(
        tmp_path, "resnet18", checkpoint, "--num-classes", "7", "--input-size", "64"
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "five.pt" in message and "resnet18 with 7 classes" in message
    assert "fc.weight (5, 512) vs (7, 512)" in message and "fc.bias (5,) vs (7,)" in message
    assert "Traceback" not in result.output
    assert not (out / "manifest.jsonl").exists()


def test_other_architecture_exits_2_naming_first_keys(tmp_path):
    checkpoint = tmp_path / "r34.pt"
    save_finetuned(checkpoint, "resnet34")
    result, _ = run_cli(tmp_path, "resnet18", checkpoint, "--input-size", "64")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "does not fit resnet18" in message
    assert "unexpected keys: layer1.2.conv1.weight" in message


def test_missing_keys_are_named(tmp_path):
    checkpoint = tmp_path / "partial.pt"
    state = save_finetuned(checkpoint, "mobilenet_v3_small")
    torch.save({k: v for k, v in state.items() if not k.startswith("features.0.")}, checkpoint)
    with pytest.raises(CheckpointError, match=r"missing keys: features\.0\.0\.weight"):
        load_model("mobilenet_v3_small", checkpoint=checkpoint, num_classes=5, device="cpu")


def save_state(path, state):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def tiny_state(dtype):
    """The synthetic CAM net's state dict with every float tensor turned into ``dtype``."""
    state = synthetic.TinyCAMNet().state_dict()
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize(("dtype", "name"), [(torch.int64, "int64"), (torch.bool, "bool")])
def test_integer_or_bool_weights_are_refused(tmp_path, suffix, dtype, name):
    checkpoint = tmp_path / f"ints{suffix}"
    save_state(checkpoint, tiny_state(dtype))
    expected = rf"features\.0\.weight is {name} but .* needs float32"
    with pytest.raises(CheckpointError, match=expected):
        load_model(SYNTHETIC_MODEL, checkpoint=checkpoint, device="cpu", input_size=64)


def test_integer_checkpoint_exits_2_from_the_cli(tmp_path):
    checkpoint = tmp_path / "ints.safetensors"
    save_state(checkpoint, tiny_state(torch.int32))
    result, out = run_cli(tmp_path, SYNTHETIC_MODEL, checkpoint, "--input-size", "64")
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "ints.safetensors: features.0.weight is int32 but" in message
    assert "Traceback" not in result.output and not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize(
    ("dtype", "name"), [(torch.float16, "float16"), (torch.bfloat16, "bfloat16")]
)
def test_half_precision_weights_load_with_one_warning(tmp_path, suffix, dtype, name):
    checkpoint = tmp_path / f"half{suffix}"
    state = tiny_state(dtype)
    save_state(checkpoint, state)
    with pytest.warns(
        CamcliWarning, match=rf"are {name} \(first: features\.0\.weight\); loaded as float32"
    ) as caught:
        loaded = load_model(SYNTHETIC_MODEL, checkpoint=checkpoint, device="cpu", input_size=64)
    assert len([w for w in caught if w.category is CamcliWarning]) == 1
    assert loaded.model.fc.weight.dtype == torch.float32
    assert torch.equal(loaded.model.fc.weight, state["fc.weight"].float())


def test_named_weights_with_a_checkpoint_conflict(tmp_path):
    checkpoint = tmp_path / "finetuned.pt"
    save_finetuned(checkpoint, "resnet18")
    result, _ = run_cli(
        tmp_path, "resnet18", checkpoint, "--weights", "IMAGENET1K_V1", "--input-size", "64"
    )
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "--weights IMAGENET1K_V1 and --checkpoint conflict" in message
    # DEFAULT is what the CLI passes when --weights is left out: no conflict.
    loaded = load_model("resnet18", checkpoint=checkpoint, weights="DEFAULT", device="cpu")
    assert loaded.num_classes == 5
