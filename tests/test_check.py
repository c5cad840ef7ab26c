"""``camcli check``: specs run against the synthetic-shapes model, reports, spec errors."""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import camcli.check.cases
import camcli.explain
import synthetic
from camcli.check import in_boxes, map_similarity, peak_and_energy
from camcli.cli import app
from camcli.errors import InputError
from camcli.images import Box
from camcli.metrics.maps import grid as map_grid
from conftest import SYNTHETIC_MODEL, strict_json, strict_junit

runner = CliRunner()
N_IMAGES = 6
CORNER = 10  # side of the "empty corner" boxes


def invoke(*args):
    return runner.invoke(app, ["check", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def spec_dir(tiny_model, tmp_path_factory) -> dict:
    """A folder with shape images (PNG), labels, the trained checkpoint and one whose last
    conv block is re-initialised (fixed seed)."""
    folder = tmp_path_factory.mktemp("check")
    torch.save(tiny_model.state_dict(), folder / "tiny.pt")
    broken = copy.deepcopy(tiny_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv = broken.features[9]
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.06)
    broken.features[10].reset_parameters()
    broken.features[10].reset_running_stats()
    torch.save(broken.state_dict(), folder / "reinit.pt")
    (folder / "labels.txt").write_text("\n".join(synthetic.CLASSES) + "\n")
    images, labels, boxes = synthetic.dataset(N_IMAGES, seed=7)
    (folder / "img").mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / "img" / f"shape{i}.png")
    return {
        "folder": folder,
        "images": images,
        "labels": [synthetic.CLASSES[int(v)] for v in labels],
        "boxes": [list(b) for b in boxes],
    }


def model_table(checkpoint: str = "tiny.pt", **extra) -> str:
    lines = [
        "[model]",
        f"model = {json.dumps(SYNTHETIC_MODEL)}",
        f'checkpoint = "{checkpoint}"',
        'labels = "labels.txt"',
        "input_size = 64",
        'fit = "stretch"',
        'device = "cpu"',
        "batch_size = 4",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def case_table(**keys) -> str:
    return "\n[[case]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())


def write_spec(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def corner_box(box: list[int]) -> list[int]:
    """The 10x10 image corner farthest from the shape: it holds nothing but noise."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0 = 0 if cx > 32 else 64 - CORNER
    y0 = 0 if cy > 32 else 64 - CORNER
    return [x0, y0, x0 + CORNER, y0 + CORNER]


def shape_cases(spec_dir, boxes, **extra) -> str:
    return "".join(
        case_table(
            name=f"shape {i}",
            image=f"img/shape{i}.png",
            expect_class=spec_dir["labels"][i],
            box=boxes[i],
            min_energy=0.4,
            **extra,
        )
        for i in range(N_IMAGES)
    )


def results(result) -> dict:
    return strict_json(result.stdout)


def by_name(case: dict) -> dict:
    return {e["expectation"]: e for e in case["expectations"]}


# --- measurements -------------------------------------------------------------------------


def test_peak_and_energy_follow_the_overlay_upsampling():
    # A 2x2 map stretched over a 4x4 image: bilinear with half-pixel centres and replicated
    # borders gives the profile [1, 0.75, 0.25, 0] along each axis.
    cam = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)
    box = Box(0, 0, 4, 4)
    peak, energy = peak_and_energy(cam, box, (4, 4), [(0, 0, 2, 2)])
    assert peak == (0, 0)
    assert energy == pytest.approx((1 + 0.75) ** 2 / 4)
    # Two overlapping boxes: their union counts once (column 0 adds 0.25 + 0).
    _, union = peak_and_energy(cam, box, (4, 4), [(0, 0, 2, 2), (0, 0, 1, 4)])
    assert union == pytest.approx(((1 + 0.75) ** 2 + 0.25) / 4)
    # Negative evidence is clipped before measuring; a blank map has no peak.
    assert peak_and_energy(-cam, box, (4, 4), [(0, 0, 4, 4)]) == (None, 0.0)
    # The map covers only the region the model saw (a crop): x 2..6 of an 8-wide image.
    peak, energy = peak_and_energy(cam, Box(2, 0, 6, 4), (4, 8), [(0, 0, 2, 4)])
    assert peak == (2, 0) and energy == 0.0


def test_in_boxes_uses_pixel_centres():
    assert in_boxes((9, 0), [(0, 0, 10, 10)])
    assert not in_boxes((10, 0), [(0, 0, 10, 10)])
    assert in_boxes((15, 15), [(0, 0, 10, 10), (12, 12, 20, 20)])


def test_map_similarity_pearson_and_top20_iou():
    rng = np.random.default_rng(0)
    a = rng.random((8, 8)).astype(np.float32)
    assert map_similarity(a, a, 32) == pytest.approx((1.0, 1.0))
    assert map_similarity(a, 3 * a, 32) == pytest.approx((1.0, 1.0))  # scale-free
    flipped = a[::-1, ::-1].copy()
    pearson, iou = map_similarity(a, flipped, 32)
    grid = lambda m: map_grid(m, 32).ravel().astype(np.float64)  # noqa: E731
    assert pearson == pytest.approx(np.corrcoef(grid(a), grid(flipped))[0, 1])
    assert pearson < 0.5 and iou < 0.5
    # top-20% regions by hand: two maps whose hot quarters overlap in half of their cells.
    left = np.zeros((4, 4), np.float32)
    left[:, :1] = 1
    shifted = np.zeros((4, 4), np.float32)
    shifted[:2, :2] = 1
    _, iou = map_similarity(left, shifted, 4)
    assert iou == pytest.approx(2 / 6)
    blank = np.zeros((4, 4), np.float32)
    assert map_similarity(blank, blank, 8) == (1.0, 1.0)
    assert map_similarity(blank, left, 8) == (0.0, 0.0)


# --- end to end with the synthetic model --------------------------------------------------


def test_true_boxes_pass(spec_dir, tmp_path):
    spec = write_spec(
        spec_dir["folder"], "true.toml", model_table() + shape_cases(spec_dir, spec_dir["boxes"])
    )
    junit = tmp_path / "reports" / "junit.xml"
    result = invoke(spec, "--json", "--junit", junit)
    assert result.exit_code == 0, result.output
    report = results(result)
    assert report["passed"] and report["exit_code"] == 0
    assert report["summary"] == {
        "cases": 6,
        "failed_cases": 0,
        "expectations": 18,
        "passed": 18,
        "failed": 0,
    }
    for i, case in enumerate(report["cases"]):
        checks = by_name(case)
        assert set(checks) == {"class", "pointing", "energy"}
        assert checks["class"]["measured"] == 1 and checks["class"]["threshold"] == 1
        x, y = case["peak"]
        x0, y0, x1, y1 = spec_dir["boxes"][i]
        assert x0 <= x < x1 and y0 <= y < y1
        assert checks["pointing"]["measured"] == [x, y]
        assert 0.4 <= checks["energy"]["measured"] <= 1.0
        assert case["explained"]["label"] == spec_dir["labels"][i]
        assert case["prediction"] == case["explained"]
    assert "PASS: 18 of 18 expectations passed in 6 cases" in result.stderr
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "18" and root.get("failures") == "0"
    assert len(root.findall("./testsuite/testcase")) == 18
    assert not root.findall(".//failure")


def test_boxes_in_an_empty_corner_fail_with_the_measured_values(spec_dir, tmp_path):
    folder = spec_dir["folder"]
    good = write_spec(folder, "good.toml", model_table() + shape_cases(spec_dir, spec_dir["boxes"]))
    corners = [corner_box(b) for b in spec_dir["boxes"]]
    bad = write_spec(folder, "corner.toml", model_table() + shape_cases(spec_dir, corners))
    reference = results(invoke(good, "--json"))
    junit = tmp_path / "junit.xml"
    result = invoke(bad, "--json", "--junit", junit)
    assert result.exit_code == 1, result.output
    report = results(result)
    assert not report["passed"] and report["exit_code"] == 1
    assert report["summary"]["failed"] == 12 and report["summary"]["failed_cases"] == 6
    for i, case in enumerate(report["cases"]):
        checks = by_name(case)
        assert checks["class"]["passed"]  # still the right answer...
        # ...with the same map and peak as before, now outside the box
        assert case["peak"] == reference["cases"][i]["peak"]
        assert not checks["pointing"]["passed"]
        assert checks["pointing"]["threshold"] == [[float(v) for v in corners[i]]]
        assert not in_boxes(tuple(case["peak"]), [corners[i]])
        assert not checks["energy"]["passed"]
        assert checks["energy"]["measured"] < 0.1
        assert checks["energy"]["threshold"] == 0.4
    assert "FAIL: 6 of 18 expectations passed in 6 cases" in result.stderr
    assert "outside" in result.stderr

    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "18" and suite.get("failures") == "12"
    testcases = suite.findall("testcase")
    assert len(testcases) == 18
    assert testcases[0].get("name") == "shape 0: class"
    failed = [t for t in testcases if t.find("failure") is not None]
    assert [t.get("name") for t in failed[:2]] == ["shape 0: pointing", "shape 0: energy"]
    energy = report["cases"][0]["expectations"][2]
    failure = failed[1].find("failure")
    assert failure.get("message") == (f"energy: measured {energy['measured']:.3f}, expected >= 0.4")
    peak = report["cases"][0]["peak"]
    pointing = failed[0].find("failure").get("message")
    assert (
        pointing
        == f"pointing: measured peak ({peak[0]}, {peak[1]}) outside, expected peak inside the box"
    )
    assert "image: " in failed[0].find("failure").text


def test_several_boxes_peak_in_any_energy_over_the_union(spec_dir):
    true_box = spec_dir["boxes"][0]
    spec = write_spec(
        spec_dir["folder"],
        "union.toml",
        model_table()
        + case_table(image="img/shape0.png", boxes=[corner_box(true_box), true_box])
        + case_table(name="corner", image="img/shape0.png", box=true_box),
    )
    report = results(invoke(spec, "--json"))
    union, single = report["cases"]
    assert by_name(union)["pointing"]["passed"]
    assert union["name"] == "img/shape0.png"  # the image path names an unnamed case
    assert set(by_name(single)) == {"pointing"}  # a box alone plays the pointing game


def test_class_rank_and_score_match_the_model(spec_dir, tiny_model):
    i = 0
    truth = spec_dir["labels"][i]
    other = next(c for c in synthetic.CLASSES if c != truth)
    spec = write_spec(
        spec_dir["folder"],
        "classes.toml",
        model_table()
        + case_table(name="right", image="img/shape0.png", expect_class=truth, min_score=0.0)
        + case_table(name="wrong", image="img/shape0.png", expect_class=other, min_score=0.5)
        + case_table(name="top3", image="img/shape0.png", expect_class=other, top_k=3),
    )
    result = invoke(spec, "--json")
    assert result.exit_code == 1
    report = results(result)
    with torch.inference_mode():
        probs = torch.softmax(tiny_model(synthetic.to_tensor(spec_dir["images"][:1])), 1)[0]
    probs = probs.numpy()
    right, wrong, top3 = report["cases"]
    assert by_name(right)["score"]["measured"] == pytest.approx(
        probs[synthetic.CLASSES.index(truth)], abs=1e-5
    )
    p_other = probs[synthetic.CLASSES.index(other)]
    expected_rank = 1 + int((probs > p_other).sum())
    assert by_name(wrong)["class"]["measured"] == expected_rank > 1
    assert not by_name(wrong)["class"]["passed"]
    assert by_name(wrong)["score"]["measured"] == pytest.approx(p_other, abs=1e-5)
    assert not by_name(wrong)["score"]["passed"]
    assert by_name(top3)["class"]["passed"]  # within the top 3
    assert wrong["explained"]["label"] == other  # the map explains the expected class
    assert wrong["prediction"]["label"] == truth
    assert f"rank {expected_rank} (top-1 is '{truth}'" in result.stderr


def test_baselines_pass_against_themselves_and_fail_after_reinitialising_the_last_block(
    spec_dir, tmp_path
):
    folder = spec_dir["folder"] / "baseline-run"
    folder.mkdir()
    for name in ("tiny.pt", "reinit.pt", "labels.txt"):
        (folder / name).symlink_to(spec_dir["folder"] / name)
    (folder / "img").symlink_to(spec_dir["folder"] / "img")
    # target: both models' maps explain the true class, whatever they predict.
    cases = "".join(
        case_table(
            name=f"shape {i}",
            image=f"img/shape{i}.png",
            target=spec_dir["labels"][i],
            baseline=f"baselines/{i}.npy",
            min_iou=0.5,
        )
        for i in range(3)
    )
    spec = write_spec(folder, "spec.toml", model_table() + cases)
    broken = write_spec(folder, "broken.toml", model_table("reinit.pt") + cases)

    missing = invoke(spec)
    assert missing.exit_code == 2
    assert "baselines/0.npy: no such file (create it with camcli check" in missing.stderr

    created = invoke(spec, "--update-baselines", "--json")
    assert created.exit_code == 0, created.output
    assert created.stderr.count("      new  ") == 3
    saved = [np.load(folder / "baselines" / f"{i}.npy", allow_pickle=False) for i in range(3)]
    assert all(a.dtype == np.float32 and a.shape == (16, 16) for a in saved)
    assert [c["baseline_update"]["status"] for c in results(created)["cases"]] == ["new"] * 3
    assert not [p for p in (folder / "baselines").iterdir() if p.name.startswith(".")]

    again = invoke(spec, "--update-baselines")
    assert again.exit_code == 0 and again.stderr.count("unchanged  ") == 3

    same = invoke(spec, "--json")
    assert same.exit_code == 0, same.output
    for case in results(same)["cases"]:
        checks = by_name(case)
        assert checks["baseline-pearson"]["measured"] == pytest.approx(1.0)
        assert checks["baseline-pearson"]["threshold"] == 0.9  # the documented default
        assert checks["baseline-iou"]["measured"] == pytest.approx(1.0)

    failures = tmp_path / "failures"
    changed = invoke(broken, "--json", "--save-failures", failures)
    assert changed.exit_code == 1, changed.output
    report = results(changed)
    for i, case in enumerate(report["cases"]):
        assert case["explained"]["label"] == spec_dir["labels"][i]
        pearson = by_name(case)["baseline-pearson"]
        assert not pearson["passed"] and pearson["measured"] < 0.5
    assert all(not by_name(c)["baseline-iou"]["passed"] for c in report["cases"])
    written = sorted(p.name for p in failures.iterdir())
    assert written == sorted(
        [f"0{i + 1}-shape_{i}.png" for i in range(3)]
        + [f"0{i + 1}-shape_{i}.baseline.png" for i in range(3)]
    )
    overlay = np.asarray(Image.open(failures / "01-shape_0.png"))
    assert overlay.shape == (64, 64, 3)
    assert not np.array_equal(overlay, spec_dir["images"][0])
    assert report["cases"][0]["failure_overlays"] == [
        str(failures / "01-shape_0.png"),
        str(failures / "01-shape_0.baseline.png"),
    ]

    rewritten = invoke(broken, "--update-baselines", "--json")
    assert rewritten.exit_code == 0
    for case in results(rewritten)["cases"]:
        update = case["baseline_update"]
        assert update["status"] == "changed" and update["pearson"] < 0.9
    assert "changed  " in rewritten.stderr and "(vs the old one: r " in rewritten.stderr
    assert not np.array_equal(np.load(folder / "baselines" / "0.npy"), saved[0])


def test_a_baseline_of_another_shape_fails_with_a_hint(spec_dir):
    folder = spec_dir["folder"]
    (folder / "odd").mkdir(exist_ok=True)
    np.save(folder / "odd" / "small.npy", np.ones((4, 4), np.float32))
    spec = write_spec(
        folder,
        "odd.toml",
        model_table() + case_table(image="img/shape1.png", baseline="odd/small.npy"),
    )
    result = invoke(spec, "--json")
    assert result.exit_code == 1
    (check,) = results(result)["cases"][0]["expectations"]
    assert check["measured"] is None
    assert "baseline is 4x4 but the map is 16x16" in check["message"]


def test_defaults_apply_to_the_cases_they_fit(spec_dir):
    spec = write_spec(
        spec_dir["folder"],
        "defaults.toml",
        model_table()
        + "\n[defaults]\nmin_energy = 0.95\npointing = false\nmin_score = 0.0\n"
        + case_table(name="boxed", image="img/shape2.png", box=spec_dir["boxes"][2])
        + case_table(name="classed", image="img/shape2.png", expect_class=spec_dir["labels"][2])
        + case_table(name="own", image="img/shape2.png", box=spec_dir["boxes"][2], min_energy=0.1),
    )
    result = invoke(spec, "--json")
    boxed, classed, own = results(result)["cases"]
    assert set(by_name(boxed)) == {"energy"} and by_name(boxed)["energy"]["threshold"] == 0.95
    assert not by_name(boxed)["energy"]["passed"]
    assert set(by_name(classed)) == {"class", "score"}
    assert by_name(own)["energy"]["passed"] and by_name(own)["energy"]["threshold"] == 0.1
    assert result.exit_code == 1


def test_a_junit_report_of_a_passing_run_and_a_table_on_stderr(spec_dir, tmp_path):
    spec = write_spec(
        spec_dir["folder"],
        "one.toml",
        model_table()
        + case_table(name="red one", image="img/shape3.png", box=spec_dir["boxes"][3]),
    )
    junit = tmp_path / "j.xml"
    result = invoke(spec, "--junit", junit)
    assert result.exit_code == 0
    assert result.stdout == ""  # the table and summary go to stderr
    for column in ("case", "expectation", "measured", "threshold", "result"):
        assert column in result.stderr
    assert "red one" in result.stderr and "pass" in result.stderr
    (testcase,) = ET.parse(junit).getroot().iter("testcase")
    assert testcase.get("name") == "red one: pointing"
    assert testcase.get("classname") == "camcli.one"
    assert list(testcase) == []


# --- a broken model never passes ----------------------------------------------------------

NOT_FINITE = "the model's output is not finite (NaN or inf in the logits)"
SCORES_EQUAL = "all scores are equal (an untrained or zero head?)"


def test_a_diverged_model_fails_every_expectation_of_every_case(
    spec_dir, broken_checkpoints, tmp_path
):
    labels, boxes = spec_dir["labels"], spec_dir["boxes"]
    everything = case_table(
        name="everything", image="img/shape1.png", expect_class=labels[1], min_score=0.0,
        box=boxes[1], min_energy=0.1, insertion_auc_min=0.0,
    )  # fmt: skip
    spec = write_spec(
        spec_dir["folder"],
        "diverged.toml",
        model_table(str(broken_checkpoints["nan"]))
        + case_table(name="class only", image="img/shape0.png", expect_class=labels[0])
        + everything,
    )
    junit = tmp_path / "diverged.xml"
    result = invoke(spec, "--json", "--junit", junit)
    assert result.exit_code == 1, result.output
    report = results(result)
    assert not report["passed"] and report["exit_code"] == 1
    assert report["summary"] == {
        "cases": 2, "failed_cases": 2, "expectations": 6, "passed": 0, "failed": 6,
    }  # fmt: skip
    first, second = report["cases"]
    assert [e["expectation"] for e in first["expectations"]] == ["class"]
    assert [e["expectation"] for e in second["expectations"]] == [
        "class", "score", "pointing", "energy", "insertion_auc",
    ]  # fmt: skip
    for case in report["cases"]:
        assert case["error"] == NOT_FINITE and case["prediction"] is None
        for expectation in case["expectations"]:
            assert not expectation["passed"] and expectation["measured"] is None
            assert expectation["reason"] == NOT_FINITE and NOT_FINITE in expectation["message"]
    root = strict_junit(junit)
    assert root.get("tests") == root.get("errors") == "6" and root.get("failures") == "0"
    assert all(NOT_FINITE in e.get("message") for e in root.iter("error"))
    table = invoke(spec)
    assert table.exit_code == 1 and table.stdout == ""
    assert table.stderr.count("ERROR") == 6 and not re.search(r"\bpass\b", table.stderr)
    assert "FAIL: 0 of 6 expectations passed in 2 cases" in table.stderr


def test_all_scores_equal_is_no_rank_and_no_score(spec_dir, broken_checkpoints, tmp_path):
    # A zero head gives every class the same score: the stable sort ranked class 0 first, and
    # any class passed top_k = 3 of 3 and min_score = 0.
    labels = spec_dir["labels"]
    spec = write_spec(
        spec_dir["folder"],
        "zero-head.toml",
        model_table(str(broken_checkpoints["zero_head"]))
        + case_table(name="first class", image="img/shape0.png", expect_class=synthetic.CLASSES[0])
        + case_table(
            name="top 3", image="img/shape1.png", expect_class=labels[1], top_k=3, min_score=0.0
        ),
    )
    junit = tmp_path / "zero-head.xml"
    result = invoke(spec, "--json", "--junit", junit)
    assert result.exit_code == 1, result.output
    report = results(result)
    first, top3 = report["cases"]
    for case in (first, top3):
        assert case["error"] is None
        assert case["prediction"]["score"] == pytest.approx(1 / 3)
        outcome = by_name(case)["class"]
        assert not outcome["passed"] and outcome["measured"] is None
        assert outcome["reason"] == SCORES_EQUAL
        assert outcome["message"] == f"class: measured no rank, {SCORES_EQUAL}, expected " + (
            "rank <= 1" if case is first else "rank <= 3"
        )
    score = by_name(top3)["score"]
    assert not score["passed"] and score["measured"] == pytest.approx(1 / 3, abs=1e-6)
    assert score["reason"] == SCORES_EQUAL
    root = strict_junit(junit)
    assert root.get("tests") == root.get("failures") == "3" and root.get("errors") == "0"
    assert all(SCORES_EQUAL in f.get("message") for f in root.iter("failure"))
    table = invoke(spec)
    assert table.exit_code == 1 and "FAIL: 0 of 3 expectations passed" in table.stderr
    assert table.stderr.count("no rank, all scores are equal") == 2


def test_a_value_that_is_not_finite_fails_as_null_with_its_reason(spec_dir, tmp_path):
    # SpreadNet divides its input by each channel's spread: a picture gives finite scores and
    # a flat one does not; insertion starts from the all-zero input, so its AUC is NaN.
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "flat.png")
    spec = write_spec(
        tmp_path,
        "spread.toml",
        model_table(str(spec_dir["folder"] / "tiny.pt"))
        .replace(SYNTHETIC_MODEL, SYNTHETIC_MODEL.replace("TinyCAMNet", "SpreadNet"))
        .replace("labels.txt", str(spec_dir["folder"] / "labels.txt"))
        + case_table(name="flat", image="flat.png", expect_class=spec_dir["labels"][0])
        + case_table(
            name="shape", image=str(spec_dir["folder"] / "img/shape0.png"), insertion_auc_min=0.0
        ),
    )
    junit = tmp_path / "spread.xml"
    result = invoke(spec, "--json", "--junit", junit)
    assert result.exit_code == 1, result.output
    flat, shape = results(result)["cases"]
    assert flat["error"] == NOT_FINITE
    assert by_name(flat)["class"]["reason"] == NOT_FINITE
    assert shape["error"] is None and shape["prediction"] is not None
    (insertion,) = shape["expectations"]
    assert insertion == {
        "expectation": "insertion_auc", "passed": False, "measured": None, "threshold": 0.0,
        "reason": "not finite (NaN or inf)",
        "message": "insertion_auc: measured n/a, not finite (NaN or inf), expected >= 0",
    }  # fmt: skip
    root = strict_junit(junit)
    assert root.get("errors") == "1" and root.get("failures") == "1"


# --- spec errors: exit 2, the spec and the case named, nothing computed ------------------


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a map was computed for a bad spec")

    monkeypatch.setattr(camcli.explain.Explainer, "explain", refuse)


def good_case(**overrides) -> dict:
    keys = {"name": "c", "image": "img/shape0.png", "expect_class": "red"}
    keys.update(overrides)
    return {k: v for k, v in keys.items() if v is not None}


SPEC_ERRORS = {
    "unknown key": (
        case_table(**good_case(min_enrgy=0.5)),
        "case 1 ('c'): unknown key 'min_enrgy'; did you mean 'min_energy'?",
    ),
    "unknown model key": (
        "",
        "[model]: unknown key 'inputsize'; did you mean 'input_size'?",
    ),
    "unknown top-level key": (
        '\n[[cases]]\nimage = "x.png"\n' + case_table(**good_case()),
        "top level: unknown key 'cases'; did you mean 'case'?",
    ),
    "wrong type": (
        case_table(**good_case(min_score="high")),
        "case 1 ('c'): min_score must be a number, got string 'high'",
    ),
    "boolean is not a number": (
        case_table(**good_case(top_k=True)),
        "case 1 ('c'): top_k must be an integer, got boolean True",
    ),
    "missing image": (
        case_table(**good_case(image="img/nope.png")),
        "case 1 ('c'): image {folder}/img/nope.png: no such file",
    ),
    "unreadable image": (
        case_table(**good_case(image="broken.png")),
        "case 1 ('c'): image {folder}/broken.png: not an image",
    ),
    "box outside the image": (
        case_table(**good_case(box=[40, 40, 70, 60])),
        "case 1 ('c'): box [40, 40, 70, 60] is outside the 64x64 image",
    ),
    "negative box": (
        case_table(**good_case(boxes=[[0, 0, 5, 5], [-1, 0, 5, 5]])),
        "case 1 ('c'): box [-1, 0, 5, 5] is outside the 64x64 image",
    ),
    "bad box order": (
        case_table(**good_case(box=[30, 10, 20, 40])),
        "case 1 ('c'): box [30, 10, 20, 40]: needs x0 < x1 and y0 < y1",
    ),
    "box of three numbers": (
        case_table(**good_case(box=[1, 2, 3])),
        "case 1 ('c'): box must be [x0, y0, x1, y1] (four numbers), got [1, 2, 3]",
    ),
    "threshold out of range": (
        case_table(**good_case(box=[0, 0, 10, 10], min_energy=1.5)),
        "case 1 ('c'): min_energy must be between 0 and 1, got 1.5",
    ),
    "similarity out of range": (
        case_table(**good_case(baseline="base.npy", min_similarity=-2)),
        "case 1 ('c'): min_similarity must be between -1 and 1, got -2",
    ),
    "missing baseline": (
        case_table(**good_case(baseline="baselines/c.npy")),
        "case 1 ('c'): baseline {folder}/baselines/c.npy: no such file (create it with "
        "camcli check {spec} --update-baselines)",
    ),
    "baseline outside the spec folder": (
        case_table(**good_case(baseline="../elsewhere.npy")),
        "case 1 ('c'): baseline {folder}/../elsewhere.npy must lie inside the spec's folder",
    ),
    "baseline not a map": (
        case_table(**good_case(baseline="vector.npy")),
        "case 1 ('c'): baseline {folder}/vector.npy: expected a 2-D float map, got float32 5",
    ),
    "unknown class name": (
        case_table(**good_case(expect_class="rde")),
        "case 1 ('c'): expect_class: unknown class name 'rde'; did you mean 'red'?",
    ),
    "class index out of range": (
        case_table(**good_case(expect_class=7)),
        "case 1 ('c'): expect_class 7 is out of range: the model has 3 classes (0..2)",
    ),
    "top_k above the class count": (
        case_table(**good_case(top_k=4)),
        "case 1 ('c'): top_k 4: the model has only 3 classes",
    ),
    "unknown target": (
        case_table(**good_case(target="top9")),
        "case 1 ('c'): target 'top9': the model has only 3 classes",
    ),
    "empty cases": ("", "top level: no cases: add at least one [[case]]"),
    "case checks nothing": (
        case_table(name="idle", image="img/shape0.png"),
        "case 1 ('idle'): checks nothing: give expect_class, box or boxes, or baseline",
    ),
    "threshold without its expectation": (
        case_table(**good_case(min_energy=0.3)),
        "case 1 ('c'): min_energy needs a box (box = [x0, y0, x1, y1])",
    ),
    "missing image key": (
        case_table(name="lost", expect_class="red"),
        "case 1 ('lost'): needs an image = \"path\"",
    ),
    "duplicate names": (
        case_table(**good_case()) + case_table(**good_case()),
        "case 2 ('c'): has the same name as case 1; give each case a name",
    ),
    "unknown method": ("", "[model]: unknown method 'gradkam'; did you mean 'gradcam'?"),
    "missing checkpoint": ("", "[model]: checkpoint {folder}/gone.pt: no such file"),
}


def error_spec(folder: Path, key: str, body: str) -> Path:
    model = model_table()
    if key == "unknown model key":
        model += "inputsize = 64\n"
        body = case_table(**good_case())
    elif key == "unknown method":
        model = model_table(method="gradkam")
        body = case_table(**good_case())
    elif key == "missing checkpoint":
        model = model_table("gone.pt")
        body = case_table(**good_case())
    return write_spec(folder, "bad.toml", model + body)


@pytest.mark.parametrize("key", list(SPEC_ERRORS))
def test_spec_errors_exit_2_naming_the_spec_and_case(key, spec_dir, tmp_path, no_compute):
    folder = tmp_path / "spec"
    folder.mkdir()
    for name in ("tiny.pt", "labels.txt"):
        (folder / name).symlink_to(spec_dir["folder"] / name)
    (folder / "img").symlink_to(spec_dir["folder"] / "img")
    (folder / "broken.png").write_bytes(b"not a png at all")
    np.save(folder / "vector.npy", np.ones(5, np.float32))
    np.save(folder / "base.npy", np.ones((16, 16), np.float32))
    body, expected = SPEC_ERRORS[key]
    spec = error_spec(folder, key, body)
    junit = tmp_path / "junit.xml"
    result = invoke(spec, "--junit", junit, "--json")
    assert result.exit_code == 2, result.output
    expected = expected.format(folder=folder, spec=spec)
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"error: {spec}: {expected}") for line in lines), result.stderr
    assert result.stdout == "" and not junit.exists()


def test_every_problem_is_listed_at_once(spec_dir, tmp_path, no_compute):
    folder = tmp_path / "many"
    folder.mkdir()
    for name in ("tiny.pt", "labels.txt"):
        (folder / name).symlink_to(spec_dir["folder"] / name)
    spec = write_spec(
        folder,
        "spec.toml",
        model_table()
        + case_table(name="a", image="missing.png", expect_class="red")
        + case_table(name="b", image="missing.png", expect_class="purple", colour="red"),
    )
    result = invoke(spec)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, result.stderr
    assert "case 1 ('a'): image" in errors[0]
    assert "case 2 ('b'): unknown key 'colour'" in errors[1]
    assert "case 2 ('b'): image" in errors[2]
    assert "case 2 ('b'): expect_class: unknown class name 'purple'" in errors[3]


def test_toml_syntax_error_and_missing_spec_file(tmp_path, no_compute):
    broken = write_spec(tmp_path, "broken.toml", "[model\nmodel = 'x'\n")
    result = invoke(broken)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {broken}: not valid TOML (")
    assert "line 1" in result.stderr
    missing = tmp_path / "nowhere.toml"
    result = invoke(missing)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {missing}: no such spec file"


def test_update_baselines_without_any_baseline_is_an_error(spec_dir, no_compute):
    spec = write_spec(spec_dir["folder"], "nobase.toml", model_table() + case_table(**good_case()))
    result = invoke(spec, "--update-baselines")
    assert result.exit_code == 2
    assert (
        f"error: {spec}: top level: --update-baselines: no case names a baseline" in result.stderr
    )


def test_the_docs_example_spec_is_valid():
    from camcli.check.spec import parse_spec

    root = Path(__file__).resolve().parent.parent
    spec, problems = parse_spec(root / "docs" / "example-check.toml", update_baselines=True)
    assert problems == [] and spec is not None
    assert spec.model.model == "resnet50" and len(spec.cases) >= 2


def test_an_image_that_breaks_during_the_run_errors_and_blocks_baseline_updates(
    spec_dir, tmp_path, monkeypatch
):
    folder = tmp_path / "flaky"
    folder.mkdir()
    for name in ("tiny.pt", "labels.txt"):
        (folder / name).symlink_to(spec_dir["folder"] / name)
    (folder / "img").symlink_to(spec_dir["folder"] / "img")
    spec = write_spec(
        folder,
        "spec.toml",
        model_table()
        + case_table(name="ok", image="img/shape0.png", baseline="b/ok.npy", expect_class="blue")
        + case_table(name="gone", image="img/shape1.png", baseline="b/gone.npy"),
    )
    real_load = camcli.check.cases.load_image

    def flaky(path):
        if Path(path).name == "shape1.png":
            raise InputError(f"{path}: truncated or corrupt image (deleted mid-run)")
        return real_load(path)

    # Validation has read both images already; this one fails when the run reads it again.
    monkeypatch.setattr(camcli.check.cases, "load_image", flaky)
    junit = tmp_path / "j.xml"
    result = invoke(spec, "--update-baselines", "--junit", junit, "--json")
    assert result.exit_code == 1
    assert "not updating any baseline: no map for 'gone'" in result.stderr
    assert not (folder / "b").exists()
    ok, gone = results(result)["cases"]
    assert ok["passed"] and "baseline_update" not in ok
    assert gone["error"].endswith("truncated or corrupt image (deleted mid-run)")
    root = ET.parse(junit).getroot()
    assert root.get("tests") == "2" and root.get("errors") == "1" and root.get("failures") == "0"
    (error,) = root.iter("error")
    assert "deleted mid-run" in error.get("message")


# --- report paths: checked before anything is computed -----------------------------------


def _plain_file(tmp_path: Path) -> Path:
    plain = tmp_path / "plain.txt"
    plain.write_text("a regular file\n")
    return plain


# option, the path given (from tmp_path), the reason the error line must end with
REPORT_PATHS = {
    "junit is a directory": (
        "--junit",
        lambda t: t,
        lambda t: "is a directory; give a file name such as report.xml",
    ),
    "junit below a regular file": (
        "--junit",
        lambda t: _plain_file(t) / "reports" / "junit.xml",
        lambda t: f"cannot be written: {t / 'plain.txt'} is not a directory",
    ),
    "junit in /proc": (
        "--junit",
        lambda t: Path("/proc/camcli-check/junit.xml"),
        lambda t: "cannot be written: cannot create a file in /proc (No such file or directory)",
    ),
    "save-failures is a regular file": (
        "--save-failures",
        _plain_file,
        lambda t: "exists and is not a directory",
    ),
    "save-failures below a regular file": (
        "--save-failures",
        lambda t: _plain_file(t) / "failures",
        lambda t: f"cannot be written: {t / 'plain.txt'} is not a directory",
    ),
    "save-failures in /proc": (
        "--save-failures",
        lambda t: Path("/proc/camcli-check/failures"),
        lambda t: "cannot be written: cannot create a file in /proc (No such file or directory)",
    ),
}


@pytest.mark.parametrize("key", list(REPORT_PATHS))
def test_an_unwritable_report_path_is_exit_2_before_anything_runs(
    key, spec_dir, tmp_path, no_compute
):
    option, make_path, reason = REPORT_PATHS[key]
    corners = [corner_box(b) for b in spec_dir["boxes"][:1]]
    spec = write_spec(
        spec_dir["folder"],
        "paths.toml",
        model_table()
        + case_table(image="img/shape0.png", expect_class=spec_dir["labels"][0], box=corners[0]),
    )
    path = make_path(tmp_path)
    result = invoke(spec, "--json", option, path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {option} {path}: {reason(tmp_path)}"]


def test_save_failures_says_where_and_how_many_and_lists_them_in_json(spec_dir, tmp_path):
    boxes = spec_dir["boxes"]
    spec = write_spec(
        spec_dir["folder"],
        "save.toml",
        model_table()
        + case_table(name="good", image="img/shape0.png", box=boxes[0])
        + case_table(name="bad one", image="img/shape1.png", box=corner_box(boxes[1]))
        + case_table(name="bad two", image="img/shape2.png", box=corner_box(boxes[2])),
    )
    folder = tmp_path / "out" / "failures"
    result = invoke(spec, "--json", "--save-failures", folder)
    assert result.exit_code == 1, result.output
    files = [str(folder / "02-bad_one.png"), str(folder / "03-bad_two.png")]
    assert sorted(str(p) for p in folder.iterdir()) == files
    assert result.stderr.splitlines()[-1] == f"saved 2 failure pictures to {folder}"
    report = results(result)
    assert report["failure_pictures"] == {"folder": str(folder), "files": files}
    assert [c.get("failure_overlays") for c in report["cases"]] == [None, files[:1], files[1:]]

    passing = write_spec(
        spec_dir["folder"],
        "save-pass.toml",
        model_table() + case_table(image="img/shape0.png", box=boxes[0]),
    )
    empty = tmp_path / "none"
    result = invoke(passing, "--json", "--save-failures", empty)
    assert result.exit_code == 0, result.output
    assert (
        result.stderr.splitlines()[-1] == f"saved no failure pictures to {empty}: every case passed"
    )
    assert results(result)["failure_pictures"] == {"folder": str(empty), "files": []}
    assert not empty.exists()
    assert "failure_pictures" not in results(invoke(passing, "--json"))


def test_a_spec_with_two_layers_runs_and_passes(spec_dir):
    # One target per case over two layers once failed every case: the engine freed the
    # forward graph after the first layer's gradients.
    layers = ["features.5", "features.11"]
    spec = write_spec(
        spec_dir["folder"],
        "two-layers.toml",
        model_table(layer=layers)
        + "".join(
            case_table(
                name=f"shape {i}",
                image=f"img/shape{i}.png",
                expect_class=spec_dir["labels"][i],
                box=spec_dir["boxes"][i],
            )
            for i in range(3)
        ),
    )
    result = invoke(spec, "--json")
    assert result.exit_code == 0, result.output
    report = results(result)
    assert report["model"]["layers"] == layers
    assert report["summary"]["failed"] == 0 and report["summary"]["expectations"] == 6
    assert all(c["error"] is None and c["peak"] is not None for c in report["cases"])
    assert "gradcam at features.5+features.11" in result.stderr


def test_the_ci_docs_install_camcli_from_the_repository_with_cpu_torch():
    # `pip install camcli` fetches an unrelated project of that name from the package index.
    text = (Path(__file__).resolve().parent.parent / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```(?:console|yaml)\n(.*?)```", text, flags=re.S)
    installs = [
        line.split("pip install", 1)[1].split("#")[0].split()
        for block in blocks
        for line in block.splitlines()
        if "pip install" in line
    ]
    assert installs and not [args for args in installs if "camcli" in args]
    assert ["./camcli"] in installs and ["dist/camcli-0.1.0-py3-none-any.whl"] in installs
    cpu = ["torch", "torchvision", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert installs.count(cpu) == 3  # the shell example, GitHub Actions and GitLab CI
    for block in blocks:
        if "pip install ./camcli" in block:
            assert block.index("whl/cpu") < block.index("pip install ./camcli")


# --- every problem of a spec in one run, class names included -----------------------------

MORE_CASES = (
    case_table(name="a", image="img/shape0.png", expect_class="rde")
    + case_table(name="b", image="img/shape1.png", expect_class="red", top_k=4)
    + case_table(name="c", box=[1, 2, 3], expect_class="bleu")
)
MORE_CASE_ERRORS = [
    "case 1 ('a'): expect_class: unknown class name 'rde'; did you mean 'red'?",
    "case 2 ('b'): top_k 4: the model has only 3 classes",
    "case 3 ('c'): needs an image = \"path\"",
    "case 3 ('c'): box must be [x0, y0, x1, y1] (four numbers), got [1, 2, 3]",
    "case 3 ('c'): expect_class: unknown class name 'bleu'; did you mean 'blue'?",
]
METHOD_ERROR = "[model]: unknown method 'gradkam'; did you mean 'gradcam'?"
LAYER_ERROR = "[model]: unknown layer 'features.99'; close matches: features.9"
MODEL_PROBLEMS = {
    # the model loads despite these, so class indices and top_k are checked against it
    "unknown method": ({"method": "gradkam"}, [METHOD_ERROR]),
    "unknown layer": ({"layer": "features.99"}, [LAYER_ERROR]),
    "unknown method and layers": (
        {"method": "gradkam", "layer": ["features.99", "features.5", "feature.1"]},
        [METHOD_ERROR, LAYER_ERROR, "[model]: unknown layer 'feature.1'; close matches: "],
    ),
    # no model: class names are checked against the labels file, top_k against its length
    "missing checkpoint": (
        {"checkpoint": "gone.pt"},
        ["[model]: checkpoint {folder}/gone.pt: no such file"],
    ),
    "unknown model key": (
        {"inputsize": 64},
        ["[model]: unknown key 'inputsize'; did you mean 'input_size'?"],
    ),
    "checkpoint that fails to load": ({"checkpoint": "junk.pt"}, ["[model]: {folder}/junk.pt: "]),
}


@pytest.mark.parametrize("key", list(MODEL_PROBLEMS))
def test_model_problems_and_class_problems_are_listed_together(key, spec_dir, tmp_path, no_compute):
    folder = tmp_path / "spec"
    folder.mkdir()
    for name in ("tiny.pt", "labels.txt"):
        (folder / name).symlink_to(spec_dir["folder"] / name)
    (folder / "img").symlink_to(spec_dir["folder"] / "img")
    (folder / "junk.pt").write_bytes(b"not a checkpoint")
    extra, model_errors = MODEL_PROBLEMS[key]
    model = model_table(**extra)
    if "checkpoint" in extra:
        model = model_table(extra["checkpoint"])
    spec = write_spec(folder, "spec.toml", model + MORE_CASES)
    result = invoke(spec)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    expected = [e.format(folder=folder) for e in model_errors] + MORE_CASE_ERRORS
    assert len(errors) == len(expected), result.stderr
    prefix = f"error: {spec}: "
    for wanted in expected:
        assert any(line.startswith(prefix + wanted) for line in errors), (wanted, result.stderr)
