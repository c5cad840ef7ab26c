"""``camcli evaluate``: the metrics against torchcam / pytorch-grad-cam, the sanity check, the
baselines, the CLI's table / --json / --csv / --plots, and check's faithfulness expectations."""

from __future__ import annotations

import copy
import csv
import io
import json
import subprocess
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import synthetic
from camcli.cli import app
from camcli.evaluate.measure import Settings, evaluate_methods, load_items
from camcli.explain import Explainer
from camcli.images import Preprocess
from camcli.methods.base import CamContext
from camcli.methods.floors import RandomCAM, SobelEdges
from camcli.metrics.confidence import confidence_change
from camcli.metrics.deletion import deletion_insertion, perturbed_counts
from camcli.metrics.road import impute, road
from camcli.metrics.sanity import cascade, parameterised_modules, spearman
from camcli.metrics.scoring import Scorer, at_input_size, min_max
from camcli.models import LoadedModel
from camcli.sources import collect_sources
from camcli.targets import Target
from conftest import SYNTHETIC_MODEL, strict_json, tiny_args

N_IMAGES = 4


def tiny_loaded(model: torch.nn.Module) -> LoadedModel:
    return LoadedModel(
        model=copy.deepcopy(model),
        name="tiny",
        weights=None,
        preprocess=Preprocess(crop_size=64, resize_size=64, fit="stretch"),
        labels=list(synthetic.CLASSES),
        device=torch.device("cpu"),
        num_classes=3,
    )


@pytest.fixture(scope="module")
def explained(tiny_model):
    """Grad-CAM of the trained tiny model on four shapes: explainer, inputs, maps at the input
    size, classes and the unperturbed probabilities."""
    explainer = Explainer(tiny_loaded(tiny_model), "gradcam")
    images, _, _ = synthetic.dataset(N_IMAGES, seed=11)
    inputs = synthetic.to_tensor(images)
    found = explainer.explain(inputs, [Target(rank=1)])
    saliency = at_input_size(torch.from_numpy(found.maps[:, 0]), (64, 64))
    classes = torch.from_numpy(found.class_indices[:, 0])
    original = Scorer(explainer).probabilities(inputs, classes)
    return explainer, inputs, saliency, classes, original


class FixedMaps:
    """A torchcam CAM extractor that returns given maps: the references then score exactly
    the maps camcli scores."""

    def __init__(self, model: torch.nn.Module, maps: torch.Tensor) -> None:
        self.model = model
        self.maps = maps

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.maps]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return nullcontext()


# --- the metrics against the references ------------------------------------------------------


@pytest.mark.parametrize("steps", [20, 7])
def test_deletion_and_insertion_equal_torchcam(explained, tiny_model, steps):
    from torchcam.metrics import DeletionInsertionMetric

    explainer, inputs, saliency, classes, original = explained
    curves = deletion_insertion(Scorer(explainer, 16), inputs, saliency, classes, original, steps)
    assert curves.deletion.shape == (N_IMAGES, len(perturbed_counts(64 * 64, steps)))
    reference = DeletionInsertionMetric(
        FixedMaps(tiny_model, saliency), partial(torch.softmax, dim=-1), steps=steps
    )
    reference.update(inputs, class_idx=classes.tolist())
    expected = reference.summary()
    assert curves.auc(curves.deletion).mean().item() == pytest.approx(
        expected["deletion_auc"], abs=1e-4
    )
    assert curves.auc(curves.insertion).mean().item() == pytest.approx(
        expected["insertion_auc"], abs=1e-4
    )
    # A faithful map: the class goes faster when its top pixels go than it comes back.
    assert curves.auc(curves.deletion).mean() < curves.auc(curves.insertion).mean()


def test_deletion_scores_the_shared_baseline_once(explained):
    """A zero baseline is one input for the whole batch: 2 (K - 2) passes per image and one
    more, where torchcam runs 2 (K - 2) + 1 per image; per-image baselines give the same
    curves with one all-baseline pass each."""
    explainer, inputs, saliency, classes, original = explained
    steps = 7
    points = len(perturbed_counts(64 * 64, steps))
    counted: list[int] = []
    shared = deletion_insertion(
        Scorer(explainer, 16, counted.append), inputs, saliency, classes, original, steps
    )
    assert sum(counted) == N_IMAGES * 2 * (points - 2) + 1
    counted.clear()
    own = deletion_insertion(
        Scorer(explainer, 16, counted.append),
        inputs,
        saliency,
        classes,
        original,
        steps,
        baseline=torch.zeros_like(inputs),
    )
    assert sum(counted) == N_IMAGES * (2 * (points - 2) + 1)
    torch.testing.assert_close(shared.deletion, own.deletion, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.insertion, own.insertion, atol=1e-5, rtol=0)


