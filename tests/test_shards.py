"""--shard I/N and camcli manifest merge: the split, shards side by side in one OUT, the merge."""

import fcntl
import json
import os
import subprocess
import sys
import threading
from pathlib import Path, PurePosixPath

import pytest
from typer.testing import CliRunner

from camcli.cli import app
from camcli.engines.batch import RUNTIME_KEYS
from camcli.errors import UsageError
from camcli.outfolder import LOCK_FILE, MANIFEST, OutputFolder, manifest_parts, read_manifest
from camcli.shards import Shard, parse_shard, select_sources, shard_of
from camcli.sources import Source
from conftest import ROOT, tiny_args

runner = CliRunner()

NAMES = [f"{d}/img{i:03d}.png" for d in ("a", "b/c", "") for i in range(40)] + [
    os.fsdecode(b"caf\xe9.png"),  # not UTF-8: surrogate-escaped, as a directory walk gives it
    "caf\u00e9.jpg",
    "with space/x y.png",
]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def hidden(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.startswith(".")]


def sources(names) -> list[Source]:
    return [Source(Path("in") / n, PurePosixPath(n)) for n in names]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def start(args) -> subprocess.Popen:
    """``python -m camcli ARGS`` started in a real process (not waited for)."""
    return subprocess.Popen(
        [sys.executable, "-m", "camcli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(),
    )  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def comparable(record: dict, out: Path) -> dict:
    """A record without what may differ between runs: the output folder, the score's last
    digits (other batches), ``skipped``, where the passes ran and why (each shard's job is its
    own size: auto's reason counts its passes)."""
    kept = {k: v for k, v in record.items() if k not in ("score", "skipped")}
    if "settings" in record:
        kept["settings"] = {k: v for k, v in record["settings"].items() if k not in RUNTIME_KEYS}
    kept["outputs"] = [str(Path(o).relative_to(out)) for o in record["outputs"]]
    kept["score"] = None if record.get("score") is None else round(record["score"], 3)
    return kept


# -- the split --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_the_split_is_disjoint_and_complete(count):
    shares = [select_sources(sources(NAMES), Shard(i, count)) for i in range(count)]
    names = [s.rel.as_posix() for share in shares for s in share]
    assert sorted(names) == sorted(NAMES)  # every name once: complete and disjoint
    if count > 1:
        assert all(shares), "a share of 120+ names is never empty"
    for i, share in enumerate(shares):
        assert all(shard_of(s.rel, count) == i for s in share)


def test_the_split_is_the_sha256_of_the_relative_name():
    import hashlib

    rel = os.fsdecode(b"caf\xe9.png")
    digest = hashlib.sha256(b"caf\xe9.png").hexdigest()
    assert shard_of(PurePosixPath(rel), 7) == int(digest[:16], 16) % 7


@pytest.mark.parametrize("count", [2, 3, 5])
def test_a_names_shard_never_changes_when_names_are_added(count):
    before = {n: shard_of(n, count) for n in NAMES[:50]}
    after = {n: shard_of(n, count) for n in [*NAMES, "new/one.png", "zzz.png"]}
    assert all(after[n] == shard for n, shard in before.items())


def test_the_split_does_not_depend_on_the_input_order():
    forward = select_sources(sources(NAMES), Shard(1, 3))
    backward = select_sources(sources(reversed(NAMES)), Shard(1, 3))
    assert sorted(s.rel for s in forward) == sorted(s.rel for s in backward)
    assert [s.rel for s in forward] == [s.rel for s in sources(NAMES) if s in forward]  # order kept
    assert select_sources(sources(NAMES), None) == sources(NAMES)


def test_parse_shard():
    assert parse_shard("0/1") == Shard(0, 1)
    assert parse_shard("7/8") == Shard(7, 8)
    assert Shard(2, 8).name == "shard-2-of-8"
    for bad in ("3/3", "-1/2", "a/b", "0/0", "1", "1/2/3", ""):
        with pytest.raises(UsageError):
            parse_shard(bad)


@pytest.mark.parametrize("spec", ["3/3", "-1/2", "a/b", "0/0"])
def test_a_bad_shard_is_exit_2_with_one_line(spec, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    out = tmp_path / "out"
    result = invoke("run", image, "--out", out, f"--shard={spec}")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --shard '{spec}': "), lines
    assert not out.exists()


# -- the locks --------------------------------------------------------------------------------


def test_shards_share_the_folder_but_not_with_a_plain_run_or_the_same_shard(tmp_path):
    out = tmp_path / "out"
    pid = f"PID {os.getpid()}"
    first = OutputFolder(out, Shard(0, 3)).open()
    second = OutputFolder(out, Shard(1, 3)).open()  # another shard: side by side
    with pytest.raises(UsageError, match=f"in use by another camcli run \\({pid}\\)"):
        OutputFolder(out, Shard(0, 3)).open()  # the same shard twice
    with pytest.raises(UsageError, match=f"in use by another camcli run \\({pid}\\)"):
        OutputFolder(out).open()  # a plain run (or a merge) while shards run
    first.close()
    with pytest.raises(UsageError, match="in use by another camcli run"):
        OutputFolder(out).open()  # one shard still runs
    OutputFolder(out, Shard(0, 3)).open().close()  # shard 0 may run again
    second.close()
    assert not hidden(out)  # the last shard out removed the common lock file
    plain = OutputFolder(out).open()
    with pytest.raises(UsageError, match=f"in use by another camcli run \\({pid}\\)"):
        OutputFolder(out, Shard(2, 3)).open()  # a shard while a plain run runs
    plain.close()
    assert list(out.iterdir()) == []


def test_a_shard_waits_out_the_moment_the_last_shard_leaving_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a shard that leaves last does, to remove the file
    threading.Timer(0.02, os.close, [fd]).start()  # well inside the 0.5 s patience
    OutputFolder(out, Shard(0, 2)).open().close()


def test_same_shard_twice_and_a_plain_run_beside_a_shard_exit_2_naming_the_pid(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    args = [folder, "--out", out, *tiny_args(tiny_checkpoint)]
    message = f"error: {out}: in use by another camcli run (PID {os.getpid()})"
    with OutputFolder(out, Shard(1, 3)):  # this process is shard 1 of 3, running
        same = invoke("run", *args, "--shard", "1/3")
        assert same.exit_code == 2 and same.stderr.strip() == message, same.output
        plain = invoke("run", *args)
        assert plain.exit_code == 2 and plain.stderr.strip() == message, plain.output
        merge = invoke("manifest", "merge", out)
        assert merge.exit_code == 2 and merge.stderr.strip() == message, merge.output
        other = invoke("run", *args, "--shard", "0/3")  # another shard is not blocked
        assert other.exit_code == 0, other.output
        assert (out / "manifest.shard-0-of-3.jsonl").exists() and not (out / MANIFEST).exists()
        made = [p.relative_to(out).as_posix() for p in out.rglob("*.jpg")]
        assert made and all(shard_of(m.split(".")[0] + ".png", 3) == 0 for m in made)
    with OutputFolder(out):  # a plain run holds the folder: no shard starts
        shard = invoke("run", *args, "--shard", "2/3")
        assert shard.exit_code == 2 and shard.stderr.strip() == message, shard.output


# -- merging ----------------------------------------------------------------------------------


def rec(input, score, target="top1"):
    return {"input": input, "method": "gradcam", "layer": "l", "target": target,
            "status": "ok", "outputs": [f"{input}.jpg"], "score": score}  # fmt: skip


def lines(*found):
    return "".join(json.dumps(r) + "\n" for r in found)


def test_merge_joins_the_parts_after_the_manifest_in_shard_order_then_removes_them(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(lines(rec("a", 1), rec("b", 1)))
    (out / "manifest.shard-1-of-2.jsonl").write_text(lines(rec("c", 3), rec("a", 3)))
    (out / "manifest.shard-0-of-2.jsonl").write_text(lines(rec("a", 2), rec("d", 2)) + '{"inp')
    (out / "manifest.shard-x-of-2.jsonl").write_text("not a part")
    assert [p.name for p in manifest_parts(out)] == [
        "manifest.shard-0-of-2.jsonl", "manifest.shard-1-of-2.jsonl"
    ]  # fmt: skip
    result = invoke("manifest", "merge", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"merged 2 parts (4 records) into {out / MANIFEST}"
    merged = records(out / MANIFEST)
    assert [(r["input"], r["score"]) for r in merged] == [("a", 3), ("b", 1), ("d", 2), ("c", 3)]
    assert manifest_parts(out) == [] and not hidden(out)
    again = invoke("manifest", "merge", out)
    assert again.stdout.strip() == f"merged 0 parts (0 records) into {out / MANIFEST}"
    assert records(out / MANIFEST) == merged


def test_a_merge_that_crashed_before_removing_the_parts_merges_to_the_same(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    part = out / "manifest.shard-0-of-1.jsonl"
    (out / MANIFEST).write_text(lines(rec("a", 1), rec("b", 1)))
    part.write_text(lines(rec("b", 2), rec("c", 2)))
    saved = part.read_bytes()
    with OutputFolder(out) as folder:  # a plain run merges first
        assert folder.merged == (1, 3)
    merged = (out / MANIFEST).read_bytes()
    part.write_bytes(saved)  # as if killed after writing the manifest, before removing it
    with OutputFolder(out) as folder:
        assert folder.merged == (1, 3)
    assert (out / MANIFEST).read_bytes() == merged and not part.exists()


def test_merge_of_a_folder_that_is_not_one_is_exit_2(tmp_path):
    result = invoke("manifest", "merge", tmp_path / "missing")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing'}: no such folder"


def test_skip_existing_in_a_shard_reads_the_manifest_and_its_own_part(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text(lines(rec("a", 1), rec("b", 1)))
    (out / "manifest.shard-0-of-2.jsonl").write_text(lines(rec("b", 2)))
    (out / "manifest.shard-1-of-2.jsonl").write_text(lines(rec("c", 3)))
    with OutputFolder(out, Shard(0, 2)) as folder:
        previous = folder.previous()
    assert {k[0]: r["score"] for k, r in previous.items()} == {"a": 1, "b": 2}
    assert read_manifest(out).keys() == {
        ("a", "gradcam", "l", "top1"),
        ("b", "gradcam", "l", "top1"),
    }


# -- three shards at once into one folder -----------------------------------------------------


def test_three_concurrent_shards_then_merge_equal_one_plain_run(tiny_checkpoint, shapes_dir,
                                                                tmp_path):  # fmt: skip
    folder, _ = shapes_dir
    out, single = tmp_path / "out", tmp_path / "single"
    args = [folder, "--out", out, "-f", "jpg", "-f", "npy", "--quiet", *tiny_args(tiny_checkpoint)]
    processes = [start(["run", *args, "--shard", f"{i}/3"]) for i in range(3)]
    for process in processes:
        code, _, stderr = finish(process)
        assert code == 0, stderr
    parts = manifest_parts(out)
    assert [p.name for p in parts] == [f"manifest.shard-{i}-of-3.jsonl" for i in range(3)]
    assert not (out / MANIFEST).exists() and not hidden(out)  # locks and temp folders gone
    counts = [len(records(p)) for p in parts]
    assert sum(counts) == 12 and all(counts)  # 12 names over 3 shards: none is empty

    # Rerun a shard with --skip-existing, before and after the merge: nothing is rewritten.
    files = sorted(p for p in out.rglob("*") if p.suffix in (".jpg", ".npy"))
    mtimes = [p.stat().st_mtime_ns for p in files]
    rerun = invoke("run", *args, "--shard", "1/3", "--skip-existing", "--json")
    assert rerun.exit_code == 0, rerun.output
    again = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert len(again) == counts[1] and all(r["skipped"] for r in again)

    code, stdout, stderr = finish(start(["manifest", "merge", out]))
    assert code == 0, stderr
    assert stdout.strip() == f"merged 3 parts (12 records) into {out / MANIFEST}"
    assert manifest_parts(out) == [] and not hidden(out)

    rerun = invoke("run", *args, "--shard", "2/3", "--skip-existing", "--json")
    assert rerun.exit_code == 0, rerun.output
    again = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert len(again) == counts[2] and all(r["skipped"] for r in again)
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert invoke("manifest", "merge", out).exit_code == 0

    result = invoke("run", *[single if a == out else a for a in args])
    assert result.exit_code == 0, result.output
    merged = records(out / MANIFEST)
    expected = records(single / MANIFEST)
    key = lambda r: r["input"]  # noqa: E731
    assert sorted((comparable(r, out) for r in merged), key=key) == sorted(
        (comparable(r, single) for r in expected), key=key
    )
    outputs = sorted(o for r in merged for o in r["outputs"])
    assert outputs == sorted(map(str, files)) and len(files) == 24  # every file has its record


def test_the_next_plain_run_merges_the_parts_first(tiny_checkpoint, shapes_dir, tmp_path):
    folder, _ = shapes_dir
    out = tmp_path / "out"
    args = [folder, "--out", out, *tiny_args(tiny_checkpoint)]
    assert invoke("run", *args, "--shard", "0/2").exit_code == 0
    shard0 = {r["input"] for r in records(out / "manifest.shard-0-of-2.jsonl")}
    result = invoke("run", *args, "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    done = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["input"] for r in done if r.get("skipped")} == shard0
    assert manifest_parts(out) == [] and len(records(out / MANIFEST)) == 12
    assert not hidden(out)


def test_the_closing_line_names_the_shards_part_and_an_empty_shard_says_so(
    tiny_checkpoint, shapes_dir, tmp_path
):
    folder, _ = shapes_dir
    rels = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*.png"))]
    count = 64
    empty = next(i for i in range(count) if all(shard_of(r, count) != i for r in rels))
    full = shard_of(rels[0], count)
    out = tmp_path / "out"
    args = ["run", str(folder), "--out", str(out), *tiny_args(tiny_checkpoint)]
    result = invoke(*args, "--shard", f"{full}/{count}")
    assert result.exit_code == 0, result.output
    assert f"manifest.shard-{full}-of-{count}.jsonl in {out}" in result.stderr
    result = invoke(*args, "--shard", f"{empty}/{count}")
    assert result.exit_code == 0, result.output
    assert "no images in this shard; nothing written" in result.stderr
