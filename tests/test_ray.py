"""--engine ray: the Ray Data engine gives what a local run gives; ExplainBatch for pipelines.

The read task and the actor are plain Python, so the first tests drive them directly, without
Ray, the way Ray Data calls them (numpy batches), and compare with a local run. The tests
marked ``slow`` start a real local Ray instance (2 CPUs; tens of seconds on a loaded machine)
and need the ``ray`` extra: ``pytest -m slow tests/test_ray.py``.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from camcli.api import explain_images
from camcli.cli import app
from camcli.config import ExplainSpec, ModelSpec, RunConfig
from camcli.engines.batch import RUNTIME_KEYS, BatchWork, run_settings
from camcli.engines.ray import (
    INSTALL,
    ActorSetup,
    ExplainBatch,
    RayOptions,
    _ExplainActor,
    _item,
    _read_batch,
)
from camcli.explain import Explainer, parse_targets
from camcli.models import load_model
from camcli.outfolder import OutputFolder
from camcli.run import run_images
from camcli.sources import Source, collect_sources
from conftest import ROOT, tiny_args

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def model_spec(ckpt: dict) -> ModelSpec:
    """The tiny synthetic model as a ModelSpec (``tiny_args`` on the CLI)."""
    return ModelSpec(model=str(ckpt["model"]), weights="DEFAULT", checkpoint=ckpt["checkpoint"],
                     num_classes=None, labels=ckpt["labels"], device="cpu", input_size=64,
                     fit="stretch")  # fmt: skip


def with_bad_file(folder: Path) -> Path:
    (folder / "a" / "broken.png").write_bytes(b"not a png at all")
    return folder / "a" / "broken.png"


def comparable(record: dict, out: Path) -> dict:
    """A record without its output folder (the runs write into different ones)."""
    kept = {k: v for k, v in record.items() if k != "outputs"}
    # Where the passes ran, and auto's timed reason, may differ between two runs (the maps
    # do not: --skip-existing ignores them too).
    kept["settings"] = {k: v for k, v in record["settings"].items() if k not in RUNTIME_KEYS}
    kept["outputs"] = [str(Path(o).relative_to(out)) for o in record["outputs"]]
    kept["score"] = None if record["score"] is None else round(record["score"], 4)
    return kept


def assert_same_run(local: Path, other: Path) -> None:
    """Same records (by input and target) and the same .npy maps to 1e-5, same file names."""
    mine = {(r["input"], r["target"]): comparable(r, local) for r in records(local)}
    theirs = {(r["input"], r["target"]): comparable(r, other) for r in records(other)}
    assert theirs == mine
    local_maps = sorted(p.relative_to(local) for p in local.rglob("*.npy"))
    assert local_maps and sorted(p.relative_to(other) for p in other.rglob("*.npy")) == local_maps
    for rel in local_maps:
        np.testing.assert_allclose(np.load(other / rel), np.load(local / rel), atol=1e-5)
    names = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    assert sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file()) == names


def as_numpy_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows as Ray Data hands them to a ``batch_format="numpy"`` function."""
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        column = np.empty(len(values), dtype=object)
        column[:] = values
        batch[key] = column if not isinstance(values[0], int) else np.asarray(values)
    return batch


# -- the engine's pieces, driven as Ray Data drives them (no Ray needed) -----------------------


