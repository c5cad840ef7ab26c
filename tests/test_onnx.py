"""``--model model.onnx``: an ONNX export made in the test, run by ONNX Runtime, against the
torch model it came from (the oracle), and every ONNX file camcli refuses.

The export is a seeded random resnet18 (``--weights none``'s weights), exported once per
session with ``torch.onnx.export`` at 64 px with a dynamic batch axis; nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from camcli.cli import app
from camcli.config import ExplainSpec
from camcli.errors import UsageError
from camcli.explain import Explainer, explain, parse_targets
from camcli.models import load_model
from camcli.models.torchvision import seeded_build
from conftest import camcli_cli, random_image

onnx = pytest.importorskip("onnx")  # the test extra; the onnx extra for users
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.onnx.export's (dynamo) exporter
from onnx import TensorProto  # noqa: E402
from onnx import helper as oh  # noqa: E402

runner = CliRunner()
SIZE = 64
LABELS = [f"class{i}" for i in range(1000)]
GRADIENT_FREE = [
    "cam", "scorecam", "sscam", "iscam", "ablationcam", "eigencam", "randomcam", "sobel", "fem",
    "kpcacam", "dff",
]  # fmt: skip


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """camcli's ``resnet18 --weights none`` exported to ONNX, with class names in its metadata."""
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    model = seeded_build("resnet18", None).eval()
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (torch.zeros(2, 3, SIZE, SIZE),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
    )
    proto = onnx.load(str(path))
    oh.set_model_props(proto, {"labels": json.dumps(LABELS)})
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="session")
def pair(exported):
    """(the ONNX model, the torch model it came from) as camcli loads them, on the CPU."""
    onnx_model = load_model(str(exported), device="cpu", input_size=SIZE)
    torch_model = load_model("resnet18", weights="none", device="cpu", input_size=SIZE)
    return onnx_model, torch_model


