"""The output folder: setup checks, the lock, temp files, modes, the manifest log, --skip-existing."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import camcli.engines.batch
from camcli.cli import app
from camcli.errors import UsageError
from camcli.outfolder import LOCK_FILE, MANIFEST, TEMP_DIR, OutputFolder, compact, read_manifest
from conftest import ROOT, tiny_args

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_bytes().splitlines()]


def hidden(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".")]


def camcli_process(args, *, preexec_fn=None, cwd=ROOT, timeout=300):
    """``python -m camcli ARGS`` in a real process: (returncode, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "camcli", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, preexec_fn=preexec_fn,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


# -- setup checks: exit 2 with one line, before the model loads ---------------------------------


@pytest.mark.parametrize("where", ["file", "below_file", "proc", "sys"])
def test_an_output_folder_that_cannot_be_one_is_exit_2_before_the_model_loads(where, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = {"file": blocker, "below_file": blocker / "sub", "proc": Path("/proc/camcli-x"),
           "sys": Path("/sys/camcli-x")}[where]  # fmt: skip
    # An unknown model: had the model loaded first, the error would be about it.
    result = invoke("run", image, "--out", out, "--model", "resnet5O")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: "), lines
    reason = {"file": "not a folder", "below_file": "is a file", "proc": "No such file",
              "sys": "Operation not permitted"}[where]  # fmt: skip
    assert reason in lines[0]
    assert blocker.read_text() == "not a folder"


def test_a_folder_the_user_cannot_write_is_refused(tmp_path):
    """Tests run as root, who may write anywhere: a forked child drops to ``nobody`` first."""
    out = tmp_path / "root-owned"
    out.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, just the check and its message
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                OutputFolder(out).open().close()
                message = "opened"
            except UsageError as exc:
                message = exc.message
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert message == f"{out}: cannot write to the output folder (Permission denied)"
    assert list(out.iterdir()) == []


def test_a_setup_error_after_the_folder_check_leaves_no_folder_behind(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    out = tmp_path / "new" / "out"
    result = invoke("run", image, "--out", out, "--model", "resnet5O")
    assert result.exit_code == 2 and "unknown model" in result.stderr
    assert not (tmp_path / "new").exists()


# -- the lock ---------------------------------------------------------------------------------


def test_a_second_run_into_a_folder_in_use_exits_2_naming_the_pid(tiny_checkpoint, shapes_dir,
                                                                   tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    out = tmp_path / "out"
    with OutputFolder(out):  # this process is the run in progress
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        code, _, stderr = camcli_process(["run", folder, "--out", out,
                                          *tiny_args(tiny_checkpoint)])  # fmt: skip
        assert code == 2, stderr
        assert stderr.strip() == f"error: {out}: in use by another camcli run (PID {os.getpid()})"
        assert not list(out.rglob("*.jpg"))
    assert not out.exists()  # released: the lock file, temp folder and the empty folder go
    result = invoke("run", folder, "--out", out, *tiny_args(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    assert len(records(out)) == 12 and not hidden(out)


def test_the_lock_is_per_folder_and_released_on_error(tmp_path):
    out = tmp_path / "out"
    first = OutputFolder(out).open()
    with pytest.raises(UsageError, match=r"in use by another camcli run \(PID \d+\)"):
        OutputFolder(out).open()
    OutputFolder(tmp_path / "other").open().close()
    first.close()
    OutputFolder(out).open().close()


def test_temp_files_of_a_killed_run_are_removed_by_the_next(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / TEMP_DIR).mkdir()
    stale = out / TEMP_DIR / ".x.png.gradcam.top1.jpg.1234abcd.tmp"
    stale.write_bytes(b"half")
    old_manifest_tmp = out / ".manifest.abc123.tmp"  # what camcli left before the temp folder
    old_manifest_tmp.write_text("{")
    with OutputFolder(out) as opened:
        assert list(opened.temp_dir.iterdir()) == []
        assert not old_manifest_tmp.exists()
    assert list(out.iterdir()) == []


# -- modes follow the umask -------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_files_are_written_with_the_umask_like_any_program(umask, mode, tiny_checkpoint,
                                                           shapes_dir, tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        result = invoke("run", folder, "--out", out, "-f", "jpg", "-f", "npy",
                        *tiny_args(tiny_checkpoint))  # fmt: skip
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 25  # 12 overlays, 12 maps, the manifest
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(mode)}


# -- a full disk ------------------------------------------------------------------------------


def test_a_full_disk_while_writing_the_manifest_is_one_line_and_exit_2(tiny_checkpoint,
                                                                       shapes_dir, tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"input": "earlier.png", "method": "cam", "layer": "x", "target": "top1",
               "status": "ok", "outputs": [], "pad": "p" * 200}  # fmt: skip
    lines = [json.dumps({**earlier, "input": f"earlier{i}.png"}) for i in range(30)]
    (out / MANIFEST).write_text("\n".join(lines) + "\n")
    before = (out / MANIFEST).read_bytes()
    limit = len(before) + 100  # room for the 1 KiB maps, not for a record more

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code, _, stderr = camcli_process(
        ["run", folder, "--out", out, "-f", "npy", "--quiet", *tiny_args(tiny_checkpoint)],
        preexec_fn=small_disk,
    )
    assert code == 2, stderr
    assert stderr.strip() == f"error: {out / MANIFEST}: cannot write the manifest (File too large)"
    assert not list(out.rglob("*.tmp")) and not hidden(out)
    assert (out / MANIFEST).read_bytes() == before  # no half record appended


# -- the manifest is a log of records ---------------------------------------------------------


def record(input, target="top1", method="gradcam", layer="layer4", **more):
    status = "error" if target is None else "ok"
    return {"input": input, "method": method, "layer": layer, "target": target,
            "status": status, **more}  # fmt: skip


def test_compact_keeps_the_last_record_per_key_in_first_seen_order():
    log = [
        record("a", score=1), record("b", target=None), record("a", method="cam"),
        record("a", score=2), record("b", score=3), record("c", target=None),
        record("c", target=None, error="again"),
    ]  # fmt: skip
    assert compact(log) == [
        record("a", score=2), record("b", score=3), record("a", method="cam"),
        record("c", target=None, error="again"),
    ]  # fmt: skip


def test_compact_keeps_an_earlier_record_for_the_files_the_later_did_not_rewrite():
    jpg, npy = record("a", outputs=["a.jpg"], score=1), record("a", outputs=["a.npy"], score=2)
    both = record("a", outputs=["a.jpg", "a.npy"], score=3)
    assert compact([jpg, npy]) == [jpg, npy]
    assert compact([jpg, npy, both]) == [both]
    assert compact([both, npy]) == [record("a", outputs=["a.jpg"], score=3), npy]


def test_runs_with_other_formats_leave_every_file_with_its_record(tiny_checkpoint, shapes_dir,
                                                                  tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    out = tmp_path / "out"
    for fmt in ("jpg", "npy"):
        result = invoke("run", folder, "--out", out, "-f", fmt, *tiny_args(tiny_checkpoint))
        assert result.exit_code == 0, result.output
    found = records(out)
    outputs = sorted(o for r in found for o in r["outputs"])
    on_disk = sorted(str(p) for p in out.rglob("*") if p.suffix in (".jpg", ".npy"))
    assert outputs == on_disk and len(on_disk) == 24
    assert len(read_manifest(out)) == 12


def test_read_manifest_reads_the_log_a_killed_run_left(tmp_path):
    lines = [json.dumps(record("a", score=1)), json.dumps(record("b", score=1)),
             json.dumps(record("a", score=2)), '{"input": "b", "method": "grad']  # fmt: skip
    (tmp_path / MANIFEST).write_text("\n".join(lines))
    found = read_manifest(tmp_path)
    assert [r["score"] for r in found.values()] == [2, 1]
    with OutputFolder(tmp_path) as folder:  # appending first cuts the half line off
        folder.append([record("c", score=5)])
        folder.compact()
    assert [(r["input"], r["score"]) for r in records(tmp_path)] == [("a", 2), ("b", 1), ("c", 5)]


def test_two_methods_into_one_folder_keep_both_runs_records(tiny_checkpoint, shapes_dir,
                                                            tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    out = tmp_path / "out"
    for method in ("gradcam", "cam", "gradcam"):
        result = invoke("run", folder, "--out", out, "--method", method,
                        *tiny_args(tiny_checkpoint))  # fmt: skip
        assert result.exit_code == 0, result.output
    found = records(out)
    assert len(found) == 24
    assert sorted({r["method"] for r in found}) == ["cam", "gradcam"]
    outputs = [o for r in found for o in r["outputs"]]
    assert sorted(outputs) == sorted(map(str, out.rglob("*.jpg")))
    assert not hidden(out)


# -- --skip-existing compares the settings ----------------------------------------------------


def test_skip_existing_redoes_outputs_of_other_settings_and_layers_live_side_by_side(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    args = [folder, "--out", out, "--skip-existing", "--json", *tiny_args(tiny_checkpoint)]

    def run(*extra):
        result = invoke("run", *args, *extra)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines()]

    first = run("-l", "features.5")
    assert Path(first[0]["outputs"][0]).name.endswith(".gradcam.features.5.top1.jpg")
    assert first[0]["settings"]["layers"] == ["features.5"]
    again = run("-l", "features.5")
    assert all(r["skipped"] for r in again)
    assert [r["score"] for r in again] == [r["score"] for r in first]
    other = run("-l", "features.11")  # another layer: redone, into other files
    assert not any(r.get("skipped") for r in other)
    assert Path(other[0]["outputs"][0]).name.endswith(".gradcam.features.11.top1.jpg")
    assert all(Path(o).exists() for r in first + other for o in r["outputs"])
    faded = run("-l", "features.11", "--alpha", "0.2")  # same files, other pixels: redone
    assert not any(r.get("skipped") for r in faded)
    assert [r["outputs"] for r in faded] == [r["outputs"] for r in other]
    default = run()  # the automatic layer keeps the plain names
    assert Path(default[0]["outputs"][0]).name.endswith(".gradcam.top1.jpg")
    assert len(records(out)) == 36


def test_skip_existing_redoes_a_source_whose_record_is_missing(tiny_checkpoint, shapes_dir,
                                                               tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    out = tmp_path / "out"
    assert invoke("run", folder, "--out", out, *tiny_args(tiny_checkpoint)).exit_code == 0
    kept = records(out)
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in kept[1:]))
    result = invoke("run", folder, "--out", out, "--skip-existing", *tiny_args(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    now = records(out)
    assert len(now) == 12 and all(r["class_index"] is not None for r in now)
    assert sum(bool(r.get("skipped")) for r in now) == 11


# -- one image's failure is its own record ----------------------------------------------------


def test_an_exception_while_rendering_one_image_is_that_images_error_record(
    tiny_checkpoint, shapes_dir, tmp_path, monkeypatch
):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    real = camcli.engines.batch.overlay

    def fragile(image, *args, **kwargs):
        if image.shape[1] == 1:
            raise ValueError("OpenCV cannot resize to 1 px")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(camcli.engines.batch, "overlay", fragile)
    from PIL import Image

    Image.new("RGB", (1, 40), "red").save(folder / "a" / "thin.png")
    result = invoke("run", folder, "--out", out, "-f", "npy", "-f", "jpg",
                    *tiny_args(tiny_checkpoint))  # fmt: skip
    assert result.exit_code == 1, result.output
    found = records(out)
    assert len(found) == 13
    [bad] = [r for r in found if r["status"] == "error"]
    assert (
        bad["error"] == f"{folder / 'a' / 'thin.png'}: failed (ValueError: OpenCV cannot "
        "resize to 1 px)"
    )
    assert not list(out.rglob("thin.png.*"))  # its .npy, written first, is removed again
    assert len(list(out.rglob("*.jpg"))) == 12
