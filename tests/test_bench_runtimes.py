"""The ``--runtime`` rows of bench.py (benchmarks/runtime_rows.py, issue 25): the export that
the rows leave out of their times is measured apart and made in a cache of the row's own, the
caller's cache setting is given back, and the evaluate row's runtime contenders score the
perturbed passes on the runtime with the values PyTorch gives."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import evaluate_interleaved
import runtime_rows

from camcli.explain import Explainer
from camcli.models import load_model
from conftest import SYNTHETIC_MODEL

pytest.importorskip("onnxruntime")


def test_export_cache_is_emptied_set_and_given_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path / "users"))
    folder = tmp_path / "row"
    (folder / "runtimes").mkdir(parents=True)
    (folder / "runtimes" / "stale.onnx").write_bytes(b"x")
    with runtime_rows.export_cache(folder) as cache:
        assert os.environ["CAMCLI_CACHE_DIR"] == str(folder) == str(cache)
        assert runtime_rows.exported_parts(folder) == 0  # emptied: the first run exports
    assert os.environ["CAMCLI_CACHE_DIR"] == str(tmp_path / "users")
    monkeypatch.delenv("CAMCLI_CACHE_DIR")
    with runtime_rows.export_cache(folder):
        pass
    assert "CAMCLI_CACHE_DIR" not in os.environ


def test_export_seconds_exports_once_in_a_cache_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path / "users"))
    loaded = load_model(SYNTHETIC_MODEL, input_size=64, fit="stretch", device="cpu")
    explainer = Explainer(loaded, "scorecam", runtime="onnxruntime")
    export, setup = runtime_rows.export_seconds(explainer, 1, images=1)
    assert export > 0 and setup > 0
    assert explainer.offload.runtime == "onnxruntime"
    assert explainer.offload.scores is not None  # the masked passes run on the runtime
    # The user's cache was neither read nor written, and stays the one set.
    assert not (tmp_path / "users").exists()
    assert os.environ["CAMCLI_CACHE_DIR"] == str(tmp_path / "users")


def test_export_seconds_refuses_a_runtime_that_did_not_serve():
    loaded = load_model(SYNTHETIC_MODEL, input_size=64, fit="stretch", device="cpu")
    explainer = Explainer(loaded, "scorecam", runtime="torch")
    with pytest.raises(RuntimeError, match="onnxruntime did not serve"):
        runtime_rows.export_seconds(explainer, 1, images=1)


def test_evaluate_worker_on_a_runtime_scores_as_torch_does(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMCLI_CACHE_DIR", str(tmp_path / "cache"))
    on_torch = evaluate_interleaved.worker("camcli", SYNTHETIC_MODEL, 1, 16)
    cold = evaluate_interleaved.worker("camcli-onnxruntime", SYNTHETIC_MODEL, 1, 16)
    warm = evaluate_interleaved.worker("camcli-onnxruntime", SYNTHETIC_MODEL, 1, 16)
    assert len(list((tmp_path / "cache" / "runtimes").glob("*.onnx"))) == 2  # whole, before
    assert cold["setup"] > warm["setup"] > 0  # the first run exported, the second read it
    assert warm["insertion_auc"] == pytest.approx(on_torch["insertion_auc"], abs=1e-4)
    assert 0 < on_torch["insertion_auc"] < 1
    assert evaluate_interleaved.ALLOCATION["camcli-openvino"] is None  # as camcli ships
