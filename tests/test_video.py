"""Videos in, heatmap videos out (``camcli.video``): clips built here with PyAV (a square whose
colour is its class moving across noise), explained by the tiny synthetic model."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from clips import probe, square_frames, write_clip
from PIL import Image

import synthetic
from camcli.config import ExplainSpec, ModelSpec, RunConfig
from camcli.outfolder import MANIFEST, TEMP_DIR, merge_manifest
from camcli.run import run_images
from camcli.shards import parse_shard
from conftest import ROOT, tiny_args

W, H, FRAMES, RATE = 64, 48, 20, 10


def model_spec(ckpt: dict, **more) -> ModelSpec:
    return ModelSpec(model=str(ckpt["model"]), weights="none", checkpoint=ckpt["checkpoint"],
                     labels=ckpt["labels"], device="cpu", input_size=64, fit="stretch",
                     **more)  # fmt: skip


def records(out: Path, name: str = MANIFEST) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def camcli(args, *, preexec_fn=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "camcli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=timeout,
                          preexec_fn=preexec_fn)  # fmt: skip


def leftovers(out: Path) -> list[Path]:
    """Temp files or hidden files left in the output folder."""
    return [p for p in out.rglob("*") if p.is_file() and (p.suffix == ".tmp" or
                                                           p.name.startswith("."))]  # fmt: skip


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, list[tuple]]:
    images, boxes = square_frames(FRAMES, W, H, label=0)
    return write_clip(tmp_path / "clip.mp4", images, rate=RATE), boxes


def run(paths, ckpt, out: Path, *, formats=("jpg", "npy"), targets=(), **config):
    result = run_images([str(p) for p in paths], model_spec(ckpt), ExplainSpec(targets=targets),
                        RunConfig(out=out, formats=formats, batch_size=4, workers=2,
                                  **config))  # fmt: skip
    return result.summary


# -- the one-liner: a folder with an image and a video --------------------------------------


def test_run_on_a_folder_writes_the_overlay_video_maps_and_predictions(tiny_checkpoint,
                                                                        tmp_path):  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    images, boxes = square_frames(FRAMES, W, H, label=0)
    write_clip(folder / "clip.mp4", images, rate=RATE)
    Image.fromarray(synthetic.dataset(1, seed=1)[0][0]).save(folder / "still.png")
    out = tmp_path / "out"
    done = camcli(["run", folder, "-o", out, "-f", "jpg", "-f", "npy", "--json",
                   *tiny_args(tiny_checkpoint)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 of 2 inputs explained; outputs and manifest.jsonl in" in done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["input"] for r in printed] == [str(folder / "clip.mp4"), str(folder / "still.png")]
    assert printed == records(out)

    [video] = [r for r in printed if r["input"].endswith(".mp4")]
    stem = out / "clip.mp4.gradcam.top1"
    mp4, npy, jsonl = (Path(f"{stem}.{ext}") for ext in ("mp4", "npy", "jsonl"))
    assert video["outputs"] == [str(mp4), str(npy), str(jsonl)]
    assert video["predictions"] == str(jsonl)
    assert (video["status"], video["target"], video["label"]) == ("ok", "top1", "red")
    assert video["video"] == {"frames": 20, "explained": 20, "fps": 10.0, "duration": 2.0,
                              "width": 64, "height": 48, "rotation": 0, "codec": "h264",
                              "audio": "aac, copied"}  # fmt: skip

    made = probe(mp4)
    assert (made["codec"], made["pix_fmt"], made["width"], made["height"]) == (
        "h264", "yuv420p", 64, 48)  # fmt: skip
    assert made["rate"] == 10.0 and len(made["frames"]) == 20
    assert made["faststart"]
    assert made["audio"] == "aac" and abs(made["audio_seconds"] - 2.0) < 0.15
    # The overlay is the source's frame under a colormap: not the frame, same size.
    assert np.abs(made["frames"][0].astype(int) - images[0]).mean() > 10

    maps = np.load(npy, allow_pickle=False)
    assert maps.shape == (20, 16, 16) and maps.dtype == np.float32
    # The peak follows the square, frame by frame (16 x 16 maps over a 64 x 48 frame).
    for cam, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
        row, col = np.unravel_index(cam.argmax(), cam.shape)
        assert x0 - 4 <= (col + 0.5) * W / 16 <= x1 + 4
        assert y0 - 4 <= (row + 0.5) * H / 16 <= y1 + 4

    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(20))
    assert [line["time"] for line in lines] == [i / 10 for i in range(20)]
    assert {(line["class_index"], line["label"]) for line in lines} == {(0, "red")}
    assert all(0.5 < line["score"] <= 1 for line in lines)
    assert not leftovers(out)


# -- sampling, targets, smoothing -------------------------------------------------------------


def test_every_fps_a_fixed_target_and_smoothing(tiny_checkpoint, clip, tmp_path):
    path, _ = clip
    full = tmp_path / "full"
    assert run([path], tiny_checkpoint, full, formats=("npy",)).ok == 1
    raw = np.load(full / "clip.mp4.gradcam.top1.npy")

    every = tmp_path / "every"
    run([path], tiny_checkpoint, every, formats=("npy",), every=3)
    maps = np.load(every / "clip.mp4.gradcam.top1.npy")
    lines = (every / "clip.mp4.gradcam.top1.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 3, 6, 9, 12, 15, 18]
    assert maps.shape == raw.shape
    for i in range(20):  # an explained frame's own map, carried over the two after it
        np.testing.assert_allclose(maps[i], raw[i - i % 3], rtol=1e-5, atol=1e-6)
    [record] = records(every)
    assert record["video"]["explained"] == 7 and record["settings"]["every"] == 3

    fps = tmp_path / "fps"
    run([path], tiny_checkpoint, fps, formats=("npy",), fps=2.5)  # every 4th frame at 10 fps
    lines = (fps / "clip.mp4.gradcam.top1.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 4, 8, 12, 16]

    fixed = tmp_path / "fixed"
    run([path], tiny_checkpoint, fixed, formats=("npy",), targets=("blue",))
    lines = [
        json.loads(x)
        for x in (fixed / "clip.mp4.gradcam.class2.jsonl").read_text().split("\n")
        if x
    ]
    assert {(x["class_index"], x["label"]) for x in lines} == {(2, "blue")}
    assert all(x["score"] < 0.5 for x in lines)

    smooth = tmp_path / "smooth"
    run([path], tiny_checkpoint, smooth, formats=("npy",), smooth_frames=3)
    maps = np.load(smooth / "clip.mp4.gradcam.top1.npy")
    for i in range(20):
        expected = raw[max(0, i - 2) : i + 1].mean(axis=0)
        np.testing.assert_allclose(maps[i], expected, rtol=1e-4, atol=1e-6)


def square_centre(rgb: np.ndarray) -> tuple[float, float]:
    """Where the red square is: the centre (row, column) of its pixels."""
    rows, cols = np.nonzero((rgb[..., 0] > 170) & (rgb[..., 1] < 110))
    return float(rows.mean()), float(cols.mean())


# -- orientation, odd sizes, audio that MP4 does not take -------------------------------------


def test_rotation_is_applied_and_odd_sizes_and_pcm_audio_still_play(tiny_checkpoint, tmp_path):
    images, _ = square_frames(6, W, H)
    rotated = write_clip(tmp_path / "phone.mov", images, rotation=90)
    odd_images, _ = square_frames(6, 63, 47)
    odd = write_clip(tmp_path / "odd.avi", [np.pad(i, ((0, 1), (0, 1), (0, 0))) for i in odd_images],
                     codec="mpeg4", audio="pcm_s16le")  # fmt: skip
    out = tmp_path / "out"
    summary = run([rotated, odd], tiny_checkpoint, out, formats=("jpg",), alpha=0.0)
    assert summary.ok == 2, summary.failed

    made = probe(out / "phone.mov.gradcam.top1.mp4")
    assert (made["width"], made["height"]) == (48, 64)  # displayed upright
    for got, source in zip(made["frames"], images, strict=True):  # alpha 0: the frame itself
        assert got.shape == (64, 48, 3)
        assert square_centre(got) == pytest.approx(square_centre(np.rot90(source)), abs=1.0)
    [phone, avi] = records(out)
    assert phone["video"]["rotation"] == 90
    assert (phone["video"]["width"], phone["video"]["height"]) == (48, 64)

    made = probe(out / "odd.avi.gradcam.top1.mp4")
    assert made["codec"] == "h264" and made["width"] % 2 == 0 and made["height"] % 2 == 0
    assert made["audio"] == "aac" and avi["video"]["audio"] == "aac, re-encoded from pcm_s16le"


# -- bad videos: one line each, the batch goes on ---------------------------------------------


def test_bad_videos_are_one_line_errors_and_a_cut_video_keeps_its_frames(tiny_checkpoint,
                                                                         tmp_path):  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    images, _ = square_frames(FRAMES, W, H)
    write_clip(folder / "good.mp4", images)
    whole = write_clip(tmp_path / "fast.mp4", images, audio=None,
                       options={"movflags": "faststart"}).read_bytes()  # fmt: skip
    (folder / "cut.mp4").write_bytes(whole[: int(len(whole) * 0.6)])  # index first, media cut
    late = write_clip(tmp_path / "late.mp4", images).read_bytes()  # index last
    (folder / "truncated.mp4").write_bytes(late[: len(late) // 3])
    (folder / "claims.webm").write_text("not a video at all\n")
    (folder / "empty.mkv").write_bytes(b"")
    with av.open(str(folder / "zero.mkv"), "w") as container:  # a stream, no frames
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    avi = write_clip(tmp_path / "x.avi", images[:3], codec="mpeg4", audio=None).read_bytes()
    (folder / "codec.avi").write_bytes(avi.replace(b"FMP4", b"ZQZQ"))  # a codec nobody knows
    big, _ = square_frames(3, 128, 96)
    write_clip(folder / "big.mkv", big)
    out = tmp_path / "out"
    done = camcli(["run", folder, "-o", out, "--max-pixels", "5000", "-f", "npy",
                   *tiny_args(tiny_checkpoint)])  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    found = {Path(r["input"]).name: r for r in records(out)}
    errors = {name: r["error"] for name, r in found.items() if r["status"] == "error"}
    assert errors == {
        "big.mkv": f"{folder / 'big.mkv'}: 128 x 96 = 12,288 px frames are over the 5,000 px limit "
        "(--max-pixels)",
        "claims.webm": f"{folder / 'claims.webm'}: not a video, or truncated before its first "
        "frame (FFmpeg: invalid data)",
        "codec.avi": f"{folder / 'codec.avi'}: cannot decode its video (unknown codec 'unknown')",
        "empty.mkv": f"{folder / 'empty.mkv'}: empty file",
        "truncated.mp4": f"{folder / 'truncated.mp4'}: not a video, or truncated before its "
        "first frame (FFmpeg: invalid data)",
        "zero.mkv": f"{folder / 'zero.mkv'}: no frames (the file ends before its first)",
    }
    for message in errors.values():
        assert f"error: {message}" in done.stderr.splitlines()
    assert found["good.mp4"]["status"] == "ok" and "warning" not in found["good.mp4"]
    cut = found["cut.mp4"]
    kept = cut["video"]["frames"]
    assert cut["status"] == "ok" and 0 < kept < FRAMES
    assert cut["warning"] == (f"cut short: the stream ends after {kept} of the 20 frames it "
                              f"declares; the {kept} frames before it are kept")  # fmt: skip
    assert np.load(out / "cut.mp4.gradcam.top1.npy").shape == (kept, 16, 16)
    on_disk = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    assert on_disk == [
        f"{n}.mp4.gradcam.top1.{e}" for n in ("cut", "good") for e in ("jsonl", "npy")
    ]


# -- stops and full disks leave nothing partial -----------------------------------------------


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)]
)
def test_a_signal_mid_video_leaves_nothing_of_it_and_a_resume_finishes_it(signum,
                                                                          tiny_checkpoint,
                                                                          tmp_path):  # fmt: skip
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(synthetic.dataset(1, seed=1)[0][0]).save(folder / "a.png")
    images, _ = square_frames(40, W, H)
    write_clip(folder / "b.mp4", images, rate=25)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camcli", "run", str(folder), "-o", str(out), "--json",
               "--method", "scorecam", "--chunk-size", "1", "--batch-size", "1",
               *map(str, tiny_args(tiny_checkpoint))]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          cwd=ROOT, text=True) as process:  # fmt: skip
        first = json.loads(process.stdout.readline())  # the image: the video is next
        assert first["input"].endswith("a.png")
        temp = out / TEMP_DIR
        deadline = time.monotonic() + 60
        while not (temp.is_dir() and any(temp.iterdir())):  # the video's files are growing
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signum)
        rest, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and rest == ""
    assert [r["input"] for r in records(out)] == [first["input"]]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a.png.gradcam.top1.jpg" if False else "a.png.scorecam.top1.jpg",
        MANIFEST,
    ]
    assert not leftovers(out)

    config = {"skip_existing": True, "formats": ("jpg",)}
    explain = ExplainSpec(method="scorecam", chunk_size=32)
    spec = model_spec(tiny_checkpoint)
    result = run_images([str(folder)], spec, explain, RunConfig(out=out, **config))
    assert (result.summary.ok, result.summary.skipped) == (1, 1)
    video = out / "b.mp4.scorecam.top1.mp4"
    stamp = video.stat().st_mtime_ns
    again = run_images([str(folder)], spec, explain, RunConfig(out=out, **config))
    assert (again.summary.ok, again.summary.skipped) == (0, 2)
    assert video.stat().st_mtime_ns == stamp and not leftovers(out)


def test_a_full_disk_while_encoding_is_that_videos_error_and_leaves_no_file(tiny_checkpoint,
                                                                            tmp_path):  # fmt: skip
    images, _ = square_frames(60, 128, 96)
    path = write_clip(tmp_path / "long.mp4", images)
    out = tmp_path / "out"
    limit = 6000  # the manifest's records fit; the overlay video does not

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = camcli(["run", path, "-o", out, "--quiet", *tiny_args(tiny_checkpoint)],
                  preexec_fn=small_disk)  # fmt: skip
    assert done.returncode == 1, done.stderr
    [record] = records(out)
    assert record["status"] == "error"
    assert record["error"].startswith(f"{path}: cannot write output (")
    assert "File too large" in record["error"]
    assert done.stderr.strip() == f"error: {record['error']}"
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == [MANIFEST]
    assert not leftovers(out)


# -- shards split by file ---------------------------------------------------------------------


def test_shards_split_videos_by_file_and_merge(tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        images, _ = square_frames(4, W, H, label=i % 3, seed=i)
        write_clip(folder / f"v{i}.mp4", images, audio=None)
    out = tmp_path / "out"
    seen = []
    for index in range(2):
        summary = run([folder], tiny_checkpoint, out, formats=("npy",),
                      shard=parse_shard(f"{index}/2"))  # fmt: skip
        seen.append(summary.total)
    assert sum(seen) == 4 and all(seen)
    merge_manifest(out)
    found = records(out)
    assert sorted(Path(r["input"]).name for r in found) == [f"v{i}.mp4" for i in range(4)]
    assert [r["label"] for r in sorted(found, key=lambda r: r["input"])] == [
        "red", "green", "blue", "red"]  # fmt: skip


# -- the report: the video beside its first frame, the score over time ------------------------


@pytest.mark.browser
def test_the_report_plays_the_overlay_video_beside_its_first_frame_with_a_score_plot(
    tiny_checkpoint, clip, tmp_path
):
    from playwright.sync_api import sync_playwright
    from test_report import FLAGS, chromium, wait_for_images

    from camcli.report.run import write_run_report

    path, _ = clip
    out = tmp_path / "out"
    assert run([path], tiny_checkpoint, out, formats=("jpg",)).ok == 1
    report, shown, failed = write_run_report(out)
    assert (shown, failed) == (1, 0)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 2000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri())
            still = page.locator("#grid .row img")
            assert still.count() == 1
            wait_for_images(page)
            assert page.evaluate("document.images[0].naturalWidth") == 64  # the first frame
            video = page.locator("#grid .row video")
            assert video.count() == 1
            assert video.get_attribute("src") == "clip.mp4.gradcam.top1.mp4"
            page.evaluate(  # metadata loaded (awaited: the page's policy refuses eval polling)
                "() => { const v = document.querySelector('video'); return v.readyState >= 1 || "
                "new Promise(done => v.addEventListener('loadedmetadata', () => done(true))); }"
            )
            shape = page.evaluate(
                "(v => [v.videoWidth, v.videoHeight, v.duration])(document.querySelector('video'))"
            )
            assert shape[:2] == [64, 48] and abs(shape[2] - 2.0) < 0.15
            points = page.get_attribute("#grid svg.plot polyline", "points").split()
            assert len(points) == 20  # one per explained frame
            ys = [float(p.split(",")[1]) for p in points]
            assert all(0 <= y < 40 for y in ys)  # scores above 0.5 on an 80 px high plot
            assert errors == []
        finally:
            browser.close()


# -- camcli check: a class or a peak in a box over a range of frames --------------------------


def test_check_specs_name_a_video_and_expect_a_class_and_a_box_over_frames(tiny_checkpoint,
                                                                          clip, tmp_path):  # fmt: skip
    path, boxes = clip
    # The square's span over frames 0-3, with a margin of a map cell (4 px).
    x0 = max(0, min(b[0] for b in boxes[:4]) - 4)
    x1 = max(b[2] for b in boxes[:4]) + 4
    y0, y1 = boxes[0][1] - 4, boxes[0][3] + 4
    spec = tmp_path / "video.toml"
    spec.write_text(
        "[model]\n"
        f"model = {json.dumps(str(tiny_checkpoint['model']))}\n"
        f"checkpoint = {json.dumps(str(tiny_checkpoint['checkpoint']))}\n"
        f"labels = {json.dumps(str(tiny_checkpoint['labels']))}\n"
        'input_size = 64\nfit = "stretch"\ndevice = "cpu"\nbatch_size = 4\n\n'
        f'[[case]]\nname = "red, left"\nimage = "{path.name}"\nframes = [0, 3]\n'
        f'expect_class = "red"\nbox = [{x0}, {y0}, {x1}, {y1}]\n\n'
        f'[[case]]\nname = "red, left, late"\nimage = "{path.name}"\nframes = [10, 19]\n'
        f"box = [{x0}, {y0}, {x1}, {y1}]\n\n"
        f'[[case]]\nname = "green"\nimage = "{path.name}"\nexpect_class = "green"\n\n'
        f'[[case]]\nname = "past the end"\nimage = "{path.name}"\nframes = [15, 40]\n'
        'expect_class = "red"\n'
    )
    done = camcli(["check", spec, "--json"])
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    cases = {c["name"]: c for c in report["cases"]}
    assert cases["red, left"]["passed"] is True
    late = cases["red, left, late"]
    assert late["passed"] is False
    [pointing] = [e for e in late["expectations"] if e["expectation"] == "pointing"]
    assert pointing["message"].startswith("pointing: measured frame 10: ")
    assert " (10 of 10 frames fail), expected" in pointing["message"]
    green = cases["green"]
    [outcome] = [e for e in green["expectations"] if e["expectation"] == "class"]
    assert not outcome["passed"] and outcome["message"].startswith("class: measured frame 0: ")
    assert "(20 of 20 frames fail)" in outcome["message"]
    assert cases["past the end"]["passed"] is False
    assert cases["past the end"]["error"] == (
        f"{path}: frames 15 to 40 asked for, the video has 20"
    )
