"""camcli asks PyTorch for transparent huge pages on large CPU buffers (camcli/startup.py).

Observed the way it matters: the minor page faults a fresh process takes to fill a 400 MiB
tensor after ``import camcli``, against the same process with the user's opt-out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from camcli import startup as hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SMALL_PAGES = 400 * 2**20 // 4096  # the 4 KiB pages of the tensor below

PROBE = """
import os, resource
import camcli
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.ones(100 * 2**20)  # 400 MiB of float32, every page written
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), after - before)
"""


def _probe(value: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != hugepages.VARIABLE}
    if value is not None:
        env[hugepages.VARIABLE] = value
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    setting, faults = done.stdout.split()
    return setting, int(faults)


def _kernel_has_thp() -> bool:
    try:
        mode = THP.read_text()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages: Linux")
def test_import_turns_huge_pages_on_and_the_user_can_turn_them_off():
    setting, faults = _probe(None)
    assert setting == "1"
    off_setting, off_faults = _probe("0")
    assert off_setting == "0"  # the user's choice is kept
    assert off_faults > 0.9 * SMALL_PAGES  # one fault per 4 KiB page without huge pages
    if _kernel_has_thp():
        # 2 MiB pages: 512 times fewer faults (a few extra at the unaligned ends).
        assert faults < SMALL_PAGES / 20, (faults, off_faults)


def test_not_linux_sets_nothing(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hugepages.sys, "platform", "darwin")
    monkeypatch.delenv(hugepages.VARIABLE, raising=False)
    assert hugepages.enable_huge_pages() is False
    assert hugepages.VARIABLE not in os.environ


@pytest.mark.parametrize(("value", "on"), [(None, True), ("1", True), ("0", False)])
def test_linux_default_and_user_values(monkeypatch: pytest.MonkeyPatch, value, on):
    monkeypatch.setattr(hugepages.sys, "platform", "linux")
    if value is None:
        monkeypatch.delenv(hugepages.VARIABLE, raising=False)
    else:
        monkeypatch.setenv(hugepages.VARIABLE, value)
    assert hugepages.enable_huge_pages() is on
    assert os.environ[hugepages.VARIABLE] == (value or "1")
