"""Record the outputs of a fixed set of camcli commands, to prove a refactor changes none.

    python tools/golden.py record DIR     # run the set, write every output under DIR
    python tools/golden.py compare A B    # byte-compare two recordings; exit 1 on a difference

Each command's stdout, stderr and exit code are kept, with the files it wrote. What a run
cannot repeat is blanked before the comparison: timings, the work folder's path, and the
names of the report's thumbnails (they hash the mtimes of the files they show). Record from
the checkout: it imports the camcli beside it (``PYTHONPATH``), so a worktree of an older
commit records that commit. Runs on random weights (seeded), so it works offline; two
recordings must not run at once (they share one work folder).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "sample_images"

SPEC = """\
[model]
model = "resnet18"
weights = "none"
method = "gradcam"
device = "cpu"
input_size = 64

[[case]]
name = "cat"
image = "{images}/cat.jpg"
expect_class = 3
top_k = 5
box = [100, 40, 380, 280]
min_energy = 0.1

[[case]]
name = "coffee"
image = "{images}/coffee.jpg"
boxes = [[170, 15, 420, 300], [75, 60, 480, 390]]
baseline = "coffee.npy"
insertion_auc_min = 0.0

[[case]]
name = "rocket"
image = "{images}/rocket.jpg"
expect_class = 1
min_score = 0.5
"""

HELPS = [
    "",
    "run",
    "check",
    "evaluate",
    "layers",
    "models",
    "methods",
    "report",
    "manifest",
    "manifest merge",
]


def commands(work: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of the fixed set; ``work`` is the folder they run in."""
    run = [
        "run",
        str(work / "images"),
        "--weights",
        "none",
        "--model",
        "resnet18",
        "--input-size",
        "96",
        "--device",
        "cpu",
        "-f",
        "jpg",
        "-f",
        "npy",
    ]
    spec = work / "spec.toml"
    evaluate = [
        "evaluate",
        str(work / "images"),
        "--weights",
        "none",
        "--model",
        "resnet18",
        "--input-size",
        "64",
        "--device",
        "cpu",
        "--steps",
        "4",
        "--sanity-stages",
        "1",
        "--method",
        "gradcam",
        "--method",
        "randomcam",
    ]
    found = [(f"help-{h.replace(' ', '-') or 'camcli'}", [*h.split(), "--help"]) for h in HELPS]
    return [
        *found,
        ("run-json", [*run, "-o", str(work / "run"), "--json", "--top-k", "2"]),
        ("run-table", [*run, "-o", str(work / "run-table"), "--report"]),
        ("run-skip", [*run, "-o", str(work / "run"), "--json", "--top-k", "2", "--skip-existing"]),
        (
            "run-bad",
            [
                "run",
                str(work / "missing.jpg"),
                "-o",
                str(work / "bad"),
                "--weights",
                "none",
                "--model",
                "resnet18",
                "--json",
            ],
        ),
        ("run-usage", ["run", str(work / "images"), "--model", "resnet18", "--method", "gradkam"]),
        ("report", ["report", str(work / "run")]),
        ("check-update", ["check", str(spec), "--update-baselines"]),
        ("check-json", ["check", str(spec), "--json", "--junit", str(work / "junit.xml")]),
        ("check-table", ["check", str(spec), "--report", str(work / "check.html")]),
        (
            "evaluate-json",
            [
                *evaluate,
                "--json",
                "--metric",
                "deletion",
                "--metric",
                "confidence",
                "--metric",
                "sanity",
            ],
        ),
        ("evaluate-csv", [*evaluate, "--csv", "--metric", "deletion", "--metric", "road"]),
        ("evaluate-table", [*evaluate, "--metric", "confidence", "--quiet"]),
        ("evaluate-usage", [*evaluate, "--json", "--csv"]),
        ("layers-json", ["layers", "resnet18", "--json", "--input-size", "64"]),
        ("layers-table", ["layers", "resnet18", "--input-size", "64"]),
        ("methods-json", ["methods", "--json"]),
        ("methods-table", ["methods"]),
        ("models", ["models", "resnet"]),
        ("models-none", ["models", "nothing-like-this"]),
        ("merge", ["manifest", "merge", str(work / "run")]),
    ]