def test_evaluate_reuses_the_explain_pass_probabilities(tiny_model):
    """The curves' unperturbed end is the explain pass's softmax, equal to a scoring pass's."""
    from camcli.evaluate.measure import _explain

    explainer = Explainer(tiny_loaded(tiny_model), "gradcam")
    images, _, _ = synthetic.dataset(N_IMAGES, seed=11)
    views = list(images)

    class View:
        def __init__(self, view):
            self.view = view

    inputs, _, classes, original = _explain(explainer, [View(v) for v in views], Target(rank=1))
    assert original is not None
    expected = Scorer(explainer).probabilities(inputs, classes)
    torch.testing.assert_close(original, expected, atol=1e-5, rtol=0)


def test_average_drop_and_increase_equal_torchcam(explained, tiny_model):
    from torchcam.metrics import ClassificationMetric

    explainer, inputs, saliency, classes, original = explained
    drop, increase = confidence_change(Scorer(explainer), inputs, saliency, classes, original)
    reference = ClassificationMetric(
        FixedMaps(tiny_model, min_max(saliency)), partial(torch.softmax, dim=-1)
    )
    reference.update(inputs, class_idx=classes.tolist())
    expected = reference.summary()
    assert drop.mean().item() == pytest.approx(expected["avg_drop"], abs=1e-4)
    assert increase.mean().item() == pytest.approx(expected["conf_increase"], abs=1e-4)
    assert ((drop >= 0) & (drop <= 1)).all()


def test_road_equals_pytorch_grad_cam_without_noise(explained, tiny_model, monkeypatch):
    from pytorch_grad_cam.metrics import road as reference
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    # The reference's imputer adds unseeded noise; compare the imputation itself, noise off.
    monkeypatch.setattr(
        reference.NoisyLinearImputer.__init__, "__defaults__", (0.0, reference.neighbors_weights)
    )
    explainer = explained[0]
    inputs, saliency, classes, original = (v[:2] for v in explained[1:])
    percentiles = [30, 70]
    ours = road(Scorer(explainer), inputs, saliency, classes, original, percentiles, noise=0.0)
    cams = min_max(saliency).numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    morf = reference.ROADMostRelevantFirstAverage(percentiles)(inputs, cams, targets, tiny_model)
    lerf = reference.ROADLeastRelevantFirstAverage(percentiles)(inputs, cams, targets, tiny_model)
    combined = reference.ROADCombined(percentiles)(inputs, cams, targets, tiny_model)
    np.testing.assert_allclose(ours["road_morf"].numpy(), morf, atol=1e-4)
    np.testing.assert_allclose(ours["road_lerf"].numpy(), lerf, atol=1e-4)
    np.testing.assert_allclose(ours["road_combined"].numpy(), combined, atol=1e-4)


def test_imputation_solves_the_neighbour_average_and_is_seeded():
    rng = np.random.default_rng(0)
    inputs = torch.from_numpy(rng.normal(size=(1, 2, 12, 12)))
    removed = torch.zeros(1, 12, 12, dtype=torch.bool)
    removed[0, 3:8, 4:10] = True
    filled = impute(inputs, removed, noise=0.0).double()
    kernel = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    mean = torch.nn.functional.conv2d(filled.view(2, 1, 12, 12), kernel.double().view(1, 1, 3, 3))
    inner = mean.view(1, 2, 10, 10)[:, :, 2:7, 3:9]  # every removed pixel is 1 px in from the edge
    torch.testing.assert_close(filled[:, :, 3:8, 4:10], inner, atol=1e-6, rtol=0)
    assert torch.equal(filled[:, :, ~removed[0]], inputs[:, :, ~removed[0]])
    one = impute(inputs, removed, 0.01, torch.Generator().manual_seed(3))
    again = impute(inputs, removed, 0.01, torch.Generator().manual_seed(3))
    other = impute(inputs, removed, 0.01, torch.Generator().manual_seed(4))
    assert torch.equal(one, again) and not torch.equal(one, other)


