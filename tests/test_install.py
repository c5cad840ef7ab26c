"""What a new user installs: every import declared, every dependency pinned, every install line
one that installs this project (issue 21). .ci/fresh installs the newest allowed versions and
runs the quick start on Python 3.10; these tests hold the declarations that make that work."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Import names whose distribution is named otherwise.
DISTRIBUTION = {
    "PIL": "pillow",
    "cv2": "opencv-python-headless",
    "huggingface_hub": "huggingface-hub",
}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement)[0]).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_name(r) for r in requirements}


BASE = _declared(PROJECT["project"]["dependencies"])
EXTRAS = {
    extra: _declared(reqs)
    for extra, reqs in PROJECT["project"]["optional-dependencies"].items()
    if extra != "test"
}
PINS = PROJECT["tool"]["uv"]["constraint-dependencies"]


def _third_party_imports(path: Path) -> list[tuple[str, bool]]:
    """(distribution, at module level) for each import of a module outside the standard
    library and camcli; imports under ``try: ... except ImportError`` count as optional."""
    tree = ast.parse(path.read_text())
    optional: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            optional.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top == "camcli" or top == "__future__":
                continue
            eager = id(node) in top_level and id(node) not in optional
            found.append((_name(DISTRIBUTION.get(top, top)), eager))
    return found


def test_every_module_camcli_imports_is_a_declared_dependency():
    missing = []
    for path in sorted((ROOT / "camcli").rglob("*.py")):
        for dist, eager in _third_party_imports(path):
            extras_with_it = [e for e, names in EXTRAS.items() if dist in names]
            if dist in BASE:
                continue
            if eager or not extras_with_it:
                # An import at module level runs for every user of the base install.
                missing.append(f"{path.relative_to(ROOT)}: {dist}")
    assert missing == []


def test_the_scan_sees_what_a_module_imports(tmp_path):
    # The rule above must be able to fail: an undeclared package at module level is caught,
    # a lazy import of an extra's package passes, an undeclared lazy import does not.
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nimport click\nfrom PIL import Image\n"
        "def f():\n    import timm\n    import yaml\n"
        "try:\n    import ray\nexcept ImportError:\n    ray = None\n"
    )
    assert _third_party_imports(source) == [
        ("click", True),
        ("pillow", True),
        ("timm", False),
        ("yaml", False),
        ("ray", False),
    ]


def test_camcli_imports_typer_only_not_click():
    # typer 0.26+ carries its own click and no longer installs click (issue 21): camcli uses
    # typer's exits alone, so it starts whichever typer the bounds give.
    for path in (ROOT / "camcli").rglob("*.py"):
        assert "click" not in {d for d, _ in _third_party_imports(path)}, path


def test_every_declared_dependency_has_a_pin_by_name_and_version_only():
    pinned = {_name(p) for p in PINS}
    declared = BASE | set().union(*EXTRAS.values())
    declared |= _declared(PROJECT["project"]["optional-dependencies"]["test"])
    assert sorted(declared - pinned) == []
    for pin in PINS:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+!-]+(; [^;]+)?", pin), pin
        assert "://" not in pin and " @ " not in pin


def test_no_lock_file_that_records_download_addresses_is_tracked():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith((".lock", "pylock.toml"))]
    assert "uv.lock" in (ROOT / ".gitignore").read_text().split()


def test_upper_bounds_each_give_their_reason():
    # A cap is a promise that a known break exists: the comment above it says which.
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    capped = [i for i, line in enumerate(lines) if re.search(r'"[^"]*<\d[^"]*"', line)]
    assert capped  # typer and ray today
    for i in capped:
        assert lines[i - 1].strip().startswith("#"), lines[i]


def test_the_pins_tool_rewrites_only_the_pin_block(monkeypatch, tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import pins
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = (ROOT / "pyproject.toml").read_text()
    fake = tmp_path / "pyproject.toml"
    fake.write_text(text)
    monkeypatch.setattr(pins, "PYPROJECT", fake)
    monkeypatch.setattr(pins, "resolve", lambda unpinned: ["numpy==9.9.9; sys_platform == 'x'"])
    assert pins.main() == 0
    rewritten = fake.read_text()
    assert "    \"numpy==9.9.9; sys_platform == 'x'\",\n]" in rewritten
    assert pins.BLOCK.sub("", rewritten) == pins.BLOCK.sub("", text)  # the rest is untouched
    assert tomllib.loads(rewritten)["tool"]["uv"]["constraint-dependencies"] == [
        "numpy==9.9.9; sys_platform == 'x'"
    ]


INSTALL_TEXTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize(
    "path", [*INSTALL_TEXTS, ROOT / "camcli", ROOT / "tests"], ids=lambda p: p.name
)
def test_no_install_line_fetches_the_unrelated_camcli_on_the_index(path):
    # `camcli` on the package index is another project (0.0.1, 2020): `pip install
    # 'camcli[ray]'` would fetch it. Lines that say not to are the only mentions allowed.
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    bad = [
        f"{f.name}: {line.strip()}"
        for f in files
        for line in f.read_text().splitlines()
        if re.search(r"camcli\[|pip install ['\"]?camcli\b(?!-)", line)
        and not re.search(r"\bnot\b", line)
        and not (f.suffix == ".py" and line.strip().startswith("#"))  # says why, prints nothing
    ]
    assert bad == []


def test_missing_extra_errors_name_a_command_that_installs_this_project():
    from camcli.errors import install_extra

    assert install_extra("ray") == (
        "`uv sync --extra ray` in the camcli checkout (or `pip install '.[ray]'` there)"
    )


def test_windows_is_refused_in_one_line_before_anything_runs():
    # camcli/outfolder.py locks with fcntl, which Windows lacks: one line and exit 2, not an
    # ImportError traceback from the first command that touches an output folder.
    code = (
        "import sys; sys.argv = ['camcli', 'run', 'x.jpg']\n"
        "from camcli.cli import main\n"
        "sys.platform = 'win32'\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "error: Windows is not supported: camcli locks its output folders with POSIX fcntl "
        "locks (Linux, macOS); run it under WSL\n"
    )


def test_usage_lines_and_errors_read_as_click_writes_them():
    # typer 0.26+ would print `{paths}...` and "Missing argument 'paths'" (the cap's reason).
    from typer.testing import CliRunner

    from camcli.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["run", "--help"], prog_name="camcli")
    assert shown.exit_code == 0
    assert shown.output.startswith("Usage: camcli run [OPTIONS] PATHS...\n")
    assert "  -o, --out PATH " in shown.output
    missing = runner.invoke(app, ["run"], prog_name="camcli")
    assert missing.exit_code == 2
    assert "Error: Missing argument 'PATHS...'." in missing.output
    for command, argument in (("check", "SPEC"), ("layers", "MODEL"), ("report", "OUT")):
        usage = runner.invoke(app, [command, "--help"], prog_name="camcli").output
        assert usage.startswith(f"Usage: camcli {command} [OPTIONS] {argument}\n")