def test_the_read_task_and_the_actor_write_what_a_local_run_writes(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    bad = with_bad_file(folder)
    local = tmp_path / "local"
    result = invoke(
        "run", folder, "-o", local, "-f", "npy", "-f", "jpg", *tiny_args(tiny_checkpoint)
    )
    assert result.exit_code == 1, result.output

    out = tmp_path / "actors"
    config = RunConfig(out=out, formats=("npy", "jpg"), batch_size=4)
    loaded = load_model(model_spec(tiny_checkpoint), progress=False)
    explainer = Explainer(loaded, method="gradcam")
    targets = parse_targets([], None, loaded.labels, loaded.num_classes)
    settings = run_settings(explainer, config, tiny_checkpoint["checkpoint"])
    setup = ActorSetup(model_spec(tiny_checkpoint), ExplainSpec(method="gradcam"), targets,
                       config, settings)  # fmt: skip
    sources = collect_sources([str(folder)], sys.stdin)
    with OutputFolder(out) as output:
        setup.temp_dir = output.temp_dir
        actor = _ExplainActor(setup)
        rows = [_item(i, s) for i, s in enumerate(sources)]
        for start in range(0, len(rows), 4):
            read = _read_batch(as_numpy_batch(rows[start : start + 4]), loaded.preprocess,
                               keep_image=True, max_pixels=None)  # fmt: skip
            assert read["view"].shape[1:] == (64, 64, 3)
            done = actor(read)
            assert list(done["index"]) == list(range(start, min(start + 4, len(rows))))
            for text in done["records"]:
                output.append([json.loads(line) for line in text.split("\n")])
        output.compact()
    assert_same_run(local, out)
    [error] = [r for r in records(out) if r["status"] == "error"]
    assert error["input"] == str(bad)
    assert error["error"] == f"{bad}: not an image, or a format camcli does not read"


def test_the_drivers_work_and_the_actors_agree_on_names_and_settings(tiny_checkpoint, tmp_path):
    config = RunConfig(out=tmp_path / "o", formats=("npy",))
    loaded = load_model(model_spec(tiny_checkpoint), progress=False)
    explainer = Explainer(loaded, method="gradcam++", layers=["features.9"])
    targets = parse_targets(["top2", "red"], None, loaded.labels, loaded.num_classes)
    settings = run_settings(explainer, config, tiny_checkpoint["checkpoint"])
    driver = BatchWork(explainer, targets, config, settings, name_layers=True)
    setup = ActorSetup(model_spec(tiny_checkpoint),
                       ExplainSpec(method="gradcam++", layers=["features.9"]), targets, config,
                       settings, name_layers=True)  # fmt: skip
    actor = _ExplainActor(setup).work
    one = Source(tmp_path / "x.png", PurePosixPath("x.png"))
    assert actor.plan(one).paths == driver.plan(one).paths
    assert {str(p) for p in actor.plan(one).paths["class0"].values()} == {
        str(tmp_path / "o" / "x.png.gradcam++.features.9.class0.npy")
    }
    assert actor.settings == driver.settings


def test_a_batch_that_fails_as_a_whole_is_one_error_record_per_image(
    tiny_checkpoint, shapes_dir, tmp_path, monkeypatch
):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    config = RunConfig(out=out, formats=("npy",), batch_size=4)
    loaded = load_model(model_spec(tiny_checkpoint), progress=False)
    targets = parse_targets([], None, loaded.labels, loaded.num_classes)
    settings = run_settings(Explainer(loaded), config)
    actor = _ExplainActor(
        ActorSetup(model_spec(tiny_checkpoint), ExplainSpec(), targets, config, settings)
    )

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(actor.work, "explain", broken)
    sources = collect_sources([str(folder)], sys.stdin)[:3]
    read = _read_batch(as_numpy_batch([_item(i, s) for i, s in enumerate(sources)]),
                       loaded.preprocess, keep_image=False, max_pixels=None)  # fmt: skip
    done = actor(read)
    found = [json.loads(text) for text in done["records"]]
    assert [r["input"] for r in found] == [str(s.path) for s in sources]
    assert all(r["status"] == "error" for r in found)
    assert found[0]["error"] == f"{sources[0].path}: failed (ValueError: a bug)"
    assert not out.exists()


def test_explain_batch_gives_the_maps_of_explain_images_and_overlays(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 50), (64, 64))]
    column = np.empty(2, dtype=object)
    column[:] = images
    batch = {"image": column, "path": np.asarray(["a.png", "b.png"])}
    explain = ExplainBatch(str(tiny_checkpoint["model"]), checkpoint=tiny_checkpoint["checkpoint"],
                           labels=tiny_checkpoint["labels"], device="cpu", input_size=64,
                           fit="stretch", targets=["top1", "blue"], overlay="png")  # fmt: skip
    out = explain(batch)
    loaded = load_model(model_spec(tiny_checkpoint), progress=False)
    expected = explain_images(loaded, images, targets=["top1", "blue"]).explanation
    assert set(out) == {"path", "map", "class_index", "score", "label", "error", "overlay"}
    assert list(out["path"]) == ["a.png", "b.png"]
    np.testing.assert_allclose(out["map"], expected.maps, atol=1e-5)
    np.testing.assert_array_equal(out["class_index"], expected.class_indices)
    np.testing.assert_allclose(out["score"], expected.scores, rtol=1e-5)
    assert out["class_index"][:, 1].tolist() == [2, 2]
    assert out["label"][:, 1].tolist() == ["blue", "blue"]
    assert out["error"].tolist() == ["", ""]
    assert out["overlay"].shape == (2, 2)
    for image, pictures in zip(images, out["overlay"], strict=True):
        for data in pictures:
            path = tmp_path / "o.png"
            path.write_bytes(data)
            assert Image.open(path).size == (image.shape[1], image.shape[0])


# -- the CLI's checks, before anything runs -----------------------------------------------------