def test_whole_image_removed_is_filled_with_zeros():
    inputs = torch.randn(1, 3, 8, 8)
    filled = impute(inputs, torch.ones(1, 8, 8, dtype=torch.bool), noise=0.0)
    assert torch.equal(filled, torch.zeros_like(filled))


def test_spearman_ranks_ties_and_constant_maps():
    a = torch.tensor([[0.0, 0.0, 1.0, 2.0]])
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    b = torch.tensor([[3.0, 1.0, 1.0, 0.5]])
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a.ravel(), b.ravel())[0])
    assert spearman(torch.zeros(4), torch.zeros(4)) == 1.0
    assert spearman(torch.zeros(4), a) == 0.0


# --- the baselines ---------------------------------------------------------------------------


def test_sobel_is_an_edge_map_of_the_input_only(tiny_model):
    batch = torch.zeros(2, 3, 16, 16)
    batch[0, :, :, 8:] = 1.0  # a vertical edge between columns 7 and 8
    context = CamContext(model=tiny_model, batch=batch, forward=tiny_model)
    maps = SobelEdges(tiny_model).compute(batch, batch, torch.zeros(2, 1).long(), context)
    assert maps.shape == (2, 1, 16, 16)
    assert torch.equal(maps[1], torch.zeros(1, 16, 16))  # a flat image has no edge
    assert maps[0, 0, :, 7:9].min() == pytest.approx(4.0)  # |(-1, -2, -1) . 1| + ... = 4
    assert maps[0, 0, :, :7].max() == 0 and maps[0, 0, :, 9:].max() == 0


def test_randomcam_is_reproducible_and_ignores_the_class():
    activation = torch.rand(2, 5, 4, 4)
    method = RandomCAM(torch.nn.Identity())
    first = method.compute(activation, torch.zeros(2, 3), torch.tensor([[0], [1]]))
    again = method.compute(activation, torch.zeros(2, 3), torch.tensor([[2], [2]]))
    assert first.shape == (2, 1, 4, 4) and torch.equal(first, again)
    assert (first >= 0).all() and first.abs().sum() > 0


# --- the runner: sanity and reproducibility --------------------------------------------------


@pytest.fixture(scope="module")
def shape_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate-shapes")
    images, _, _ = synthetic.dataset(N_IMAGES, seed=21)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"shape{i}.png")
    return folder


def test_sanity_check_separates_gradcam_from_randomcam_and_sobel(tiny_model, shape_folder):
    loaded = tiny_loaded(tiny_model)
    items, errors = load_items(collect_sources([str(shape_folder)]), loaded)
    assert len(items) == N_IMAGES and not errors
    results = evaluate_methods(
        loaded, ["gradcam", "randomcam", "sobel"], items, Settings(families=("sanity",))
    ).results
    verdict = {r.name: r.sane for r in results}
    assert verdict == {"gradcam": True, "randomcam": False, "sobel": False}
    stages = {r.name: r.stages for r in results}
    assert stages["gradcam"][0]["reinitialised"] == 1 and stages["gradcam"][0]["down_to"] == "fc"
    assert stages["sobel"][-1]["reinitialised"] == len(parameterised_modules(loaded.model))
    assert len(stages["sobel"]) == len(cascade(loaded.model, 4))
    # RandomCAM never reads the head: re-initialising it alone leaves its maps exactly as
    # they were; Grad-CAM's change.
    assert stages["randomcam"][0]["rho"] == pytest.approx(1.0)
    assert stages["gradcam"][0]["rho"] < 0.5
    assert all(s["rho"] == pytest.approx(1.0) for s in stages["sobel"])


def test_road_noise_is_seeded(explained):
    explainer, inputs, saliency, classes, original = explained
    scorer = Scorer(explainer)
    args = (scorer, inputs[:2], saliency[:2], classes[:2], original[:2], [50])
    one, again, other = road(*args, seed=1), road(*args, seed=1), road(*args, seed=2)
    assert torch.equal(one["road_combined"], again["road_combined"])
    assert not torch.equal(one["road_morf"], other["road_morf"])


