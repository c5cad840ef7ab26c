import io
from pathlib import Path, PurePosixPath

import pytest

from camcli.errors import UsageError
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


def test_missing_path_and_empty_glob_and_empty_dir_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.jpg: no such file or directory"):
        collect_sources([str(tmp_path / "nope.jpg")])
    with pytest.raises(UsageError, match="no file matches this pattern"):
        collect_sources([str(tmp_path / "*.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found"):
        collect_sources([str(tmp_path / "empty")])


def test_relative_names_never_climb_out(tmp_path):
    from camcli.sources import _safe_rel

    assert _safe_rel(PurePosixPath("../../etc/passwd"), "x") == PurePosixPath("etc/passwd")
    assert _safe_rel(PurePosixPath(".."), "x") == PurePosixPath("x")
