"""What `camcli run` shows: stdout for records, stderr for people (a real terminal or a pipe)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import warnings
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import camcli.engines.batch
import camcli.run
from camcli.cli import app
from camcli.display import RunDisplay
from camcli.errors import CamcliWarning
from conftest import ROOT, tiny_args

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def camcli_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "camcli", *map(str, args)]


def camcli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "120"}
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "CAMCLI_DEBUG"):
        env.pop(name, None)
    return env


def run_with_terminal_stderr(command: list[str]) -> tuple[int, str, str]:
    """Run ``command`` with stderr on a pseudo-terminal and stdout on a pipe.

    Returns (exit code, stdout, what the terminal showed with escape codes removed).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    shown: list[bytes] = []

    def read_terminal() -> None:  # a pty's buffer is small: drain it while the run goes on
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child has closed its end
                return
            if not data:
                return
            shown.append(data)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
        cwd=ROOT, env=camcli_env(),
    ) as proc:  # fmt: skip
        os.close(slave)
        stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    terminal = ANSI.sub("", b"".join(shown).decode("utf-8", "replace"))
    return proc.returncode, stdout.decode(), terminal


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_on_a_terminal_stdout_gets_exactly_the_json_and_stderr_the_progress_and_table(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    broken = folder / "a" / "broken.png"
    broken.write_text("not a picture")
    out = tmp_path / "out"
    command = camcli_command("run", folder, "-o", out, "--json", *tiny_args(tiny_checkpoint))
    code, stdout, terminal = run_with_terminal_stderr(command)
    assert code == 1, terminal
    records = manifest(out)
    assert len(records) == 13
    assert stdout == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    assert '"input"' not in terminal  # no record was drawn on the terminal
    assert re.search(r" 13/13 .*img/s", terminal), terminal
    assert terminal.count(f"error: {broken}: not an image") == 1
    assert "1 of 13 inputs failed" in terminal  # the table, on a terminal only
    assert "12 of 13 images explained, 1 failed; outputs and manifest.jsonl in" in terminal
    assert "Traceback" not in terminal


def test_json_into_head_ends_quietly_with_141_and_the_manifest_lists_every_output(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    read_end, write_end = os.pipe()
    # The smallest pipe buffer (one page): the records cannot all fit in it before head exits.
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    command = camcli_command(
        "run", folder, "-o", out, "--json", "--top-k", "3", "--batch-size", "2",
        *tiny_args(tiny_checkpoint),
    )  # fmt: skip
    head = subprocess.Popen(["head", "-1"], stdin=read_end, stdout=subprocess.PIPE)
    os.close(read_end)
    run = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
        cwd=ROOT, env=camcli_env(),
    )  # fmt: skip
    os.close(write_end)
    first, _ = head.communicate(timeout=300)
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 141, stderr.decode()
    assert stderr.decode() == ""  # no traceback, no "Exception ignored", no summary
    records = manifest(out)
    assert json.loads(first) == records[0]
    listed = {path for record in records for path in record["outputs"]}
    assert {str(p) for p in out.rglob("*.jpg")} <= listed


def test_without_a_terminal_each_failure_is_one_line_and_quiet_drops_the_summary(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    (folder / "a" / "empty.jpg").write_bytes(b"")
    (folder / "b" / "text.png").write_text("hello")
    args = ["run", str(folder), *map(str, tiny_args(tiny_checkpoint))]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "loud")])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert lines[0] == f"error: {folder / 'a' / 'empty.jpg'}: empty file"
    assert lines[1].startswith(f"error: {folder / 'b' / 'text.png'}: not an image")
    assert lines[2] == (
        f"12 of 14 images explained, 2 failed; outputs and manifest.jsonl in {tmp_path / 'loud'}"
    )
    quiet = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "quiet"), "-q"])
    assert quiet.exit_code == 1
    assert quiet.stderr.splitlines() == lines[:2]