# --- the CLI -----------------------------------------------------------------------------------


def invoke(*args) -> object:
    """The Typer app in-process (torch is imported already): cheaper than a subprocess."""
    return CliRunner().invoke(app, [str(a) for a in args])


def camcli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camcli", "evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_json_plots_and_pointing_with_a_bad_file(tiny_checkpoint, tmp_path):
    images, _, boxes = synthetic.dataset(3, seed=5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    lines = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"s{i}.png")
        lines.append(f'[[case]]\nimage = "imgs/s{i}.png"\nbox = {list(boxes[i])}\n')
    (folder / "broken.png").write_bytes(b"not a png")
    spec = tmp_path / "boxes.toml"
    spec.write_text("\n".join(lines))
    plots = tmp_path / "plots"
    result = camcli(
        folder, *tiny_args(tiny_checkpoint), "--method", "gradcam", "--method", "randomcam",
        "--metric", "deletion", "--metric", "pointing", "--steps", "5", "--boxes", spec,
        "--json", "--plots", plots,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # one file could not be read
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    found = strict_json(result.stdout)
    assert found["model"] == SYNTHETIC_MODEL
    assert found["images"] == ["s0.png", "s1.png", "s2.png"]
    assert set(found["methods"]) == {"gradcam", "randomcam"}
    assert found["errors"][0]["input"].endswith("broken.png")
    grad = found["methods"]["gradcam"]
    assert set(grad["metrics"]) == {
        "deletion_auc", "insertion_auc", "pointing_game", "energy_pointing",
    }  # fmt: skip
    for metric in grad["metrics"].values():
        assert set(metric) == {"mean", "low", "high", "values", "reason"}
        assert len(metric["values"]) == 3 and metric["reason"] is None
        assert metric["low"] <= metric["mean"] <= metric["high"]
        assert metric["mean"] == pytest.approx(np.mean(metric["values"]))
    assert grad["metrics"]["pointing_game"]["mean"] == 1.0  # the trained model finds the shapes
    deletion = grad["curves"]["deletion"]
    assert [f for f, _ in deletion] == [c / 4096 for c in perturbed_counts(64 * 64, 5)]
    areas = np.trapezoid if hasattr(np, "trapezoid") else np.trapz
    auc = areas([s for _, s in deletion], [f for f, _ in deletion])
    assert auc == pytest.approx(grad["metrics"]["deletion_auc"]["mean"], abs=1e-6)
    for name in ("deletion", "insertion"):
        picture = cv2.imread(str(plots / f"{name}.png"))
        assert picture is not None and picture.shape == (480, 720, 3)
        assert (picture < 250).any()


def test_cli_csv_and_table_agree(tiny_checkpoint, shape_folder, tmp_path):
    common = [shape_folder, *tiny_args(tiny_checkpoint), "--metric", "confidence", "-q"]
    page = tmp_path / "evaluation.html"
    as_csv = camcli(*common, "--csv", "--report", page)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["method"] for r in rows] == ["gradcam", "randomcam", "sobel"]
    assert set(rows[0]) == {
        "method",
        *(
            f"{m}_{p}"
            for m in ("average_drop", "confidence_increase")
            for p in ("mean", "low", "high")
        ),
    }
    drops = {r["method"]: float(r["average_drop_mean"]) for r in rows}
    assert drops["gradcam"] < drops["sobel"]  # the floor is beaten
    # --report: the same figures as a page, one row per method
    html = page.read_text()
    metrics = html[html.index('<table id="metrics">') :].split("</table>")[0]
    for method, drop in drops.items():
        row = metrics[metrics.index(f"<tr><th>{method}</th>") :].split("</tr>")[0]
        assert f"{drop:.4g}" in row
    refused = invoke("evaluate", *common, "--report", tmp_path / "missing" / "page.html")
    assert refused.exit_code == 2 and "--report" in refused.stderr
    table = invoke("evaluate", *common)
    assert table.exit_code == 0, table.output
    gradcam_row = next(
        line for line in table.stdout.splitlines() if line.strip().startswith("gradcam")
    )
    assert f"{drops['gradcam']:.3f}" in gradcam_row
    assert "average_drop" in table.stdout and "95% interval" in table.stdout


