"""``camcli run`` over a folder of odd and hostile files (issue 9).

Every good image is written at its displayed size; every bad one is exactly one line on
stderr and one error record; nothing hangs (a FIFO), blows up memory (a 170-byte 65000 x 1 px
PNG, a PNG declaring 12000 x 12000 px) or prints a traceback; the output folder inside the
input folder is never explained; no temp file is left.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from camcli.images import display_path
from conftest import ROOT, random_image, tiny_args

# Runs the real CLI (as ``python -m camcli`` does) and writes its own peak RSS (VmHWM: the
# child's ru_maxrss would carry over the forking pytest process's peak) next to it.
_CLI_WITH_PEAK = """
import atexit, os, runpy, sys

def peak():
    with open("/proc/self/status") as status, open(os.environ["PEAK_FILE"], "w") as out:
        out.write(status.read().split("VmHWM:")[1].split()[0])

atexit.register(peak)
sys.argv[0] = "camcli"
runpy.run_module("camcli", run_name="__main__", alter_sys=True)
"""


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG declaring ``width`` x ``height`` px with one byte of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _unprivileged() -> None:
    """In the child, before exec: as root, give up reading what file modes forbid."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, out of the bounding set
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _hostile_folder(folder: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Good images (name -> displayed (width, height)) and bad files (name -> reason)."""
    folder.mkdir()
    good: dict[str, tuple[int, int]] = {}
    for name, size in [("a.png", (80, 60)), ("one.png", (1, 1)), ("thin.png", (2, 300)),
                       ("flat.png", (300, 2))]:  # fmt: skip
        random_image(folder / name, size=size)
        good[name] = size
    Image.new("RGB", (65000, 1), (200, 30, 30)).save(folder / "wide.png")
    good["wide.png"] = (65000, 1)
    assert (folder / "wide.png").stat().st_size < 1000  # a tiny file of extreme aspect
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    Image.new("RGB", (40, 20), (10, 200, 30)).save(folder / "rotated.jpg", exif=exif)
    good["rotated.jpg"] = (20, 40)
    odd = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png")  # not UTF-8
    Image.fromarray(np.full((30, 50, 3), 90, np.uint8)).save(odd, format="PNG")
    good[os.path.basename(odd)] = (50, 30)

    bad: dict[str, str] = {}
    _png_header(folder / "huge.png", 12000, 12000)
    bad["huge.png"] = "12000 x 12000 = 144.0 MP is over the 100.0 MP limit (--max-pixels)"
    os.mkfifo(folder / "pipe.png")
    bad["pipe.png"] = "not a regular file"
    (folder / "loop.jpg").symlink_to("loop.jpg")
    bad["loop.jpg"] = "Too many levels of symbolic links"
    (folder / "dangling.jpg").symlink_to("gone.jpg")
    bad["dangling.jpg"] = "no such file"
    random_image(folder / "secret.png").chmod(0)
    bad["secret.png"] = "permission denied"
    locked = folder / "locked"  # a folder that cannot be listed: its images do not vanish
    locked.mkdir()
    random_image(locked / "inside.png")
    locked.chmod(0)
    bad["locked"] = "cannot list this folder (permission denied)"
    (folder / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file"
    (folder / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\nshowpage\n")
    bad["eps.jpg"] = "not an image, or a format camcli does not read"
    return good, bad


def test_a_folder_of_odd_and_hostile_files(tmp_path, tiny_checkpoint):
    folder = tmp_path / "in"
    good, bad = _hostile_folder(folder)
    out = folder / "out"  # inside the input folder: its files are never inputs
    out.mkdir()
    stale = random_image(out / "earlier.png")
    peak_file = tmp_path / "peak"
    env = {**os.environ, "PEAK_FILE": str(peak_file), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", _CLI_WITH_PEAK, "run", str(folder), "-o", str(out),
               *tiny_args(tiny_checkpoint), "--fit", "crop", "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=300, env=env,
                          preexec_fn=_unprivileged, cwd=tmp_path)  # fmt: skip
    stdout = done.stdout.decode("utf-8", "replace")
    stderr = done.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    assert done.returncode == 1, stderr[-3000:]

    # each bad file: exactly one line on stderr, naming it and the reason
    lines = stderr.splitlines()
    for name, reason in bad.items():
        shown = display_path(folder / name)
        mine = [line for line in lines if shown in line]
        assert mine == [f"error: {shown}: {reason}"], (name, mine)
    assert len([line for line in lines if line.startswith("error:")]) == len(bad), stderr

    # the manifest: one error record per bad file, one ok record per good one
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [json.loads(line) for line in stdout.splitlines()] == manifest
    errors = [r for r in manifest if r["status"] == "error"]
    assert sorted(r["error"] for r in errors) == sorted(
        f"{display_path(folder / name)}: {reason}" for name, reason in bad.items()
    )
    assert len([r for r in manifest if r["status"] == "ok"]) == len(good)
    assert not any("earlier.png" in r["input"] for r in manifest)

    # every good image written at its displayed size, and nothing else left in OUT
    written = {p for p in out.rglob("*") if p.is_file()}
    for name, size in good.items():
        mine = [p for p in written if p.name.startswith(f"{name}.")]
        assert len(mine) == 1, (name, mine)
        with Image.open(mine[0]) as picture:
            assert picture.size == size, name
    outputs = {p for name in good for p in written if p.name.startswith(f"{name}.")}
    assert written == outputs | {out / "manifest.jsonl", stale}

    assert int(peak_file.read_text()) < 2 * 1024 * 1024  # kB: under 2 GB


def test_a_missing_file_named_on_the_command_line_is_one_failed_input(tmp_path, tiny_checkpoint):
    image = random_image(tmp_path / "a.png")
    missing = tmp_path / "missing.png"
    command = [sys.executable, "-m", "camcli", "run", str(missing), str(image), "-o",
               str(tmp_path / "out"), *tiny_args(tiny_checkpoint), "--quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"error: {missing}: no such file"]
    records = (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(r)["status"] for r in records] == ["error", "ok"]
