"""Refresh the pins: the exact set of versions that `uv run` and `uv sync` install.

pyproject.toml's ``[tool.uv] constraint-dependencies`` lists every package of the resolved
set, base, extras and test tools, by name and version only (a lock file would record download
addresses, which this repository never commits). ``pip install .`` ignores it and takes the
newest versions the bounds in ``[project]`` allow; CI tries those too (``.ci/newest``).

    python3 tools/pins.py                  # resolve the newest allowed versions, rewrite the pins
    uv run --extra test pytest -n 2        # then run the suite on them before committing

Needs only uv and Python 3.11+ (tomllib); nothing of camcli is imported.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
# The generated block: from its heading comment to the closing bracket of the list.
BLOCK = re.compile(r"\[tool\.uv\]\n(?:#.*\n)*constraint-dependencies = \[\n(?:.*\n)*?\]\n")
HEADER = """[tool.uv]
# The set the test suite last passed with, by name and version only (tools/pins.py writes this
# list; README: Pins): `uv run` and `uv sync` install exactly these, `pip install .` the newest
# versions the bounds above allow, and CI tries both.
"""


def resolve(pyproject_text: str) -> list[str]:
    """``name==version[; marker]`` for every package of the newest set the bounds allow, on
    every platform and Python that ``requires-python`` admits (uv's universal resolution)."""
    with tempfile.TemporaryDirectory(prefix="camcli-pins-") as tmp:
        work = Path(tmp)
        (work / "pyproject.toml").write_text(pyproject_text)
        shutil.copy(ROOT / "README.md", work / "README.md")
        (work / "camcli").mkdir()
        (work / "camcli" / "__init__.py").write_text("")
        subprocess.run(["uv", "lock", "--quiet"], cwd=work, check=True)
        exported = subprocess.run(
            [
                "uv",
                "export",
                "--frozen",
                "--all-extras",
                "--no-emit-project",
                "--no-hashes",
                "--no-header",
                "--no-annotate",
            ],
            cwd=work,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    pins = []
    for line in exported.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "://" in line or " @ " in line:
            raise SystemExit(f"refusing a pin that records an address: {line}")
        pins.append(re.sub(r"\s*;\s*", "; ", line))
    return pins


def render(pins: list[str]) -> str:
    body = "".join(f'    "{pin}",\n' for pin in pins)
    return f"{HEADER}constraint-dependencies = [\n{body}]\n"


def main() -> int:
    text = PYPROJECT.read_text()
    if not BLOCK.search(text):
        raise SystemExit(f"{PYPROJECT}: no [tool.uv] constraint-dependencies block to refresh")
    unpinned = BLOCK.sub("", text)
    tomllib.loads(unpinned)  # the bounds alone still parse
    pins = resolve(unpinned)
    PYPROJECT.write_text(BLOCK.sub(lambda _: render(pins), text))
    print(f"{PYPROJECT.name}: {len(pins)} pins written; run the suite before committing them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
