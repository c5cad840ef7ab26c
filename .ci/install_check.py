"""What a new user meets: run with the Python of an environment that holds camcli and no extras.

Imports every camcli module, then runs `camcli --help`, `camcli run --help` and the quick
start's first command on one image, each in a subprocess as a user would. On a failure it names
every installed package whose version differs from the pins in pyproject.toml, so a release of
a dependency that breaks camcli reads as that package's name and version.

    python .ci/install_check.py OUT_DIR
    python .ci/install_check.py --differences     # only the versions that differ from the pins
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r'^\s*"([A-Za-z0-9_.-]+)==([^";]+)(?:;\s*([^"]+))?",\s*$')


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(marker: str | None) -> bool:
    if marker is None:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:  # packaging is not always installed: keep every candidate
        return True
    return Marker(marker).evaluate()


def pinned() -> dict[str, set[str]]:
    """{package: versions} of the pins that apply to this interpreter and platform."""
    pins: dict[str, set[str]] = {}
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        match = PIN.match(line)
        if match and _applies(match[3]):
            pins.setdefault(_normal(match[1]), set()).add(match[2])
    return pins


def differences() -> list[str]:
    pins = pinned()
    rows = []
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"]):
        name = _normal(dist.metadata["Name"])
        if name != "camcli" and dist.version not in pins.get(name, set()):
            wanted = " or ".join(sorted(pins.get(name, {"none"})))
            rows.append(f"{dist.metadata['Name']} {dist.version} (pinned: {wanted})")
    return rows


def check_imports() -> list[str]:
    import camcli

    failures = []
    for module in pkgutil.walk_packages(camcli.__path__, "camcli."):
        if module.name == "camcli.__main__":
            continue  # runs the CLI; the subprocesses below cover it
        try:
            importlib.import_module(module.name)
        except Exception:
            failures.append(f"import {module.name}:\n{traceback.format_exc()}")
    return failures


def check_commands(out: Path) -> list[str]:
    camcli = [str(Path(sys.executable).parent / "camcli")]  # the script a user runs
    image = ROOT / "sample_images" / "cat.jpg"
    commands = [
        ([*camcli, "--help"], "Usage: camcli"),
        ([*camcli, "run", "--help"], "Usage: camcli run [OPTIONS] PATHS..."),
        ([*camcli, "run"], "Missing argument 'PATHS...'"),
        ([*camcli, "run", str(image), "--weights", "none", "-m", "resnet18", "-o", str(out)], ""),
    ]
    failures = []
    for argv, expected in commands:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        shown = " ".join(argv[1:])
        usage_error = argv[-1] == "run"
        if done.returncode != (2 if usage_error else 0) or expected not in (
            done.stdout + done.stderr
        ):
            failures.append(
                f"camcli {shown}: exit {done.returncode}, expected {expected!r}\n"
                f"{done.stdout[-2000:]}{done.stderr[-4000:]}"
            )
    if not failures and not (out / "cat.jpg.gradcam.top1.jpg").is_file():
        failures.append(f"camcli run wrote no overlay into {out}")
    return failures


def main() -> int:
    if sys.argv[1:] == ["--differences"]:  # after a failure elsewhere: what moved since the pins
        print("installed versions that differ from the pins: " + "; ".join(differences()))
        return 0
    out = Path(sys.argv[1])
    failures = check_imports() + check_commands(out)
    if not failures:
        print(f"install check passed: Python {sys.version.split()[0]}, {sys.executable}")
        return 0
    print("\n".join(failures), file=sys.stderr)
    differing = differences()
    print(
        "install check FAILED; installed versions that differ from the pins: "
        + ("; ".join(differing) if differing else "none"),
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