def test_engine_ray_without_ray_exits_2_with_the_install_command(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    out = tmp_path / "out"
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "from camcli.cli import main\n"
        f"sys.argv = ['camcli', 'run', {str(image)!r}, '-o', {str(out)!r}, '--engine', 'ray']\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"install it with {INSTALL}" in result.stderr
    assert result.stderr.startswith("error: --engine ray needs Ray Data")
    assert not out.exists()


@pytest.mark.parametrize(
    "options", [["--ray-address", "auto"], ["--ray-actors", "2"], ["--num-gpus", "1"]]
)
def test_ray_options_without_engine_ray_exit_2(options, tmp_path):
    result = invoke("run", tmp_path, "-o", tmp_path / "out", *options)
    assert result.exit_code == 2
    assert "--ray-address, --ray-actors and --num-gpus need --engine ray" in result.output
    assert not (tmp_path / "out").exists()


# -- a real local Ray instance ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="the ray extra: uv sync --extra ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _system_config={"enable_metrics_collection": False})  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_a_ray_run_writes_what_a_local_run_writes(ray_instance, tiny_checkpoint, shapes_dir,
                                                  tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    bad = with_bad_file(folder)
    local = tmp_path / "local"
    assert invoke("run", folder, "-o", local, "-f", "npy", "-f", "jpg", "-b", "4",
                  *tiny_args(tiny_checkpoint)).exit_code == 1  # fmt: skip
    out = tmp_path / "ray"
    config = RunConfig(out=out, formats=("npy", "jpg"), batch_size=4)
    spec = model_spec(tiny_checkpoint)
    result = run_images([str(folder)], spec, ExplainSpec(), config, engine="ray",
                        ray=RayOptions(actors=1))  # fmt: skip
    assert len(result.summary.failed) == 1  # one image failed: its record, not a failed job
    assert_same_run(local, out)
    [error] = [r for r in records(out) if r["status"] == "error"]
    assert error["error"] == f"{bad}: not an image, or a format camcli does not read"
    assert not list(out.rglob(".*"))  # no temp file, no lock left

    # --skip-existing on Ray: every record kept, nothing redone
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    config.skip_existing = True
    again = run_images([str(folder)], spec, ExplainSpec(), config, engine="ray",
                       ray=RayOptions(actors=1))  # fmt: skip
    assert len(again.summary.failed) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == stamps
    assert sum(bool(r.get("skipped")) for r in records(out)) == 12


@pytest.mark.slow
def test_the_cli_joins_a_running_cluster(ray_instance, tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    address = ray_instance.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "camcli", "run", str(folder), "-o", str(out), "-f", "npy", "--json",
         "--engine", "ray", "--ray-address", address, "--ray-actors", "1",
         *map(str, tiny_args(tiny_checkpoint))],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(printed) == 12 and all(r["status"] == "ok" for r in printed)
    assert {r["input"] for r in records(out)} == {r["input"] for r in printed}
    assert len(list(out.rglob("*.npy"))) == 12
    assert ray_instance.is_initialized()  # the CLI left the cluster running


@pytest.mark.slow
def test_explain_batch_in_a_ray_data_pipeline(ray_instance, tiny_checkpoint):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(5)]
    dataset = ray_instance.data.from_items(
        [{"image": image, "path": f"img{i}.png"} for i, image in enumerate(images)]
    )
    rows = dataset.map_batches(
        ExplainBatch,
        fn_constructor_kwargs=dict(model=str(tiny_checkpoint["model"]),
                                   checkpoint=tiny_checkpoint["checkpoint"],
                                   labels=tiny_checkpoint["labels"], device="cpu",
                                   input_size=64, fit="stretch", overlay="jpg"),
        compute=ray_instance.data.ActorPoolStrategy(size=1),
        batch_size=2,
        batch_format="numpy",
    ).take_all()  # fmt: skip
    loaded = load_model(model_spec(tiny_checkpoint), progress=False)
    expected = explain_images(loaded, images).explanation
    by_path = {row["path"]: row for row in rows}
    for i in range(5):
        row = by_path[f"img{i}.png"]
        np.testing.assert_allclose(row["map"], expected.maps[i], atol=1e-5)
        assert int(row["class_index"][0]) == int(expected.class_indices[i, 0])
        assert bytes(row["overlay"][0])[:2] == b"\xff\xd8"  # a JPEG


@pytest.mark.slow
def test_ctrl_c_on_ray_exits_130_and_every_file_keeps_its_record(tiny_checkpoint, tmp_path):
    """SIGINT once the first outputs are on disk: the run stops between batches, Ray is shut
    down, the exit status is 130 (it was 1, from inside Ray's shutdown, in most runs), and
    the outputs of the batches in flight that never got a record are removed."""
    pytest.importorskip("ray", reason="the ray extra: uv sync --extra ray")
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(80):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48, 3), np.uint8)).save(
            folder / f"{i:02d}.png"
        )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.Popen(
        [sys.executable, "-m", "camcli", "run", str(folder), "-o", str(out), "-f", "npy", "-q",
         "--engine", "ray", "--ray-actors", "1", "-b", "2", *map(str, tiny_args(tiny_checkpoint))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(out.glob("*.npy")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 130, stderr.decode()
    assert "interrupted: finished outputs and manifest.jsonl are kept" in stderr.decode()
    listed = {o for r in records(out) for o in r["outputs"]}
    on_disk = {str(p) for p in out.rglob("*.npy")}
    assert on_disk and on_disk == listed
    assert len(on_disk) < 80  # stopped part-way
    assert not list(out.rglob(".*"))  # no temp file, no lock left
