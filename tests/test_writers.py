"""writers: one JSON line per record, atomic writes that follow the umask, output names."""

import json
import math
import os
import re
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image
from typer.testing import CliRunner

import camcli
from camcli.cli import app
from camcli.machine_output import json_line, json_text
from camcli.writers import output_path, write_atomic
from conftest import tiny_args


@pytest.mark.parametrize(
    "name",
    [
        os.fsdecode(b"caf\xe9.jpg"),  # Latin-1 bytes: not UTF-8, kept as lone surrogates
        "caf\u00e9 \u732b.jpg",
        "line\u2028break\x85.jpg",
        'quote" back\\slash\nnew.jpg',
    ],
)
def test_json_line_is_one_line_of_utf8_that_loads_back_the_same(name):
    record = {"input": name, "score": 0.5, "outputs": [name]}
    line = json_line(record)
    assert len(line.splitlines()) == 1
    data = line.encode("utf-8")  # raises for a lone surrogate left in the text
    assert json.loads(data) == record
    if name.isprintable():
        assert name in line  # readable UTF-8 text, not \\u escapes


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_line_refuses_non_finite_numbers(bad):
    with pytest.raises(ValueError):
        json_line({"score": bad})
    with pytest.raises(ValueError):
        json_text({"metrics": {"auc": [0.5, bad]}}, indent=2)


def test_json_is_written_in_one_place():
    # json_text refuses NaN and inf: any other json.dump would print them as NaN tokens.
    package = Path(camcli.__file__).parent
    writers = [
        path.relative_to(package).as_posix()
        for path in sorted(package.rglob("*.py"))
        if re.search(r"\bjson\.dumps?\(", path.read_text(encoding="utf-8"))
    ]
    assert writers == ["machine_output.py"]


# -- output names -------------------------------------------------------------------------------


def test_output_names_carry_the_chosen_layers_and_stay_short():
    out, rel = Path("/o"), PurePosixPath("a/x.jpg")
    assert output_path(out, rel, "gradcam", "top1", "png") == Path("/o/a/x.jpg.gradcam.top1.png")
    named = output_path(out, rel, "gradcam", "top1", "jpg", "layer3")
    assert named == Path("/o/a/x.jpg.gradcam.layer3.top1.jpg")
    assert output_path(out, rel, "cam", "class2", "npy", "features.28+layer4/x").name == (
        "x.jpg.cam.features.28+layer4_x.class2.npy"
    )
    long = "+".join(f"encoder.layers.encoder_layer_{i}.ln_1" for i in range(12))
    name = output_path(out, rel, "gradcam", "top1", "jpg", long).name
    assert len(name) < 100 and name != output_path(out, rel, "gradcam", "top1", "jpg", long[:-1])


# -- atomic writes ------------------------------------------------------------------------------


def test_write_atomic_uses_the_temp_folder_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    temp = tmp_path / ".tmp"
    temp.mkdir()
    target = tmp_path / "sub" / "x.npy"
    write_atomic(target, b"data", temp)
    assert target.read_bytes() == b"data" and list(temp.iterdir()) == []

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "sub" / "y.npy", b"data", temp)
    assert list(temp.iterdir()) == [] and not (tmp_path / "sub" / "y.npy").exists()


# -- names that are not UTF-8, through the CLI ------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_recorded_and_printed(tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1: not valid UTF-8
    Image.new("RGB", (40, 30), "red").save(os.fsdecode(raw), format="PNG")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(folder), "--out", str(out), "--json",
                                      *map(str, tiny_args(tiny_checkpoint))])  # fmt: skip
    assert result.exit_code == 0, result.output
    [printed] = [json.loads(line) for line in result.stdout.splitlines()]
    [recorded] = [json.loads(line) for line in (out / "manifest.jsonl").read_bytes().splitlines()]
    assert printed == recorded
    assert recorded["input"] == os.fsdecode(raw) and recorded["status"] == "ok"
    assert os.path.exists(os.fsencode(recorded["outputs"][0]))


# -- the output folder is never an input ------------------------------------------------------


def test_running_twice_on_the_current_folder_explains_the_same_inputs(
    tiny_checkpoint, shapes_dir, monkeypatch
):
    folder, _ = shapes_dir
    monkeypatch.chdir(folder)  # the default --out, camcli-out, is inside "."
    runs = []
    for _ in range(2):
        result = CliRunner().invoke(app, ["run", ".", "--json",
                                          *map(str, tiny_args(tiny_checkpoint))])  # fmt: skip
        assert result.exit_code == 0, result.output
        runs.append(sorted(json.loads(line)["input"] for line in result.stdout.splitlines()))
    assert runs[0] == runs[1] and len(runs[0]) == 12
    assert not any(path.startswith("camcli-out") for path in runs[1])
