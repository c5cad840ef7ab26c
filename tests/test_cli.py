"""End-to-end: the real Typer app in-process (CliRunner) and as a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camcli.engines.batch
from camcli.cli import app
from conftest import ROOT, random_image, tiny_args

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".")]


def test_every_command_has_help():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "layers", "models", "methods"):
        assert command in result.output
        sub = invoke(command, "--help")
        assert sub.exit_code == 0 and "Usage" in sub.output, command
        command_obj = next(c for c in app.registered_commands if c.callback.__name__ == command)
        assert command_obj.callback.__doc__, command


@pytest.mark.parametrize(("command", "option"), [("run", "--out"), ("check", "--update-baselines")])
def test_help_does_not_import_torch(command, option):
    code = (
        "import sys\nfrom camcli.cli import app\n"
        f"try:\n    app(['{command}', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('clean')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert option in result.stdout and result.stdout.strip().endswith("clean")


def test_run_mirrors_the_tree_and_writes_overlays_npy_and_manifest(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, boxes = shapes_dir
    out = tmp_path / "out"
    result = invoke(
        "run", folder, "--out", out, "-f", "png", "-f", "npy", *tiny_args(tiny_checkpoint)
    )
    assert result.exit_code == 0, result.output
    records = manifest(out)
    assert len(records) == 12
    assert {r["status"] for r in records} == {"ok"}
    first = records[0]
    assert first["input"] == str(folder / "a" / "img01.png")
    assert first["outputs"] == [
        str(out / "a" / "img01.png.gradcam.top1.png"),
        str(out / "a" / "img01.png.gradcam.top1.npy"),
    ]
    assert first["method"] == "gradcam" and first["layer"] == "features"
    assert first["label"] in ("red", "green", "blue") and 0 < first["score"] <= 1
    assert first["class_index"] == ["red", "green", "blue"].index(first["label"])
    hits = 0
    for record in records:
        index = int(Path(record["input"]).stem[3:])
        png, npy = (Path(p) for p in record["outputs"])
        assert Image.open(png).size == (64, 64)
        cam = np.load(npy, allow_pickle=False)
        assert cam.dtype == np.float32 and cam.shape == (16, 16) and cam.min() >= 0
        y, x = np.unravel_index(cam.argmax(), cam.shape)
        x0, y0, x1, y1 = boxes[index]
        hits += x0 <= (x + 0.5) * 4 <= x1 and y0 <= (y + 0.5) * 4 <= y1
    assert hits >= 11
    assert not leftovers(out)


def test_npy_is_exactly_the_engine_map(tiny_checkpoint, tiny_model, shapes_dir, tmp_path):
    from camcli.explain import Explainer, to_model_input
    from camcli.images import load_image, model_view
    from camcli.models import load_model
    from camcli.targets import Target

    folder, _ = shapes_dir
    image = folder / "b" / "img00.png"
    out = tmp_path / "out"
    result = invoke(
        "run", image, "--out", out, "-f", "npy", "--method", "cam", *tiny_args(tiny_checkpoint)
    )
    assert result.exit_code == 0, result.output
    saved = np.load(out / "img00.png.cam.top1.npy")
    loaded = load_model(
        tiny_checkpoint["model"], checkpoint=tiny_checkpoint["checkpoint"], input_size=64,
        fit="stretch", device="cpu",
    )  # fmt: skip
    view, _ = model_view(load_image(image), loaded.preprocess)
    batch = to_model_input(view[None], loaded)
    expected = Explainer(loaded, "cam").explain(batch, [Target(rank=1)]).maps[0, 0]
    np.testing.assert_allclose(saved, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    features = tiny_model.features(batch)
    cls = int(tiny_model(batch).argmax())
    formula = torch.einsum("c,chw->hw", tiny_model.fc.weight[cls], features[0]).detach().numpy()
    np.testing.assert_allclose(saved, formula, rtol=1e-5, atol=1e-5)


def test_json_lines_match_the_manifest_and_stdout_stays_clean(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    result = invoke(
        "run", folder / "a", "--out", out, "--json", "--top-k", "2", *tiny_args(tiny_checkpoint)
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == manifest(out)
    assert len(lines) == 12  # 6 images x 2 targets
    assert [r["target"] for r in lines[:2]] == ["top1", "top2"]
    assert lines[0]["score"] >= lines[1]["score"]
    assert Path(lines[1]["outputs"][0]).name == "img01.png.gradcam.top2.jpg"


def test_a_folder_with_broken_files_reports_each_and_keeps_going(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    (folder / "a" / "empty.jpg").write_bytes(b"")
    (folder / "a" / "text.png").write_text("hello")
    good = (folder / "b" / "img00.png").read_bytes()
    (folder / "b" / "cut.png").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    result = invoke("run", folder, "--out", out, *tiny_args(tiny_checkpoint))
    assert result.exit_code == 1
    stderr = result.stderr
    assert f"error: {folder / 'a' / 'empty.jpg'}: empty file" in stderr
    assert f"error: {folder / 'a' / 'text.png'}: not an image" in stderr
    assert f"error: {folder / 'b' / 'cut.png'}: " in stderr
    assert "12 of 15 images explained, 3 failed; outputs and manifest.jsonl in" in stderr
    assert "inputs failed" not in stderr  # the table is for a terminal only
    assert "Traceback" not in result.output
    records = manifest(out)
    assert len(records) == 15
    errors = [r for r in records if r["status"] == "error"]
    assert sorted(Path(r["input"]).name for r in errors) == ["cut.png", "empty.jpg", "text.png"]
    assert all(r["outputs"] == [] and r["error"] for r in errors)
    assert len(list(out.rglob("*.jpg"))) == 12
    assert not leftovers(out)


def test_same_stem_different_extension_do_not_collide(tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    random_image(folder / "x.jpg", seed=1)
    random_image(folder / "x.png", seed=2)
    out = tmp_path / "out"
    result = invoke(
        "run", folder, "--out", out, "-t", "red", "-t", "top1", *tiny_args(tiny_checkpoint)
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("*.jpg"))
    assert names == [
        "x.jpg.gradcam.class0.jpg", "x.jpg.gradcam.top1.jpg",
        "x.png.gradcam.class0.jpg", "x.png.gradcam.top1.jpg",
    ]  # fmt: skip


def test_skip_existing_resumes_and_keeps_earlier_records(tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    assert invoke("run", folder, "--out", out, *tiny_args(tiny_checkpoint)).exit_code == 0
    first = manifest(out)
    victim = Path(first[3]["outputs"][0])
    victim.unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    result = invoke("run", folder, "--out", out, "--skip-existing", *tiny_args(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    assert "11 skipped as existing" in result.stderr
    assert victim.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    second = manifest(out)
    assert [r["score"] for r in second] == [r["score"] for r in first]
    assert sum(bool(r.get("skipped")) for r in second) == 11


def test_interrupted_run_leaves_no_partial_file_and_resumes(
    tiny_checkpoint, shapes_dir, tmp_path, monkeypatch
):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    real = camcli.engines.batch.write_atomic
    calls = []

    def flaky(path, data, *args, **kwargs):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(path, data, *args, **kwargs)

    monkeypatch.setattr(camcli.engines.batch, "write_atomic", flaky)
    result = invoke("run", folder, "--out", out, "--batch-size", "2", *tiny_args(tiny_checkpoint))
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert not leftovers(out)
    written = list(out.rglob("*.jpg"))
    assert 0 < len(written) < 12
    assert all(Image.open(p).size == (64, 64) for p in written)  # every file that exists is whole
    assert all(r["status"] == "ok" for r in manifest(out))
    monkeypatch.setattr(camcli.engines.batch, "write_atomic", real)
    result = invoke("run", folder, "--out", out, "--skip-existing", *tiny_args(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    assert len(list(out.rglob("*.jpg"))) == 12 and len(manifest(out)) == 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet5O"], "unknown model 'resnet5O'; did you mean resnet50"),
        (["--model", "resnet18", "--weights", "v9"], "unknown weights 'v9' for resnet18"),
        (
            ["--model", "resnet18", "--weights", "none", "--layer", "layer5"],
            "unknown layer 'layer5'; close matches: layer4",
        ),
        (
            ["--model", "resnet18", "--weights", "none", "--target", "tabbby"],
            "unknown class name 'tabbby'; did you mean",
        ),
        (
            ["--model", "vgg11", "--weights", "none", "--method", "cam", "--input-size", "64"],
            "use --method gradcam",
        ),
        (
            ["--model", "resnet18", "--weights", "none", "--method", "gradcm"],
            "unknown method 'gradcm'; did you mean gradcam",
        ),
        (
            ["--model", "resnet18", "--weights", "none", "--colormap", "rainbowish"],
            "unknown colormap 'rainbowish'",
        ),
        (
            ["--model", "resnet18", "--weights", "none", "--device", "cuda:7"],
            "device 'cuda:7' requested",
        ),
        (  # the feature map shrinks below a pooling window (an internal error before)
            ["--model", "alexnet", "--weights", "none", "--input-size", "16"],
            "16 px is too small an input for alexnet (Given input size: (192x1x1)",
        ),
        (  # SSD300's extra layers need 300 px (an internal error before)
            ["--model", "ssd300_vgg16", "--weights", "none", "--input-size", "64"],
            "64 px is too small an input for ssd300_vgg16 (Calculated padded input size",
        ),
    ],
)
def test_setup_errors_exit_2_with_one_line_and_write_nothing(args, message, tmp_path):
    image = random_image(tmp_path / "img.png")
    out = tmp_path / "out"
    result = invoke("run", image, "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_layers_names_an_input_too_small_for_the_model():
    result = invoke("layers", "ssd300_vgg16", "--input-size", "64")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: 64 px is too small an input for ssd300_vgg16 (")
    assert "use a larger --input-size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_checkpoints_exit_2(tmp_path):  # a missing input: tests/test_hostile.py
    image = random_image(tmp_path / "img.png")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Evil()}, evil)
    result = invoke("run", image, "--model", "resnet18", "--checkpoint", evil)
    assert result.exit_code == 2
    assert "weights_only=True" in result.stderr and "pwned" not in result.output

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    result = invoke("run", image, "--model", "resnet18", "--checkpoint", garbage)
    assert result.exit_code == 2 and f"{garbage}: cannot read checkpoint" in result.stderr


def test_imagenet_labels_are_used_with_weights_none(tmp_path):
    image = random_image(tmp_path / "img.png")
    out = tmp_path / "out"
    result = invoke(
        "run", image, "--out", out, "--model", "resnet18", "--weights", "none",
        "--input-size", "64", "--target", "Tabby", "--json", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["class_index"] == 281 and record["label"] == "tabby"
    assert Path(record["outputs"][0]).name == "img.png.gradcam.class281.jpg"


def test_listing_commands():
    methods = invoke("methods", "--json")
    rows = [json.loads(line) for line in methods.stdout.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["gradcam"]["needs_grad"] is True and by_name["cam"]["needs_grad"] is False
    models = invoke("models", "resnet*")
    assert models.exit_code == 0 and "resnet50" in models.stdout.split()
    assert "vgg11" not in models.stdout
    assert invoke("models", "nothing-like-this").exit_code == 1
    layers = invoke("layers", "resnet18", "--json", "--input-size", "64")
    rows = [json.loads(line) for line in layers.stdout.splitlines()]
    default = [r for r in rows if r["default"]]
    assert [r["name"] for r in default] == ["layer4"]
    assert default[0]["shape"] == [1, 512, 2, 2]
    assert invoke("layers", "nonet").exit_code == 2


def test_subprocess_with_stdin_list_and_exit_codes(tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    listed = [folder / "a" / "img01.png", tmp_path / "missing.png", folder / "b" / "img02.png"]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camcli", "run", "-", "--out", str(out), "--quiet"]
    result = subprocess.run(
        command + [str(a) for a in tiny_args(tiny_checkpoint)],
        input="\n".join(map(str, listed)) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert f"error: {tmp_path / 'missing.png'}: no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert "leaked" not in result.stderr  # nothing left frozen for extension modules to report
    assert sorted(p.name for p in out.glob("*.jpg")) == [
        "img01.png.gradcam.top1.jpg",
        "img02.png.gradcam.top1.jpg",
    ]


def test_safetensors_and_wrapped_data_parallel_checkpoints(
    tiny_checkpoint, tiny_model, shapes_dir, tmp_path
):
    from safetensors.torch import save_file

    folder, _ = shapes_dir
    image = folder / "a" / "img01.png"
    state = tiny_model.state_dict()
    save_file(state, tmp_path / "tiny.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "dp.pth")
    outputs = []
    for name in ("tiny.safetensors", "dp.pth"):
        args = tiny_args({**tiny_checkpoint, "checkpoint": tmp_path / name})
        out = tmp_path / name.replace(".", "_")
        result = invoke("run", image, "--out", out, "-f", "npy", *args)
        assert result.exit_code == 0, result.output
        outputs.append(np.load(out / "img01.png.gradcam.top1.npy"))
    baseline = tmp_path / "base"
    assert (
        invoke("run", image, "--out", baseline, "-f", "npy", *tiny_args(tiny_checkpoint)).exit_code
        == 0
    )
    expected = np.load(baseline / "img01.png.gradcam.top1.npy")
    for got in outputs:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_main_pauses_garbage_collection_for_start_up_only(
    tiny_checkpoint, shapes_dir, tmp_path, monkeypatch
):
    import gc

    from camcli.cli import main

    folder, _ = shapes_dir
    seen = []
    import camcli.run

    real = camcli.run.Pipeline

    def spy(*args, **kwargs):  # the images are processed with the collector running
        seen.append((gc.isenabled(), gc.get_freeze_count() > 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(camcli.run, "Pipeline", spy)
    argv = ["camcli", "run", str(folder / "a"), "--out", str(tmp_path / "out"), "-q"]
    monkeypatch.setattr(sys, "argv", argv + [str(a) for a in tiny_args(tiny_checkpoint)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    assert seen == [(True, True)]
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_max_pixels_makes_a_large_image_that_files_error_and_0_lifts_the_limit(
    tiny_checkpoint, shapes_dir, tmp_path
):
    from camcli.images import DEFAULT_MAX_PIXELS

    folder, _ = shapes_dir
    image = folder / "a" / "img01.png"  # 64 x 64 = 4096 pixels
    args = ["run", image, "-f", "npy", *tiny_args(tiny_checkpoint)]
    result = invoke(*args, "--out", tmp_path / "small", "--max-pixels", "4095")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {image}: 64 x 64 = 4,096 px is over the")
    assert manifest(tmp_path / "small")[0]["status"] == "error"
    for limit in ("4096", "0"):
        result = invoke(*args, "--out", tmp_path / limit, "--max-pixels", limit)
        assert result.exit_code == 0, result.output
        assert (tmp_path / limit / "img01.png.gradcam.top1.npy").is_file()
    assert invoke(*args, "--max-pixels", "-1").exit_code == 2
    help_text = " ".join(invoke("run", "--help").stdout.split())
    assert f"Default: {DEFAULT_MAX_PIXELS} (100 megapixels)" in help_text


def test_an_unexpected_exception_is_one_line_and_exit_2_with_the_traceback_on_request(
    tmp_path, monkeypatch
):
    import camcli.run

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(camcli.run, "collect_sources", broken)
    image = random_image(tmp_path / "img.png")
    result = invoke("run", image, "--out", tmp_path / "out", "--weights", "none")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: internal error: ValueError: boom (set CAMCLI_DEBUG=1 for the traceback)\n"
    )
    monkeypatch.setenv("CAMCLI_DEBUG", "1")
    result = invoke("run", image, "--out", tmp_path / "out", "--weights", "none")
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert 'raise ValueError("boom")' in result.stderr
    assert result.stderr.endswith("error: internal error: ValueError: boom (set CAMCLI_DEBUG=1 "
                                  "for the traceback)\n")  # fmt: skip


def test_error_messages_are_one_line_of_text_not_markup(tmp_path, monkeypatch):
    import camcli.run
    from camcli.errors import UsageError

    missing = tmp_path / "nope[/].jpg"  # rich would read "[/]" as a closing tag
    result = invoke("run", missing, "--out", tmp_path / "out", "--weights", "none")
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing}: no file matches this pattern\n"

    def two_lines(*args, **kwargs):
        raise UsageError("first part\nsecond part [bold]")

    monkeypatch.setattr(camcli.run, "collect_sources", two_lines)
    result = invoke("run", missing, "--out", tmp_path / "out", "--weights", "none")
    assert result.exit_code == 2
    assert result.stderr == "error: first part second part [bold]\n"
