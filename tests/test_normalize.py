"""``--normalize PRESET``, ``--mean``, ``--std``: the model's input normalisation, for every
model source (an ONNX file carries none)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from camcli.check.spec import parse_spec
from camcli.cli import app
from camcli.errors import UsageError
from camcli.explain import to_model_input
from camcli.images import IMAGENET_MEAN, IMAGENET_STD
from camcli.models import load_model
from conftest import random_image

runner = CliRunner()


def test_preset_then_mean_and_std_over_it_reach_the_model_input():
    plain = load_model("resnet18", weights="none", device="cpu", input_size=32)
    assert (plain.preprocess.mean, plain.preprocess.std) == (IMAGENET_MEAN, IMAGENET_STD)
    raw = load_model("resnet18", weights="none", device="cpu", input_size=32, normalize="none")
    pixels = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    fed = to_model_input(pixels, raw).numpy()
    np.testing.assert_allclose(fed, pixels.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    mixed = load_model("resnet18", weights="none", device="cpu", input_size=32,
                       normalize="clip", mean=(0.5,), std=(0.25, 0.5, 1.0))  # fmt: skip
    assert mixed.preprocess.mean == (0.5, 0.5, 0.5)
    assert mixed.preprocess.std == (0.25, 0.5, 1.0)
    assert mixed.preprocess.crop_size == 32
    fed = to_model_input(pixels, mixed).numpy()
    expected = (pixels.transpose(0, 3, 1, 2) / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0])[
        :, None, None
    ]
    np.testing.assert_allclose(fed, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"normalize": "bogus"},
            "unknown --normalize 'bogus' (use imagenet, inception, clip, none)",
        ),
        ({"mean": (0.1, 0.2)}, "--mean takes 3 numbers (R,G,B) or one for all, got (0.1, 0.2)"),
        ({"std": (0.2, 0.0, 0.2)}, "--std must be above 0 for every channel, got (0.2, 0.0, 0.2)"),
    ],
)
def test_bad_normalisation_is_one_line(options, message):
    with pytest.raises(UsageError) as caught:
        load_model("resnet18", weights="none", device="cpu", input_size=32, **options)
    assert str(caught.value) == message


def test_cli_mean_that_is_not_numbers(tmp_path):
    image = random_image(tmp_path / "img.png")
    result = runner.invoke(app, ["run", str(image), "-m", "resnet18", "-w", "none",
                                 "--mean", "0.1,x", "-o", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == "error: --mean takes numbers separated by commas (R,G,B), got '0.1,x'"
    )


def test_check_spec_model_table_takes_normalize_mean_std(tmp_path):
    random_image(tmp_path / "img.png")
    spec = tmp_path / "check.toml"
    spec.write_text(
        '[model]\nmodel = "net.onnx"\nnormalize = "inception"\nmean = [0.4, 0.5, 0.6]\nstd = 0.5\n'
        '\n[[case]]\nname = "a"\nimage = "img.png"\nexpect_class = 1\n'
    )
    parsed, problems = parse_spec(spec)
    assert problems == []
    assert parsed.model.model == str(tmp_path / "net.onnx")  # relative to the spec
    assert (parsed.model.normalize, parsed.model.mean, parsed.model.std) == (
        "inception",
        (0.4, 0.5, 0.6),
        (0.5,),
    )
    spec.write_text(spec.read_text().replace("std = 0.5", 'std = "wide"'))
    _, problems = parse_spec(spec)
    assert problems == [f"{spec}: [model]: std must be 3 numbers [R, G, B] or one, got 'wide'"]