def test_cli_refuses_json_with_csv_and_an_unknown_method(tiny_checkpoint, shape_folder):
    both = invoke("evaluate", shape_folder, *tiny_args(tiny_checkpoint), "--json", "--csv")
    assert both.exit_code == 2 and "--json and --csv" in both.stderr
    unknown = invoke("evaluate", shape_folder, *tiny_args(tiny_checkpoint), "--method", "gradcan")
    assert unknown.exit_code == 2 and "did you mean gradcam" in unknown.stderr
    assert unknown.stdout == ""


def test_cli_refuses_two_targets_and_a_bad_batch_size(tiny_checkpoint, shape_folder):
    """evaluate explains one class per image; --batch-size takes a number or auto, as in run."""
    args = [shape_folder, *tiny_args(tiny_checkpoint)]
    two = invoke("evaluate", *args, "--target", "top1", "--target", "0")
    assert two.exit_code == 2
    assert two.stderr == "error: evaluate explains one target: give --target once\n"
    assert two.stdout == ""
    zero = invoke("evaluate", *args, "--batch-size", "0")
    assert zero.exit_code == 2 and zero.stdout == ""
    assert zero.stderr.startswith("error: --batch-size '0'")


NOT_FINITE = "the model's output is not finite (NaN or inf in the logits)"


def test_a_broken_model_gives_standard_json_and_csv(
    tiny_checkpoint, broken_checkpoints, shape_folder
):
    def evaluate(checkpoint: Path, *output: str):
        args = tiny_args({**tiny_checkpoint, "checkpoint": checkpoint})
        return invoke("evaluate", shape_folder, *args, "--method", "gradcam", "--metric",
                      "deletion", "--metric", "confidence", "--steps", "4", *output)  # fmt: skip

    # A diverged model: no image is evaluated, each says why, and so does the end.
    diverged = evaluate(broken_checkpoints["nan"], "--json")
    assert diverged.exit_code == 1, diverged.output
    lines = diverged.stderr.splitlines()
    assert sorted(lines[:N_IMAGES]) == [
        f"error: {shape_folder / f'shape{i}.png'}: {NOT_FINITE}" for i in range(N_IMAGES)
    ]
    assert lines[N_IMAGES:] == [
        f"error: none of the {N_IMAGES} images could be evaluated; every metric is n/a"
    ]
    found = strict_json(diverged.stdout)
    assert found["images"] == [] and len(found["errors"]) == N_IMAGES
    assert all(e["error"].endswith(NOT_FINITE) for e in found["errors"])
    metrics = found["methods"]["gradcam"]["metrics"]
    assert set(metrics) == {"deletion_auc", "insertion_auc", "average_drop", "confidence_increase"}
    for metric in metrics.values():
        assert metric == {
            "mean": None, "low": None, "high": None, "values": [],
            "reason": "no image was evaluated",
        }  # fmt: skip
    assert found["methods"]["gradcam"]["curves"] == {}
    as_csv = evaluate(broken_checkpoints["nan"], "--csv")
    assert as_csv.exit_code == 1
    (row,) = csv.DictReader(io.StringIO(as_csv.stdout))
    assert row.pop("method") == "gradcam" and set(row.values()) == {""}
    # A zero head: every score equal, yet every number is a number.
    zero = evaluate(broken_checkpoints["zero_head"], "--json")
    assert zero.exit_code == 0, zero.output
    found = strict_json(zero.stdout)
    for metric in found["methods"]["gradcam"]["metrics"].values():
        assert metric["reason"] is None and len(metric["values"]) == N_IMAGES
        assert all(isinstance(v, float) for v in [metric["mean"], *metric["values"]])
    zero_csv = evaluate(broken_checkpoints["zero_head"], "--csv")
    assert zero_csv.exit_code == 0
    (row,) = csv.DictReader(io.StringIO(zero_csv.stdout))
    assert row.pop("method") == "gradcam"
    assert all(np.isfinite(float(v)) for v in row.values())


