"""Pretrained weights come from torchvision's cache (TORCH_HOME); nothing here downloads."""

from __future__ import annotations

import json
import os
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet18_Weights, get_model
from typer.testing import CliRunner

from camcli.cli import app
from camcli.errors import WeightsUnavailableError
from camcli.models import download, load_model
from conftest import closed_port, random_image

runner = CliRunner()


@dataclass
class Cache:
    home: Path
    calls: list[str]  # URLs a download was attempted for


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Cache:
    """A private, empty TORCH_HOME, and a download function that fails as if offline."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return Cache(home, calls)


def cache_file(cache: Cache) -> Path:
    return cache.home / "hub" / "checkpoints" / os.path.basename(ResNet18_Weights.DEFAULT.url)


def run(tmp_path, *extra):
    image = random_image(tmp_path / "img.png", size=(96, 80))
    out = tmp_path / "out"
    args = ["run", str(image), "--model", "resnet18", "--out", str(out), "--format", "npy"]
    return runner.invoke(app, [*args, "--device", "cpu", "--input-size", "64", *extra]), out


def test_weights_load_from_a_prefilled_cache(tmp_path, torch_home):
    torch.manual_seed(0)
    saved = get_model("resnet18", weights=None).state_dict()
    cached = cache_file(torch_home)
    cached.parent.mkdir(parents=True)
    torch.save(saved, cached)

    result, _ = run(tmp_path, "--json", "--quiet")  # --weights DEFAULT is the default
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    categories = ResNet18_Weights.DEFAULT.meta["categories"]
    assert record["label"] == categories[record["class_index"]]
    assert torch_home.calls == []  # served from the cache, no download attempted

    loaded = load_model("resnet18", device="cpu")
    assert loaded.weights == "IMAGENET1K_V1" and loaded.labels == categories
    state = loaded.model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


@pytest.fixture
def host_answers(monkeypatch):
    """The weights' host accepts connections (the probe passes), so the download is tried."""
    monkeypatch.setattr(download, "_connect", lambda host, port, timeout: None)


def test_empty_cache_without_network_exits_2_with_one_message(tmp_path, torch_home, host_answers):
    result, out = run(tmp_path)
    assert result.exit_code == 2
    assert torch_home.calls == [ResNet18_Weights.DEFAULT.url]
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert str(cache_file(torch_home)) in lines[0]
    assert "--checkpoint" in lines[0] and "not in the cache" in lines[0]
    assert not cache_file(torch_home).exists()
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_cached_file_names_it(torch_home):
    cached = cache_file(torch_home)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot load cached weights") as info:
        load_model("resnet18", device="cpu")
    assert str(cached) in str(info.value) and "--checkpoint" in str(info.value)


def test_offline_never_tries_a_download(tmp_path, torch_home, monkeypatch):
    monkeypatch.delenv("CAMCLI_OFFLINE", raising=False)
    try:
        result, _ = run(tmp_path, "--offline")
    finally:
        os.environ.pop("CAMCLI_OFFLINE", None)  # --offline sets it for this process
    assert result.exit_code == 2
    assert torch_home.calls == []
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "(--offline is set, so nothing is downloaded)" in " ".join(result.output.split())
    assert str(cache_file(torch_home)) in " ".join(result.output.split())


def test_unreachable_host_is_one_line_and_no_download_attempt(tmp_path, torch_home, monkeypatch):
    # A proxy on a closed local port: the probe (which honours the proxy settings, as urllib
    # does) is refused at once, whatever network the machine running the tests has.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    result, _ = run(tmp_path)
    assert result.exit_code == 2
    assert torch_home.calls == []
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "(cannot reach 127.0.0.1:" in lines[0] and "refused" in lines[0]


def test_a_silent_network_is_given_up_on_after_the_timeout(monkeypatch):
    # A resolver or a route that never answers: the probe returns after its timeout, not after
    # the system's own (name resolution has none that a caller can set).
    def hang(address, timeout=None):
        time.sleep(30)

    monkeypatch.setattr(download.socket, "create_connection", hang)
    started = time.monotonic()
    assert download._connect("example.invalid", 443, 0.3) == "no answer within 0.3 s"
    assert time.monotonic() - started < 5


def test_offline_variables_and_proxies(monkeypatch):
    for name in ("CAMCLI_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert download.offline_reason() is None
    assert download._endpoint("https://download.pytorch.org/models/x.pth") == (
        "download.pytorch.org",
        443,
    )
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert download._endpoint("https://huggingface.co/timm/x") == ("proxy.example", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert download._endpoint("https://huggingface.co/timm/x") == ("huggingface.co", 443)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download.offline_reason() == "HF_HUB_OFFLINE=1 is set, so nothing is downloaded"
    monkeypatch.setenv("CAMCLI_OFFLINE", "true")
    assert download.offline_reason() == "--offline is set, so nothing is downloaded"