def test_each_distinct_warning_is_one_line_from_setup_threads_and_records(
    tiny_checkpoint, shapes_dir, tmp_path, monkeypatch
):
    folder, _ = shapes_dir
    real_parse, real_overlay, real_pipeline = (
        camcli.run.parse_targets, camcli.engines.batch.overlay, camcli.run.Pipeline,
    )  # fmt: skip

    def parse_targets(*args, **kwargs):  # setup, in the main thread, twice
        warnings.warn("targets look odd", CamcliWarning, stacklevel=1)
        warnings.warn("targets look odd", CamcliWarning, stacklevel=1)
        return real_parse(*args, **kwargs)

    def overlay(*args, **kwargs):  # during the run, in a writer thread, once per image
        warnings.warn("overlay is faint", CamcliWarning, stacklevel=1)
        return real_overlay(*args, **kwargs)

    def pipeline(*args, on_record, **kwargs):  # a record that carries a warning, every time
        return real_pipeline(
            *args, on_record=lambda record: on_record({**record, "warning": "blank map"}),
            **kwargs,
        )  # fmt: skip

    monkeypatch.setattr(camcli.run, "parse_targets", parse_targets)
    monkeypatch.setattr(camcli.engines.batch, "overlay", overlay)
    monkeypatch.setattr(camcli.run, "Pipeline", pipeline)
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(folder),
            "-o",
            str(tmp_path / "out"),
            "-q",
            *map(str, tiny_args(tiny_checkpoint)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: targets look odd",
        "warning: overlay is faint",
        "warning: blank map",
    ]
    for _ in range(2):  # the next run hears them again: "once" is per run, not per process
        again = CliRunner().invoke(
            app,
            [
                "run",
                str(folder),
                "-o",
                str(tmp_path / "again"),
                "-q",
                *map(str, tiny_args(tiny_checkpoint)),
            ],
        )
        assert again.stderr.splitlines()[0] == "warning: targets look odd"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def shown(display: RunDisplay) -> list[str]:
    """The progress lines as a terminal shows them now, spaces collapsed, the bars left out."""
    console = Console(width=120, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        console.print(display.progress.get_renderable())
    lines = capture.get().splitlines()
    return [" ".join(w for w in line.split() if not set(w) <= set("━╸╺")) for line in lines]


def test_rate_and_eta_are_whole_run_figures_and_passes_are_counted_as_passes():
    clock = FakeClock()
    console = Console(width=120, file=io.StringIO(), force_terminal=True)
    display = RunDisplay(quiet=False, json_lines=False, console=console, get_time=clock)
    with display.running("gradcam resnet50", total=1000):
        clock.now += 4.0  # the first batch: 16 images come out at once, 4 s after the start
        for _ in range(16):
            display.advance(1)
            clock.now += 0.0001
        clock.now = 104.0
        assert shown(display) == ["gradcam resnet50 16/1000 4.0 img/s 0:00:04 eta 0:04:06"]
        clock.now = 108.0  # a slow batch: no image for 4 s, so the rate drops, the ETA grows
        assert shown(display) == ["gradcam resnet50 16/1000 2.0 img/s 0:00:08 eta 0:08:12"]
        for done in (32, 64, 32, 64):  # two batches of a Score-CAM-like method, 64 passes each
            display.passes(done, 64)
        display.passes(16, 64)
        clock.now = 110.0
        assert shown(display)[1] == "forward passes 16/64 14.4 passes/s 0:00:10 eta 0:00:03"


@pytest.mark.parametrize(
    "args",
    [
        ["models"],
        ["methods"],
        ["methods", "--json"],
        ["layers", "resnet18"],
        ["layers", "resnet18", "--json"],
    ],
    ids=" ".join,
)
def test_every_listing_into_a_closed_pipe_ends_quietly_with_141(args):
    """`camcli models | head -1`: the reader is gone before the first line (its end of the
    pipe is closed before camcli starts), as when head has read what it wanted."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    done = subprocess.run(
        camcli_command(*args), stdin=subprocess.DEVNULL, stdout=write_end,
        stderr=subprocess.PIPE, cwd=ROOT, env=camcli_env(), timeout=300, check=False,
    )  # fmt: skip
    os.close(write_end)
    assert done.returncode == 141, done.stderr.decode()
    assert done.stderr.decode() == ""  # no traceback, no "Exception ignored"


def test_every_command_maps_errors_in_one_place(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """A bug in check, evaluate's library or a listing: one line and exit 2, no traceback; a
    camcli error: its message and code; a command's own exit code passes through."""
    import camcli.check
    import camcli.evaluate

    def bug(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(camcli.check, "run_check", bug)
    monkeypatch.setattr(camcli.evaluate, "prepare", bug)
    spec = tmp_path / "spec.toml"
    spec.write_text("")
    for args in (["check", str(spec)], ["evaluate", str(tmp_path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == (
            "error: internal error: ValueError: boom (set CAMCLI_DEBUG=1 for the traceback)"
        )
    result = CliRunner().invoke(app, ["models", "no-such-model"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "no model matches 'no-such-model'"
    result = CliRunner().invoke(app, ["manifest", "merge", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "missing" in result.stderr
