"""Draw docs/architecture.svg from the code: the package's parts in layers, each importing only
parts in the layers below it (read with ``ast``, as tests/test_layout.py reads them), and the
way one image travels through them.

    python docs/make_architecture.py        # rewrites docs/architecture.svg
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_layout import imports, modules, part, part_edges  # noqa: E402

BOX_W, BOX_H, GAP, ROW_GAP = 118, 30, 8, 26
# One image's way through the parts, with what each step hands on.
TRAVEL = [
    ("cli.run", "options -> ModelSpec, ExplainSpec, RunConfig"),
    ("run", "checks everything, loads the model once"),
    ("sources", "path, folder, glob, stdin -> Source"),
    ("engines.local", "threads read ahead, batches in order"),
    ("engines.batch", "read: file -> RGB + the model's view"),
    ("images / stages", "EXIF, limits, resize + crop (Box)"),
    ("explain", "model (models) + hooks on layers + method -> maps"),
    ("targets", "the classes explained, scores, a NaN said"),
    ("render", "map -> overlay where the model looked"),
    ("writers", "encode, write atomically"),
    ("outfolder", "manifest record appended under a lock"),
    ("cli.run + display", "the record on stdout (--json), progress"),
]


def layers() -> list[list[str]]:
    """Parts by layer, bottom first: a part's layer is one above the highest it imports."""
    edges = part_edges(imports(modules(ROOT / "camcli")))
    parts = sorted({part(m) for m in modules(ROOT / "camcli") if "." in m} - {"camcli.__main__"})
    level: dict[str, int] = {}

    def depth(name: str, seen: tuple[str, ...] = ()) -> int:
        if name not in level:
            below = [depth(o, (*seen, name)) for o in edges.get(name, ()) if o not in seen]
            level[name] = 1 + max(below, default=-1)
        return level[name]

    for name in parts:
        depth(name)
    rows: list[list[str]] = [[] for _ in range(max(level.values()) + 1)]
    for name in parts:
        rows[level[name]].append(name.removeprefix("camcli."))
    return rows


def box(x: float, y: float, w: float, text: str, fill: str) -> str:
    return (
        f'<rect x="{x}" y="{y}" width="{w}" height="{BOX_H}" rx="5" fill="{fill}" '
        f'stroke="#445"/><text x="{x + w / 2}" y="{y + BOX_H / 2 + 4}" '
        f'text-anchor="middle">{escape(text)}</text>'
    )


def draw() -> str:
    rows = layers()
    widest = max(len(r) for r in rows)
    left_w = widest * (BOX_W + GAP) + GAP
    shapes = [
        '<text x="8" y="20" class="h">The parts, in layers: each imports only layers below it</text>'
    ]
    y = 40
    for index, row in enumerate(reversed(rows)):
        layer = len(rows) - 1 - index
        shapes.append(f'<text x="8" y="{y + BOX_H / 2 + 4}" class="n">{layer}</text>')
        x = 28.0
        for name in row:
            fill = "#dde8f8" if name.startswith("cli") or name == "display" else "#eef3e6"
            shapes.append(box(x, y, BOX_W, name, fill))
            x += BOX_W + GAP
        y += BOX_H + ROW_GAP
    height_left = y
    tx = left_w + 60
    shapes.append(f'<text x="{tx}" y="20" class="h">One image through camcli run</text>')
    y = 40
    for index, (name, what) in enumerate(TRAVEL):
        shapes.append(box(tx, y, 250, name, "#fbeedd"))
        shapes.append(
            f'<text x="{tx + 262}" y="{y + BOX_H / 2 + 4}" class="s">{escape(what)}</text>'
        )
        if index < len(TRAVEL) - 1:
            shapes.append(
                f'<line x1="{tx + 125}" y1="{y + BOX_H}" x2="{tx + 125}" y2="{y + BOX_H + 12}" '
                'stroke="#445" marker-end="url(#a)"/>'
            )
        y += BOX_H + 14
    width = tx + 560
    height = max(height_left, y) + 10
    style = (
        "text{font:12px sans-serif;fill:#223}.h{font-weight:bold;font-size:14px}"
        ".n{fill:#889}.s{fill:#556}"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><style>{style}</style><defs><marker id="a" '
        'markerWidth="8" markerHeight="8" refX="4" refY="4" orient="auto"><path d="M0,0 L8,4 '
        f'L0,8 z" fill="#445"/></marker></defs><rect width="100%" height="100%" fill="white"/>'
        + "".join(shapes)
        + "</svg>\n"
    )


if __name__ == "__main__":
    target = ROOT / "docs" / "architecture.svg"
    target.write_text(draw())
    print(f"wrote {target}")
