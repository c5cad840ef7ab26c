"""Stopping a run early (SIGINT, SIGTERM, a second Ctrl-C, a failing --json consumer): every
file on disk has its manifest record, no temp file stays, and --skip-existing resumes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import synthetic
from camcli.cli import app
from camcli.config import RunConfig
from camcli.engines.local import Pipeline
from camcli.explain import Explainer
from camcli.models import load_model
from camcli.outfolder import MANIFEST
from camcli.signals import Interrupted, interrupts_deferred
from camcli.sources import collect_sources
from camcli.targets import Target
from conftest import ROOT, tiny_args


@pytest.fixture
def forty(tmp_path: Path) -> Path:
    images, _, _ = synthetic.dataset(40, seed=7)
    folder = tmp_path / "forty"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    return folder


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_bytes().splitlines()]


def outputs_on_disk(out: Path) -> set[str]:
    return {str(p) for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".npy")}


def check_every_output_has_its_record(out: Path) -> list[dict]:
    records = manifest(out)
    assert all(r["status"] == "ok" for r in records)
    assert all(r["class_index"] is not None and r["score"] is not None for r in records)
    assert {o for r in records for o in r["outputs"]} == outputs_on_disk(out)
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    return records


@pytest.mark.parametrize(("signals", "code"), [((signal.SIGTERM,), 143),
                                               ((signal.SIGINT, signal.SIGINT), 130)])  # fmt: skip
def test_a_signal_mid_run_keeps_every_record_and_a_resume_rewrites_nothing(
    signals, code, tiny_checkpoint, forty, tmp_path
):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camcli", "run", str(forty), "--out", str(out), "--json",
               "--batch-size", "1", "--method", "scorecam", "--chunk-size", "1",
               "-f", "jpg", "-f", "npy", *map(str, tiny_args(tiny_checkpoint))]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          cwd=ROOT, text=True) as process:  # fmt: skip
        first = process.stdout.readline()  # the first record: the run is under way
        assert json.loads(first)["status"] == "ok"
        for signum in signals:  # a second one lands while the first is being handled
            process.send_signal(signum)
        rest, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        "interrupted: finished outputs and manifest.jsonl are kept; rerun with --skip-existing "
        "to resume"
    ]
    records = check_every_output_has_its_record(out)
    assert 0 < len(records) < 40, "the run was meant to be stopped half way"
    printed = [json.loads(line) for line in (first + rest).splitlines()]
    assert printed == records[: len(printed)]

    before = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in outputs_on_disk(out)}
    result = CliRunner().invoke(app, ["run", str(forty), "--out", str(out), "--skip-existing",
                                      "--method", "scorecam", "-f", "jpg", "-f", "npy",
                                      *map(str, tiny_args(tiny_checkpoint))])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in before} == before
    resumed = check_every_output_has_its_record(out)
    assert len(resumed) == 40
    kept = {r["input"]: r for r in records}
    for record in resumed:
        if record["input"] in kept:
            assert record["skipped"]
            for field in ("class_index", "label", "score", "outputs"):
                assert record[field] == kept[record["input"]][field]


@pytest.fixture
def tiny_explainer(tiny_checkpoint) -> Explainer:
    loaded = load_model(str(tiny_checkpoint["model"]), weights="none", device="cpu",
                        checkpoint=tiny_checkpoint["checkpoint"], input_size=64, fit="stretch",
                        labels=tiny_checkpoint["labels"], progress=False)  # fmt: skip
    return Explainer(loaded, method="gradcam")


def test_a_failing_record_consumer_stops_the_run_with_every_record_written(
    tiny_explainer, forty, tmp_path
):
    out = tmp_path / "out"
    seen = []

    def head_closed(record):  # `camcli run --json | head -3`
        if len(seen) == 3:
            raise BrokenPipeError(32, "Broken pipe")
        seen.append(record)

    config = RunConfig(out=out, formats=("jpg", "npy"), batch_size=4, workers=2)
    pipeline = Pipeline(tiny_explainer, [Target(rank=1)], config, on_record=head_closed)
    with pytest.raises(BrokenPipeError):
        pipeline.run(collect_sources([str(forty)]))
    records = check_every_output_has_its_record(out)
    assert 3 < len(records) < 40
    assert records[:3] == seen


def test_an_image_the_explainer_flags_is_an_error_and_a_blank_map_a_warning(
    tiny_explainer, forty, tmp_path, monkeypatch
):
    real = tiny_explainer.explain

    def flagged(batch, targets):
        result = real(batch, targets)
        result.problems = ["the model's output is not finite (NaN)", None]
        result.blank = [[None], ["the map is zero everywhere"]]
        return result

    monkeypatch.setattr(tiny_explainer, "explain", flagged)
    config = RunConfig(out=tmp_path / "out", formats=("npy",), batch_size=2, workers=1)
    pipeline = Pipeline(tiny_explainer, [Target(rank=1)], config)
    sources = collect_sources([str(forty / "img00.png"), str(forty / "img01.png")])
    summary = pipeline.run(sources)
    assert summary.ok == 1 and len(summary.failed) == 1
    bad, blank = manifest(tmp_path / "out")
    assert bad["status"] == "error" and bad["outputs"] == []
    assert bad["error"] == f"{forty / 'img00.png'}: the model's output is not finite (NaN)"
    assert blank["status"] == "ok" and blank["warning"] == "the map is zero everywhere"
    assert [Path(p).name for p in blank["outputs"]] == ["img01.png.gradcam.top1.npy"]
    assert np.load(blank["outputs"][0]).shape == (16, 16)
    assert not (tmp_path / "out" / "img00.png.gradcam.top1.npy").exists()


def test_the_signal_handlers_are_the_processes_own_again_after_a_run(tiny_explainer, forty,
                                                                      tmp_path):  # fmt: skip
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    config = RunConfig(out=tmp_path / "out", formats=("npy",), batch_size=8, workers=1)
    Pipeline(tiny_explainer, [Target(rank=1)], config).run(collect_sources([str(forty)]))
    assert {s: signal.getsignal(s) for s in before} == before


def test_deferred_interrupts_are_noted_then_raised_where_the_caller_chooses():
    """The Ray engine's loop: a signal inside is only noted (a second one ignored), ``check``
    raises it as ``Interrupted`` with 128 + its number, and the handlers come back after."""
    before = signal.getsignal(signal.SIGINT)
    with interrupts_deferred() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # ignored: the first one decides
        for _ in range(100):  # Python runs handlers between bytecodes
            if stop.signum is not None:
                break
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(Interrupted) as caught:
        stop.check()
    assert caught.value.exit_code == 143
    with interrupts_deferred() as calm:
        pass
    calm.check()  # no signal: nothing raised
