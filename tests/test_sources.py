import io
import os
from pathlib import Path, PurePosixPath

import pytest

from camcli.errors import InputError, UsageError
from camcli.images import load_image
from camcli.sources import collect_sources


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_directory_walk_is_recursive_sorted_and_skips_hidden(tmp_path):
    for rel in ["b/z.jpg", "a/y.png", "a/x.JPG", ".hidden/h.jpg", "a/.secret.jpg", "notes.txt"]:
        touch(tmp_path / rel)
    sources = collect_sources([str(tmp_path)])
    assert [s.rel.as_posix() for s in sources] == ["a/x.JPG", "a/y.png", "b/z.jpg"]
    assert sources[0].path == tmp_path / "a" / "x.JPG"


def test_files_keep_their_name_and_collisions_get_suffixes(tmp_path):
    one = touch(tmp_path / "a" / "x.jpg")
    two = touch(tmp_path / "b" / "x.jpg")
    three = touch(tmp_path / "b" / "X.jpg")
    sources = collect_sources([str(one), str(two), str(three)])
    assert [s.rel.as_posix() for s in sources] == ["x.jpg", "x.jpg~2", "X.jpg~3"]


def test_duplicates_are_dropped(tmp_path):
    one = touch(tmp_path / "x.jpg")
    sources = collect_sources([str(one), str(tmp_path), str(one)])
    assert len(sources) == 1


def test_glob_mirrors_below_the_fixed_prefix(tmp_path):
    touch(tmp_path / "p" / "q" / "1.jpg")
    touch(tmp_path / "p" / "2.jpg")
    touch(tmp_path / "p" / "3.png")
    sources = collect_sources([str(tmp_path / "p" / "**" / "*.jpg")])
    assert [s.rel.as_posix() for s in sources] == ["2.jpg", "q/1.jpg"]


def test_stdin_lists_paths_and_keeps_missing_ones_for_per_file_errors(tmp_path):
    one = touch(tmp_path / "one.jpg")
    stdin = io.StringIO(f"{one}\n\n{tmp_path / 'missing.jpg'}\n")
    sources = collect_sources(["-"], stdin)
    assert [s.path for s in sources] == [one, tmp_path / "missing.jpg"]


def test_empty_glob_and_empty_dir_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no file matches this pattern"):
        collect_sources([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found"):
        collect_sources([str(tmp_path / "empty")])


def test_a_missing_named_file_is_a_source_that_fails_when_loaded(tmp_path):
    good = touch(tmp_path / "good.jpg")
    sources = collect_sources([str(tmp_path / "nope.jpg"), str(good)])
    assert [s.path for s in sources] == [tmp_path / "nope.jpg", good]
    with pytest.raises(InputError) as info:
        load_image(sources[0].path)
    assert str(info.value) == f"{tmp_path / 'nope.jpg'}: no such file"


def test_special_files_and_broken_links_are_listed_for_one_error_each(tmp_path):
    touch(tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "dangling.jpg").symlink_to("gone.jpg")
    for args in ([str(tmp_path)], [str(tmp_path / "*.*")]):
        rels = [s.rel.as_posix() for s in collect_sources(args)]
        assert rels == ["a.jpg", "dangling.jpg", "loop.jpg", "pipe.png"], args


def test_names_that_are_not_utf8_from_walks_globs_and_stdin(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        f.write(b"x")
    name = os.fsdecode(raw)  # surrogate-escaped, as Python gives it
    walked = collect_sources([str(tmp_path)])
    globbed = collect_sources([str(tmp_path / "*.png")])
    piped = collect_sources(["-"], io.TextIOWrapper(io.BytesIO(raw + b"\n"), encoding="utf-8"))
    for sources in (walked, globbed, piped):
        assert [str(s.path) for s in sources] == [name]
        assert sources[0].display == f"{tmp_path}/caf\\xe9.png"
        sources[0].display.encode("utf-8")  # prints anywhere


def test_excluded_folders_are_never_listed(tmp_path):
    touch(tmp_path / "a.jpg")
    out = tmp_path / "out"
    touch(out / "a.jpg.gradcam.top1.jpg")
    touch(out / "deep" / "b.jpg.gradcam.top1.jpg")
    (tmp_path / "link").symlink_to(out)  # the same folder by another name
    stdin = io.StringIO(f"{out / 'a.jpg.gradcam.top1.jpg'}\n{tmp_path / 'a.jpg'}\n")
    for args in ([str(tmp_path)], [str(tmp_path / "**" / "*.jpg")], ["-"]):
        sources = collect_sources(args, stdin, exclude=[tmp_path / "link"])
        assert [s.path for s in sources] == [tmp_path / "a.jpg"], args
    named = [str(tmp_path / "a.jpg"), str(out / "a.jpg.gradcam.top1.jpg")]
    assert len(collect_sources(named, exclude=[out])) == 1
    with pytest.raises(UsageError, match="no images found"):
        collect_sources([str(out)], exclude=[out])


def test_relative_names_never_climb_out(tmp_path):
    from camcli.sources import _safe_rel

    assert _safe_rel(PurePosixPath("../../etc/passwd"), "x") == PurePosixPath("etc/passwd")
    assert _safe_rel(PurePosixPath(".."), "x") == PurePosixPath("x")