def test_images_the_model_cannot_score_are_left_out_and_nan_values_are_null(
    tiny_checkpoint, shape_folder, tmp_path
):
    # SpreadNet divides its input by each channel's spread: a flat picture gives a score that
    # is not finite, and so does the all-zero input deletion ends with and insertion starts
    # from, on every image.
    folder = tmp_path / "with-flat"
    folder.mkdir()
    for i in range(N_IMAGES):
        (folder / f"shape{i}.png").symlink_to(shape_folder / f"shape{i}.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "flat.png")
    args = [
        folder, *tiny_args(tiny_checkpoint), "--model", SYNTHETIC_MODEL.replace("TinyCAMNet",
        "SpreadNet"), "--method", "gradcam", "--metric", "deletion", "--metric", "confidence",
        "--steps", "4",
    ]  # fmt: skip
    page, plots = tmp_path / "evaluation.html", tmp_path / "plots"
    result = invoke("evaluate", *args, "--json", "--report", page, "--plots", plots)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [
        f"error: {folder / 'flat.png'}: {NOT_FINITE}",
        f"1 of {N_IMAGES + 1} images could not be evaluated",
    ]
    found = strict_json(result.stdout)
    assert found["images"] == [f"shape{i}.png" for i in range(N_IMAGES)]
    assert [e["input"] for e in found["errors"]] == [str(folder / "flat.png")]
    metrics = found["methods"]["gradcam"]["metrics"]
    reason = (
        f"{N_IMAGES} of {N_IMAGES} values are not finite (NaN or inf), left out of the mean "
        "(the model's output on a perturbed input?)"
    )
    for name in ("deletion_auc", "insertion_auc"):
        assert metrics[name] == {
            "mean": None, "low": None, "high": None, "values": [None] * N_IMAGES,
            "reason": reason,
        }  # fmt: skip
    drop = metrics["average_drop"]
    assert drop["reason"] is None and len(drop["values"]) == N_IMAGES
    assert drop["mean"] == pytest.approx(np.mean(drop["values"]))
    assert found["methods"]["gradcam"]["curves"] == {"deletion": [], "insertion": []}
    html = page.read_text()
    cells = html[html.index('<table id="metrics">') :].split("</table>")[0]
    assert cells.count("n/a") == 6 and "nan" not in cells.lower()  # 2 metrics x mean, low, high
    assert cv2.imread(str(plots / "deletion.png")) is not None
    as_csv = invoke("evaluate", *args, "--csv")
    assert as_csv.exit_code == 1
    (row,) = csv.DictReader(io.StringIO(as_csv.stdout))
    assert row["deletion_auc_mean"] == row["insertion_auc_high"] == ""
    assert float(row["average_drop_mean"]) == pytest.approx(drop["mean"])


# --- check's faithfulness expectations -----------------------------------------------------


def test_check_insertion_and_deletion_expectations(tiny_checkpoint, shape_folder, tmp_path):
    def spec(**keys) -> Path:
        path = tmp_path / f"spec{len(keys)}{sorted(keys.values())}.toml".replace(" ", "")
        case = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        path.write_text(
            "[model]\n"
            f"model = {json.dumps(SYNTHETIC_MODEL)}\n"
            f"checkpoint = {json.dumps(str(tiny_checkpoint['checkpoint']))}\n"
            f"labels = {json.dumps(str(tiny_checkpoint['labels']))}\n"
            'input_size = 64\nfit = "stretch"\ndevice = "cpu"\n'
            f"[[case]]\nimage = {json.dumps(str(shape_folder / 'shape0.png'))}\n{case}"
        )
        return path

    def check(path: Path):
        return invoke("check", path, "--json")

    passing = check(spec(insertion_auc_min=0.5, deletion_auc_max=0.9))
    assert passing.exit_code == 0, passing.stderr
    outcomes = {e["expectation"]: e for e in json.loads(passing.stdout)["cases"][0]["expectations"]}
    assert outcomes["insertion_auc"]["passed"] and outcomes["deletion_auc"]["passed"]
    failing = check(spec(insertion_auc_min=0.999))
    assert failing.exit_code == 1, failing.stderr
    (outcome,) = json.loads(failing.stdout)["cases"][0]["expectations"]
    assert outcome["expectation"] == "insertion_auc" and not outcome["passed"]
    assert outcome["measured"] == pytest.approx(outcomes["insertion_auc"]["measured"])
