"""Numbers camcli must not write silently: non-finite outputs, blank maps, unseeded random
weights, impossible sizes, conflicting options, targets that cannot be found; the image API."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import synthetic
from camcli.cli import app
from camcli.errors import CamcliWarning, UsageError
from camcli.explain import Explainer, explain, parse_targets, to_model_input
from camcli.images import model_view
from camcli.models import load_model, read_labels
from conftest import SYNTHETIC_MODEL, random_image

runner = CliRunner()


def tiny(ckpt, **kwargs):
    return load_model(
        SYNTHETIC_MODEL, checkpoint=ckpt["checkpoint"], labels=ckpt["labels"], device="cpu",
        input_size=64, fit="stretch", **kwargs,
    )  # fmt: skip


def shapes(n=2):
    images, _, _ = synthetic.dataset(n, seed=7)
    return images


# 1. Non-finite outputs are a problem of that image, never a NaN score or map.


def test_nan_weights_give_a_problem_per_image_and_no_nan(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint["checkpoint"], weights_only=True)
    head = [k for k in state if k.endswith("weight")][-1]
    state[head] = torch.full_like(state[head], float("nan"))
    broken = tmp_path / "nan.pt"
    torch.save(state, broken)
    loaded = tiny({**tiny_checkpoint, "checkpoint": broken})
    result = explain(loaded, to_model_input(shapes(), loaded), method="gradcam", top_k=2)
    assert result.problems == ["the model's output is not finite (NaN or inf in the logits)"] * 2
    assert np.isfinite(result.scores).all() and np.isfinite(result.maps).all()


def test_a_method_that_judges_the_output_names_nan_as_the_reason(broken_checkpoints, tmp_path):
    # CAM fits its head to the setup probe's logits; on NaN no fit holds, and its own message
    # (no linear layer maps the channels to the classes) would send the user the wrong way.
    image = random_image(tmp_path / "img.png", size=(64, 64))
    args = ["run", str(image), "-m", SYNTHETIC_MODEL, "--checkpoint", str(broken_checkpoints["nan"]),
            "--input-size", "64", "-o", str(tmp_path / "out"), "--device", "cpu", "-q",
            "--method", "cam"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: cam cannot be set up: the model's output is not finite (NaN or inf in the "
        "logits) on a random input (weights that hold NaN or inf, from a training run that "
        "diverged?)\n"
    )


def test_finite_outputs_have_no_problems(tiny_checkpoint):
    loaded = tiny(tiny_checkpoint)
    result = explain(loaded, to_model_input(shapes(), loaded), method="cam")
    assert result.problems == [None, None]
    assert result.blank == [[None], [None]]


def test_a_non_finite_map_is_named(tiny_checkpoint):
    loaded = tiny(tiny_checkpoint)
    explainer = Explainer(loaded, method="gradcam")
    batch = to_model_input(shapes(), loaded)
    compute = explainer.method.compute

    def inf_in_image_1(*args, **kwargs):
        maps = compute(*args, **kwargs).clone()
        maps[1, 0, 0, 0] = float("inf")
        return maps

    explainer.method.compute = inf_in_image_1
    result = explainer.explain(batch, parse_targets(["top1"], None, None, 3))
    assert result.problems[0] is None
    assert result.problems[1] is not None and "not finite" in result.problems[1]
    assert np.isfinite(result.maps).all() and np.isfinite(result.scores).all()


def run_tiny(tmp_path, state, *extra):
    """``camcli run`` on one image with the synthetic net holding ``state``; its records."""
    checkpoint = tmp_path / "tiny.pt"
    torch.save(state, checkpoint)
    image = random_image(tmp_path / "img.png", size=(64, 64))
    out = tmp_path / "out"
    args = ["run", str(image), "-m", SYNTHETIC_MODEL, "--checkpoint", str(checkpoint),
            "--input-size", "64", "-o", str(out), "-f", "npy", "--device", "cpu", "-q",
            *extra]  # fmt: skip
    result = runner.invoke(app, args)
    text = (out / "manifest.jsonl").read_text()
    return result, text, [json.loads(line) for line in text.splitlines()]


def test_nan_checkpoint_is_an_error_record_from_the_cli(tmp_path):
    state = synthetic.TinyCAMNet().state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    result, text, (record,) = run_tiny(tmp_path, state)
    assert result.exit_code == 1
    assert record["status"] == "error" and record["score"] is None
    assert record["error"].endswith(
        "img.png: the model's output is not finite (NaN or inf in the logits)"
    )
    for line in text.splitlines():  # strict JSON: no NaN or Infinity constants anywhere
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in the manifest"))


# 4. A map that is zero everywhere says why.


def test_zero_head_blank_maps_say_all_scores_are_equal(tmp_path):
    loaded = load_model("resnet18", weights="none", device="cpu", input_size=64)
    torch.nn.init.zeros_(loaded.model.fc.weight)
    torch.nn.init.zeros_(loaded.model.fc.bias)
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    result = explain(loaded, to_model_input(images, loaded), method="gradcam", top_k=2)
    assert not result.maps.any()
    reason = "all scores are equal (an untrained or zero head?)"
    assert result.blank == [[reason, reason], [reason, reason]]


def test_zero_head_blank_map_is_a_warning_in_the_record(tmp_path):
    state = synthetic.TinyCAMNet().state_dict()
    state["fc.weight"].zero_()
    state["fc.bias"].zero_()
    result, _, (record,) = run_tiny(tmp_path, state)
    assert result.exit_code == 0, result.output
    assert record["status"] == "ok"
    assert record["warning"] == "all scores are equal (an untrained or zero head?)"


def test_no_positive_evidence_names_the_layer(tiny_checkpoint):
    loaded = tiny(tiny_checkpoint)
    explainer = Explainer(loaded, method="gradcam")
    batch = to_model_input(shapes(), loaded)
    # The least likely class of a confident model: Grad-CAM's ReLU leaves nothing if no
    # location raises its score; zeroing the layer's output makes that certain.
    layer = explainer.layer_names[0]
    handle = explainer.layers[layer].register_forward_hook(lambda m, i, o: o * 0)
    try:
        result = explainer.explain(batch, parse_targets(["top1"], None, None, 3))
    finally:
        handle.remove()
    assert result.blank == [[f"no positive evidence for this class at layer {layer}"]] * 2


# 5. --weights none is seeded, and the caller's RNG is left alone.


def test_random_weights_are_the_same_on_every_load():
    before = torch.random.get_rng_state()
    first = load_model("resnet18", weights="none", device="cpu", input_size=64)
    second = load_model("resnet18", weights="none", device="cpu", input_size=64)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (key, a), b in zip(
        first.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key


def test_two_cli_runs_with_random_weights_predict_the_same(tmp_path):
    image = random_image(tmp_path / "img.png", size=(70, 64))
    maps = []
    for run in ("a", "b"):
        out = tmp_path / run
        args = ["run", str(image), "-m", "resnet18", "-w", "none", "--input-size", "64",
                "-o", str(out), "-f", "npy", "--device", "cpu", "-q", "-k", "2"]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        maps.append([(r["class_index"], np.load(r["outputs"][0])) for r in records])
    for (class_a, map_a), (class_b, map_b) in zip(*maps, strict=True):
        assert class_a == class_b
        np.testing.assert_array_equal(map_a, map_b)


# 3. Sizes that cannot fit in memory are one line, exit 2, before anything is allocated.


def test_huge_head_is_refused_before_allocating(tmp_path):
    image = random_image(tmp_path / "img.png")
    args = ["run", str(image), "-m", "resnet18", "-w", "none", "--num-classes", "100000000",
            "--input-size", "64", "-o", str(tmp_path / "out"), "--device", "cpu", "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "--num-classes 100000000: not enough memory to build a 100000000-class head" in message
    assert "205.2 GB" in message
    assert "Traceback" not in result.output


def test_huge_input_size_is_refused_before_allocating(tmp_path):
    image = random_image(tmp_path / "img.png")
    args = ["run", str(image), "-m", "resnet18", "-w", "none", "--input-size", "30000",
            "-o", str(tmp_path / "out"), "--device", "cpu", "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "--input-size 30000: not enough memory for a forward pass at 30000 px" in message
    assert "Traceback" not in result.output


def test_allocation_failure_in_the_probe_is_a_usage_error(tiny_checkpoint, monkeypatch):
    loaded = tiny(tiny_checkpoint)

    def fail(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 90.00 GiB")

    monkeypatch.setattr(loaded.model, "forward", fail)
    with pytest.raises(UsageError, match=r"not enough memory for a forward pass at 64 px"):
        Explainer(loaded, method="gradcam", layers=["features.6"])


def test_allocation_failure_while_building_is_a_usage_error(monkeypatch):
    def fail(name, num_classes):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB")

    monkeypatch.setattr("camcli.models.torchvision.build", fail)
    with pytest.raises(UsageError, match=r"not enough memory to build resnet18 with 5000 classes"):
        load_model("resnet18", weights="none", num_classes=5000, device="cpu")


# 7. Conflicting options.


def test_fp16_on_cpu_warns_once(tiny_checkpoint):
    loaded = tiny(tiny_checkpoint)
    with pytest.warns(CamcliWarning, match=r"fp16 on the CPU.* use --precision bf16") as caught:
        Explainer(loaded, method="gradcam", precision="fp16")
    assert len([w for w in caught if w.category is CamcliWarning]) == 1


def test_one_by_one_map_warns_naming_layer_and_grid():
    loaded = load_model("resnet18", weights="none", device="cpu", input_size=32)
    with pytest.warns(CamcliWarning, match=r"layer4 gives a 1 x 1 map at 32 px") as caught:
        Explainer(loaded, method="gradcam", layers=["layer4"])
    assert len([w for w in caught if w.category is CamcliWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", CamcliWarning)
        Explainer(loaded, method="gradcam", layers=["layer3"])  # 2 x 2 is a map


# 8. Messages name the model as the user knows it, not as folding rewrote it.


def test_cam_refusal_names_the_batch_norm_not_its_folded_identity(tmp_path):
    image = random_image(tmp_path / "img.png")
    args = ["run", str(image), "-m", "resnet18", "-w", "none", "--method", "cam", "-l", "layer3",
            "--input-size", "64", "-o", str(tmp_path / "out"), "--device", "cpu", "-q"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "layer4.0.conv1 (Conv2d), layer4.0.bn1 (BatchNorm2d)" in message
    assert "Identity" not in message


# 9. Targets: suggestions by words, ranks and indices explained.

LABELS = ["tabby cat", "tiger cat", "Persian cat", "Siamese cat", "crate", "oxcart", "laptop"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("cat", "did you mean 'tabby cat', 'tiger cat', 'Persian cat', 'Siamese cat'?"),
        ("top0", "ranks start at 1: top1 is the most likely class"),
        ("top-1", "ranks start at 1: top1 is the most likely class"),
        ("-1", "class indices run from 0 to 6"),
        ("7", "target 7 is out of range: class indices run from 0 to 6"),
        ("top8", "target 'top8': the model has only 7 classes (top1 to top7)"),
        ("crat", "did you mean 'crate'"),
    ],
)
def test_target_messages(value, expected):
    with pytest.raises(UsageError) as caught:
        parse_targets([value], None, LABELS, len(LABELS))
    assert expected in str(caught.value)
    if value in ("cat", "top0"):
        assert "laptop" not in str(caught.value) and "crate" not in str(caught.value)


def test_word_suggestions_stop_at_eight():
    labels = [f"breed{i} cat" for i in range(12)]
    with pytest.raises(UsageError) as caught:
        parse_targets(["cat"], None, labels, len(labels))
    assert str(caught.value).count(" cat'") == 8 and "and 4 more" in str(caught.value)


# 6. Labels: a byte-order mark, FIFOs and devices, size.


def test_labels_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffred\ngreen\nblue\n".encode())
    assert read_labels(path) == ["red", "green", "blue"]


def test_labels_that_are_not_regular_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        with pytest.raises(UsageError, match=r"not a regular file"):
            read_labels(path)


def test_huge_labels_file_is_refused(tmp_path):
    path = tmp_path / "big.txt"
    with open(path, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    with pytest.raises(UsageError, match=r"too large for a labels file"):
        read_labels(path)


# 10. The image API: paths, PIL images and arrays, with the model's own preprocessing.


def test_explain_images_takes_paths_pil_images_and_arrays(tiny_checkpoint, tmp_path):
    import camcli
    from camcli.render import overlay

    pictures = shapes(2)
    paths = []
    for i, picture in enumerate(pictures):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(picture).save(paths[-1])
    wide = np.concatenate([pictures[0], pictures[0]], axis=1)  # 64 x 128
    loaded = load_model(
        SYNTHETIC_MODEL, checkpoint=tiny_checkpoint["checkpoint"], input_size=64, device="cpu",
        labels=tiny_checkpoint["labels"],
    )  # fmt: skip
    result = camcli.explain_images(
        loaded, [paths[0], str(paths[1]), Image.fromarray(pictures[1]), wide], method="cam"
    )
    assert result.explanation.maps.shape[:2] == (4, 1)
    # Each image resized and centre-cropped as the model expects, and the box says where.
    seen = [model_view(Image.fromarray(p), loaded.preprocess) for p in [*pictures, wide]]
    expected_boxes = [box for _, box in seen]
    assert result.boxes == [expected_boxes[i] for i in (0, 1, 1, 2)]
    assert result.boxes[3].x0 > 0 and result.boxes[3].x1 < 128  # the centre of the wide one
    direct = explain(loaded, to_model_input(np.stack([v for v, _ in seen]), loaded), method="cam")
    np.testing.assert_allclose(result.explanation.maps[[0, 1, 3]], direct.maps, atol=1e-5)
    np.testing.assert_allclose(result.explanation.maps[1], result.explanation.maps[2])
    assert [a.shape for a in result.images] == [(64, 64, 3)] * 3 + [(64, 128, 3)]
    drawn = overlay(result.images[3], result.explanation.maps[3, 0], result.boxes[3])
    assert drawn.shape == (64, 128, 3) and (drawn != result.images[3]).any()


def test_explain_images_refuses_arrays_that_are_not_rgb(tiny_checkpoint):
    import camcli

    loaded = tiny(tiny_checkpoint)
    with pytest.raises(UsageError, match=r"image 0: expected an H x W x 3 uint8 array"):
        camcli.explain_images(loaded, [np.zeros((8, 8), np.float32)])