TIMING = re.compile(
    r'("(?:seconds|elapsed|time|duration|\w+_s|started|finished|mtime)":\s*)'
    r"[-0-9.e+]+"
)
JUNIT_TIME = re.compile(r'(time|timestamp)="[0-9.e+:T-]+"')
SPEED = re.compile(r"\b\d+(\.\d+)?\s*(s|ms|img/s|images/s|it/s)\b")


def normalise(text: str, work: Path) -> str:
    text = text.replace(str(work), "<WORK>").replace(str(ROOT), "<ROOT>")
    text = TIMING.sub(r"\1<T>", text)
    text = JUNIT_TIME.sub(r'\1="<T>"', text)
    return SPEED.sub("<T>", text)


def record(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    # One fixed folder: the report's thumbnail names hash the inputs' absolute paths.
    work = Path(tempfile.gettempdir()) / "camcli-golden-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    # The inputs are copied in (their times kept): the report's thumbnail names hash the
    # inputs' absolute paths, so both recordings must read them from the same place.
    shutil.copytree(IMAGES, work / "images")
    (work / "spec.toml").write_text(SPEC.format(images=work / "images"))
    env = {
        **os.environ,
        "CAMCLI_OFFLINE": "1",
        "COLUMNS": "100",
        "NO_COLOR": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": str(ROOT),
    }
    camcli = [sys.executable, "-m", "camcli"]
    for name, argv in commands(work):
        done = subprocess.run(
            [*camcli, *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            stdin=subprocess.DEVNULL,
        )
        out = normalise(done.stdout, work)
        err = normalise(done.stderr, work)
        (dest / f"{name}.out").write_text(f"exit {done.returncode}\n{out}\n--- stderr\n{err}")
        print(f"{name}: exit {done.returncode}", flush=True)
    for path in sorted(work.rglob("*")):
        inputs = path.name == "spec.toml" or path.is_relative_to(work / "images")
        if path.is_file() and not inputs and ".lock" not in path.name:
            target = dest / "files" / path.relative_to(work)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix in (".jsonl", ".json", ".xml", ".html", ".csv", ".js", ".txt"):
                target.write_text(normalise(path.read_text(errors="replace"), work))
            else:
                shutil.copyfile(path, target)
    shutil.rmtree(work)


THUMB = re.compile(r"[0-9a-f]{24}(-\d+x\d+\.jpg)")


def _contents(root: Path) -> dict[str, bytes]:
    """A recording's files by name, the report's thumbnails named after their bytes: their
    names hash the mtime of the file they show, which no two runs share."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    renamed = {}
    for name, data in files.items():
        match = THUMB.search(name)
        if match and "report-thumbs" in name:
            renamed[Path(name).name] = hashlib.sha256(data).hexdigest()[:24] + match.group(1)
    found = {}
    for name, data in files.items():
        for old, new in renamed.items():
            name = name.replace(old, new)
            if name.endswith((".html", ".jsonl", ".json", ".out")):
                data = data.replace(old.encode(), new.encode())
        found[name] = data
    return found


def compare(a: Path, b: Path) -> int:
    left, right = _contents(a), _contents(b)
    bad = 0
    for path in sorted(left.keys() ^ right.keys()):
        print(f"only in {'first' if path in left else 'second'}: {path}")
        bad += 1
    for path in sorted(left.keys() & right.keys()):
        if left[path] != right[path]:
            print(f"differs: {path}")
            bad += 1
    print(f"{len(left.keys() & right.keys())} files compared, {bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"]:
        record(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["compare"]:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