def batch_of(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_same_predictions_as_the_torch_model(pair):
    onnx_model, torch_model = pair
    assert (onnx_model.num_classes, onnx_model.preprocess.crop_size) == (1000, SIZE)
    assert onnx_model.labels == LABELS  # from metadata_props "labels"
    assert onnx_model.model.declared_default_layer == "relu_16"  # the input of the pooling
    batch = batch_of(3)
    with torch.inference_mode():
        ours, theirs = onnx_model.model(batch), torch_model.model(batch)
    assert ours.shape == (3, 1000)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    assert float((ours - theirs).abs().max()) <= 1e-4 * float(theirs.abs().max())


@pytest.mark.parametrize(
    "method",
    [pytest.param(m, marks=pytest.mark.slow) if m in ("sscam", "iscam") else m
     for m in GRADIENT_FREE],
)  # fmt: skip
def test_gradient_free_methods_give_the_torch_models_maps(pair, method):
    """Each gradient-free method, on the ONNX graph and on the torch model (batch norms folded,
    channels-last, as camcli runs it): the same layer, classes and maps to 1e-4 of the peak."""
    onnx_model, torch_model = pair
    batch = batch_of(1, seed=3)
    ours = explain(onnx_model, batch, method=method, chunk_size=128, targets=["top1", "3"])
    theirs = explain(torch_model, batch, method=method, chunk_size=128, targets=["top1", "3"])
    assert ours.maps.shape == theirs.maps.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(ours.class_indices, theirs.class_indices)
    peak = float(np.abs(theirs.maps).max())
    assert float(np.abs(ours.maps - theirs.maps).max()) <= 1e-4 * max(peak, 1e-6)


def test_torch_module_names_name_the_same_tensors_of_the_export(pair):
    """``--layer layer3`` on the export: the tensor torch.onnx.export recorded as that module's
    last output (its name scopes), with the torch model's maps."""
    onnx_model, torch_model = pair
    assert onnx_model.model.layer_aliases["layer4"] == "relu_16"
    batch = batch_of(2, seed=5)
    ours = explain(onnx_model, batch, method="eigencam", layers=["layer3"])
    theirs = explain(torch_model, batch, method="eigencam", layers=["layer3"])
    assert ours.maps.shape == theirs.maps.shape == (2, 1, 4, 4)
    peak = float(np.abs(theirs.maps).max())
    assert float(np.abs(ours.maps - theirs.maps).max()) <= 1e-4 * peak


def test_gradient_methods_are_refused_in_one_line_naming_those_that_work(pair):
    onnx_model, _ = pair
    with pytest.raises(UsageError) as caught:
        explain(onnx_model, batch_of(1), method="gradcam")
    assert str(caught.value) == (
        f"gradcam needs gradients, which {onnx_model.name} does not give (ONNX Runtime has no "
        f"autograd); use one of: {', '.join([*GRADIENT_FREE, 'rise', 'occlusion'])}"
    )


def test_a_hook_that_replaces_a_tensor_runs_the_rest_of_the_graph_from_it(pair):
    """Ablation-CAM's substitution: the logits of the replaced feature map, whatever its batch,
    as the torch model's head gives them."""
    onnx_model, torch_model = pair
    features = torch.rand(5, 512, 2, 2, generator=torch.Generator().manual_seed(1))
    from camcli.hooks import substituted
    from camcli.layers import resolve_layer

    tap = resolve_layer(onnx_model.model, "relu_16")
    with substituted(tap, features, (SIZE, SIZE)), torch.inference_mode():
        logits = onnx_model.model(batch_of(1))
    with torch.inference_mode():
        expected = torch_model.model.fc(features.mean(dim=(2, 3)))
    assert logits.shape == (5, 1000)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert not tap._forward_hooks  # removed


def nhwc_model(path: Path, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed (1, 32, 32, 3) NHWC graph: transpose, 3x3 conv, ReLU, global pooling, and a
    ``Gemm`` or ``MatMul`` + ``Add`` head; returns its weights (conv w, conv b, head w (K, C),
    head b)."""
    rng = np.random.default_rng(0)
    conv_w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    conv_b = rng.normal(size=8).astype(np.float32)
    head_w = rng.normal(size=(8, 5)).astype(np.float32)  # Gemm without transB: (C, K)
    head_b = rng.normal(size=5).astype(np.float32)
    init = [oh.make_tensor(n, TensorProto.FLOAT, a.shape, a.flatten().tolist()) for n, a in
            (("cw", conv_w), ("cb", conv_b), ("hw", head_w), ("hb", head_b))]  # fmt: skip
    nodes = [
        oh.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
        oh.make_node("Conv", ["nchw", "cw", "cb"], ["conv"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["conv"], ["features"]),
        oh.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        oh.make_node("Flatten", ["pooled"], ["flat"]),
    ]
    if head == "gemm":
        nodes.append(oh.make_node("Gemm", ["flat", "hw", "hb"], ["scores"]))
    else:
        nodes.append(oh.make_node("MatMul", ["flat", "hw"], ["product"]))
        nodes.append(oh.make_node("Add", ["product", "hb"], ["scores"]))
    graph = oh.make_graph(
        nodes, "nhwc",
        [oh.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 32, 32, 3])],
        [oh.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 5])],
        init,
    )  # fmt: skip
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    oh.set_model_props(model, {"names": "{0: 'a', 1: 'b', 2: 'c', 3: 'd', 4: 'e'}"})
    onnx.save(model, str(path))
    return conv_w, conv_b, head_w.T, head_b


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_nhwc_fixed_size_and_batch_of_one_cam_from_the_linear_head(tmp_path, head):
    path = tmp_path / "nhwc.onnx"
    conv_w, conv_b, head_w, head_b = nhwc_model(path, head)
    loaded = load_model(str(path), device="cpu")
    assert loaded.preprocess.crop_size == 32  # the graph's fixed size
    assert loaded.labels == ["a", "b", "c", "d", "e"]  # metadata "names", Ultralytics' form
    batch = batch_of(3)[:, :, :32, :32].contiguous()
    features = torch.relu(
        torch.nn.functional.conv2d(batch, torch.from_numpy(conv_w), torch.from_numpy(conv_b),
                                   padding=1)
    )  # fmt: skip
    expected = features.mean(dim=(2, 3)) @ torch.from_numpy(head_w).T + torch.from_numpy(head_b)
    with torch.inference_mode():
        logits = loaded.model(batch)  # three images through a batch-of-1 graph
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    result = explain(loaded, batch, method="cam", targets=["top1"])
    top = expected.argmax(1)
    cam = torch.einsum("nc,nchw->nhw", torch.from_numpy(head_w)[top], features)
    np.testing.assert_allclose(result.maps[:, 0], cam.numpy(), atol=1e-4 * float(cam.abs().max()))
    with pytest.raises(UsageError, match=r"^--input-size 64: .*nhwc.onnx takes 32 px inputs only"):
        load_model(str(path), device="cpu", input_size=64)


def test_layers_lists_the_graphs_tensors_and_marks_the_default(exported):
    result = runner.invoke(app, ["layers", str(exported), "--input-size", str(SIZE), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert [name for name, row in rows.items() if row["default"]] == ["relu_16"]
    assert rows["relu_16"]["shape"] == [1, 512, 2, 2] and rows["relu_16"]["type"] == "Relu"
    assert rows["relu"]["shape"] == [1, 64, 32, 32] and rows["relu"]["grid"] == [32, 32]
    assert rows["mean"]["type"] == "ReduceMean"
    assert sum(row["type"] == "Conv" for row in rows.values()) == 20


def test_cli_run_writes_overlays_and_manifest_and_resumes(exported, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(2):
        random_image(images / f"im{seed}.png", seed=seed)
    out = tmp_path / "out"
    args = ["run", str(images), "-m", str(exported), "--method", "cam", "-o", str(out),
            "-f", "jpg", "-f", "npy", "--input-size", str(SIZE), "--device", "cpu",
            "--normalize", "inception"]  # fmt: skip
    done = camcli_cli(*args, env={})
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[0]["layer"] == "relu_16" and records[0]["label"].startswith("class")
    settings = records[0]["settings"]
    assert settings["model_file"]["path"] == str(exported)
    assert settings["model_file"]["size"] == exported.stat().st_size
    assert (settings["mean"], settings["std"]) == ([0.5] * 3, [0.5] * 3)
    for record in records:
        assert all(Path(p).is_file() for p in record["outputs"])
        assert np.isfinite(np.load(record["outputs"][1])).all()
    again = runner.invoke(app, [*args, "--skip-existing", "--json"])
    assert again.exit_code == 0, again.output
    assert all(json.loads(line).get("skipped") for line in again.stdout.splitlines())

    refused = runner.invoke(app, [*args[:4], "--method", "gradcam", "-o", str(tmp_path / "g")])
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines() == [
        f"error: gradcam needs gradients, which {exported} does not give (ONNX Runtime has no "
        f"autograd); use one of: {', '.join([*GRADIENT_FREE, 'rise', 'occlusion'])}"
    ]


def test_check_spec_and_evaluate_on_an_onnx_model(exported, pair, tmp_path):
    image = random_image(tmp_path / "img.png", size=(SIZE, SIZE), seed=4)
    onnx_model, _ = pair
    from camcli.explain import to_model_input
    from camcli.images import load_image, model_view

    view, _ = model_view(load_image(image), onnx_model.preprocess)
    with torch.inference_mode():
        top = int(onnx_model.model(to_model_input(view[None], onnx_model)).argmax())
    (tmp_path / "resnet18.onnx").symlink_to(exported)
    spec = tmp_path / "check.toml"
    spec.write_text(
        '[model]\nmodel = "resnet18.onnx"\nmethod = "eigencam"\ninput_size = 64\n'
        'device = "cpu"\n\n'
        f'[[case]]\nname = "top"\nimage = "img.png"\nexpect_class = "class{top}"\n'
    )
    checked = runner.invoke(app, ["check", str(spec), "--json"])
    assert checked.exit_code == 0, checked.output
    body = json.loads(checked.stdout)
    assert body["passed"] is True and body["model"]["layers"] == ["relu_16"]
    assert body["model"]["name"] == str(tmp_path / "resnet18.onnx")

    evaluated = runner.invoke(app, [
        "evaluate", str(image), "-m", str(exported), "--method", "eigencam", "--method", "cam",
        "--metric", "deletion", "--input-size", str(SIZE), "--device", "cpu", "--steps", "4",
        "--json",
    ])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    methods = json.loads(evaluated.stdout)["methods"]
    assert list(methods) == ["eigencam", "cam"]
    sanity = runner.invoke(app, ["evaluate", str(image), "-m", str(exported), "--method", "cam",
                                 "--metric", "sanity", "--input-size", str(SIZE)])  # fmt: skip
    assert sanity.exit_code == 2
    assert "the sanity metric re-initialises the weights" in sanity.output


# --- files camcli refuses: each one line naming the file and the reason ----------------------


def _tiny(path: Path, inputs, *, output=TensorProto.FLOAT, opset: int = 17) -> Path:
    name = inputs[0].name
    if output == TensorProto.FLOAT:
        nodes = [oh.make_node("GlobalAveragePool", [name], ["p"]),
                 oh.make_node("Flatten", ["p"], ["scores"])]  # fmt: skip
        out = oh.make_tensor_value_info("scores", output, ["N", 3])
    else:
        nodes = [oh.make_node("ArgMax", [name], ["scores"], axis=1)]
        out = oh.make_tensor_value_info("scores", output, ["N", 8, 8])
    graph = oh.make_graph(nodes, "g", inputs, [out])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)]), str(path))
    return path


def _image(name: str, shape: list) -> object:
    return oh.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def bad_file(kind: str, folder: Path, exported: Path) -> Path:
    path = folder / f"{kind}.onnx"
    x = _image("x", ["N", 3, 8, 8])
    if kind == "garbage":
        path.write_bytes(b"this is not an ONNX model\n" * 40)
    elif kind == "truncated":
        data = exported.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "external":
        onnx.save_model(onnx.load(str(exported)), str(path), save_as_external_data=True,
                        location="external.onnx.data", size_threshold=0)  # fmt: skip
        (folder / "external.onnx.data").unlink()
    elif kind == "opset":
        _tiny(path, [x], opset=99)
    elif kind == "two_inputs":
        _tiny(path, [x, _image("y", ["N", 3, 8, 8])])
    elif kind == "no_batch":
        _tiny(path, [_image("x", [3, 8, 8])])
    elif kind == "int_output":
        _tiny(path, [x], output=TensorProto.INT64)
    return path


REFUSALS = {
    "garbage": r"not a readable ONNX model \(malformed or truncated: .+\)",
    "truncated": r"not a readable ONNX model \(malformed or truncated: .+\)",
    "external": r"its weights are in an external data file, 'external.onnx.data', that is not "
    r"beside it \(expected .*external.onnx.data\)",
    "opset": r"uses opset 99, which ONNX Runtime [\d.]+ does not support \(it supports up to "
    r"\d+\); export with an older opset or upgrade onnxruntime",
    "two_inputs": re.escape(
        "has 2 inputs ('x' (N, 3, 8, 8), 'y' (N, 3, 8, 8)); camcli needs one image input "
        "(N, 3, H, W)"
    ),
    "no_batch": re.escape(
        "input 'x' (3, 8, 8) has no batch dimension; export it with one (N, 3, H, W)"
    ),
    "int_output": re.escape(
        "output 'scores' (N, 8, 8) is int64, not float class scores; camcli explains the "
        "scores (logits) of the first output"
    ),
}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_each_unusable_file_is_one_line_naming_it(kind, exported, tmp_path):
    path = bad_file(kind, tmp_path, exported)
    image = random_image(tmp_path / "img.png")
    result = runner.invoke(
        app, ["run", str(image), "-m", str(path), "--method", "eigencam", "-o",
              str(tmp_path / "out"), "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert re.fullmatch(f"error: {re.escape(str(path))}: {REFUSALS[kind]}", lines[0]), lines[0]


def test_a_refusal_from_the_real_cli(exported, tmp_path):
    path = bad_file("garbage", tmp_path, exported)
    done = camcli_cli("layers", str(path), env={})
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert re.fullmatch(f"error: {re.escape(str(path))}: {REFUSALS['garbage']}", line), line


def test_hugging_face_folder_with_a_pickled_bin_is_refused_in_one_line(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    model = transformers.ResNetForImageClassification(config)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    # A state dict with a Python object beside the tensors: what torch.save of a training
    # run's dict often holds.
    torch.save({**model.state_dict(), "saved_from": Path("/")}, tmp_path / "pytorch_model.bin")
    image = random_image(tmp_path / "img.png")
    out = tmp_path / "out"
    done = runner.invoke(app, ["run", str(image), "-m", f"hf:{tmp_path}", "-o", str(out)])
    assert done.exit_code == 2
    assert done.output.strip().splitlines() == [
        f"error: {tmp_path / 'pytorch_model.bin'}: holds pickled Python objects, not only "
        "tensors; camcli reads weights with weights_only=True for safety: save the model as "
        "safetensors (save_pretrained writes model.safetensors)"
    ]
    assert "weights_only=False" not in done.output and "weights_only` set" not in done.output


@pytest.mark.parametrize(
    "options",
    [
        {"method": "rise", "masks": 250, "seed": 2},
        {"method": "occlusion", "window": 16, "stride": 8},
    ],
    ids=["rise", "occlusion"],
)
def test_black_box_methods_give_the_torch_models_maps(pair, options):
    """The black-box methods need only forward passes: on the ONNX graph they give the torch
    model's maps (at the input size) to 1e-4 of the peak, from the same masks or windows."""
    onnx_model, torch_model = pair
    batch = batch_of(1, seed=4)
    ours = explain(onnx_model, batch, chunk_size=64, targets=["top1", "3"], **options)
    theirs = explain(torch_model, batch, chunk_size=64, targets=["top1", "3"], **options)
    assert ours.maps.shape == theirs.maps.shape == (1, 2, SIZE, SIZE)
    np.testing.assert_array_equal(ours.class_indices, theirs.class_indices)
    peak = float(np.abs(theirs.maps).max())
    assert peak > 0
    assert float(np.abs(ours.maps - theirs.maps).max()) <= 1e-4 * peak


@pytest.mark.parametrize("kind", ["dynamic", "nhwc-batch-1"])
def test_openvino_runs_an_onnx_files_forward_only_passes_with_the_same_maps(
    exported, tmp_path, kind, monkeypatch
):
    """``--runtime openvino`` on an ONNX file: RISE's masked inputs run on OpenVINO from the
    file itself (in its own layout, a row at a time where its batch is fixed at 1), and the
    maps are ONNX Runtime's to 1e-4 of their peak."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path / "cache"))
    if kind == "dynamic":
        loaded, size = load_model(str(exported), device="cpu", input_size=SIZE), SIZE
    else:
        path = tmp_path / "nhwc.onnx"
        nhwc_model(path, "gemm")
        loaded, size = load_model(str(path), device="cpu"), 32
    batch = batch_of(2, seed=5)[:, :, :size, :size].contiguous()
    options = {"method": "rise", "masks": 96, "chunk_size": 32, "targets": ("top1",)}
    plain = Explainer(loaded, ExplainSpec(runtime="torch", **options))
    on_openvino = Explainer(loaded, ExplainSpec(runtime="openvino", **options))
    offload = on_openvino.use_runtime(2, images=2)
    assert offload.runtime == "openvino" and offload.scores is not None
    assert "ONNX file" in offload.settings()["runtime_reason"]
    targets = parse_targets(["top1"], None, loaded.labels, loaded.num_classes)
    theirs = plain.explain(batch, targets).maps
    ours = on_openvino.explain(batch, targets).maps
    peak = float(np.abs(theirs).max())
    assert peak > 0
    assert float(np.abs(ours - theirs).max()) <= 1e-4 * peak
    # Auto leaves an ONNX file on ONNX Runtime, and says why.
    auto = Explainer(loaded, ExplainSpec(runtime="auto", **options)).use_runtime(2, images=2)
    assert auto.runtime == "torch" and "ONNX file" in auto.reason
