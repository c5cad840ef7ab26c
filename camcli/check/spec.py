"""``camcli check`` spec files: TOML -> a validated CheckSpec, every problem found at once.

Nothing here loads a model or computes a map; the checks that need the model (class names,
class indices, ``top_k``) run in ``camcli.check.prepare`` before any image is explained. So
that they run even when other parts of the spec are wrong, a spec with problems is still
returned, with every value that is valid, and says whether its ``[model]`` can be loaded.
Paths in a spec are relative to the spec file's folder.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from camcli.config import CPU_BATCH_SIZE, ExplainSpec, ModelSpec
from camcli.errors import InputError, UsageError
from camcli.images import load_image
from camcli.methods import METHODS
from camcli.runtimes import RUNTIMES
from camcli.sources import is_video_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TOP_KEYS = ("model", "defaults", "case")
#: The black-box methods' options (``camcli.methods.blackbox``), as ``camcli run`` takes them.
BLACK_BOX_KEYS = ("masks", "mask_cells", "mask_p", "seed", "window", "stride", "baseline")
MODEL_KEYS = (
    "model",
    "weights",
    "checkpoint",
    "num_classes",
    "labels",
    "method",
    "layer",
    "input_size",
    "fit",
    "device",
    "batch_size",
    *BLACK_BOX_KEYS,
    "normalize",
    "mean",
    "std",
    "runtime",
)
DEFAULT_KEYS = ("top_k", "min_score", "pointing", "min_energy", "min_similarity", "min_iou")
CASE_KEYS = (
    "name",
    "image",
    "frames",
    "target",
    "expect_class",
    "top_k",
    "min_score",
    "box",
    "boxes",
    "pointing",
    "min_energy",
    "baseline",
    "min_similarity",
    "min_iou",
    "insertion_auc_min",
    "deletion_auc_max",
)
DEFAULT_MIN_SIMILARITY = 0.9
# [model] keys that only shape the explanation: with a problem in one of these, the model can
# still be loaded to check the cases' classes against it.
EXPLAIN_KEYS = frozenset({"method", "layer", "batch_size", "runtime", *BLACK_BOX_KEYS})


class SpecError(UsageError):
    """A spec that cannot run; one line per problem, each naming the spec file and the case."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class CaseSpec:
    """One ``[[case]]``: an image and what must hold for it.

    ``boxes`` are (x0, y0, x1, y1) in the original image's pixels (pixel edges: pixel column
    ``x`` spans ``[x, x + 1)``). ``expect_index`` and ``target`` are filled in once the model
    is known (``camcli.check.prepare``). ``image`` is None only in a spec with problems (the
    case gave none), which never runs; ``name`` is then empty unless the case gave one.
    """

    index: int
    name: str
    image: Path | None
    image_size: tuple[int, int] = (0, 0)
    target_text: str | None = None
    expect_class: str | int | None = None
    top_k: int = 1
    min_score: float | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    pointing: bool = False
    min_energy: float | None = None
    baseline: Path | None = None
    min_similarity: float | None = None
    min_iou: float | None = None
    expect_index: int | None = None
    target: Any = None  # camcli.targets.Target, resolved with the model
    insertion_auc_min: float | None = None  # camcli.check.faithfulness
    deletion_auc_max: float | None = None
    #: A video case: its frames ``[first, last]`` (inclusive, 0-based; None: every frame),
    #: each of which must meet the expectations.
    frames: tuple[int, int] | None = None

    @property
    def video(self) -> bool:
        return self.image is not None and is_video_name(self.image)

    @property
    def label(self) -> str:
        """How messages name the case: its 1-based position and its name."""
        return f"case {self.index} ({self.name!r})" if self.name else f"case {self.index}"


@dataclass
class CheckSpec:
    """A spec file: its ``[model]`` table as the model, the explanation and the batch size
    (the same options as ``camcli run``), and its cases."""

    path: Path
    folder: Path
    model: ModelSpec
    explain: ExplainSpec
    batch_size: int = CPU_BATCH_SIZE
    cases: list[CaseSpec] = field(default_factory=list)
    bad_model_keys: frozenset[str] = frozenset()  # [model] keys with a problem (unknown ones too)

    @property
    def model_loadable(self) -> bool:
        """Whether the model can be loaded: nothing wrong in [model] but the explanation."""
        return not self.bad_model_keys - EXPLAIN_KEYS

    @property
    def explainable(self) -> bool:
        """Whether an explainer can be built: the model loads, method and layer are valid."""
        return self.model_loadable and not self.bad_model_keys & {"method", "layer"}


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}.get(
        type(value), "table" if isinstance(value, dict) else type(value).__name__
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Reader:
    """Collects problems instead of stopping at the first, so one run lists them all."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.path}: {where}: {message}")

    def unknown_keys(self, where: str, table: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for key in table:
            if key in allowed:
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.problem(where, f"unknown key {key!r}{hint} (allowed: {', '.join(allowed)})")

    def string(self, where: str, table: dict[str, Any], key: str) -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(where, f"{key} must be a non-empty string, got {_type_name(value)}")
            return None
        return value

    def integer(self, where: str, table: dict[str, Any], key: str, low: int) -> int | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(where, f"{key} must be an integer, got {_type_name(value)} {value!r}")
            return None
        if value < low:
            self.problem(where, f"{key} must be at least {low}, got {value}")
            return None
        return value

    def fraction(
        self, where: str, table: dict[str, Any], key: str, low: float = 0.0
    ) -> float | None:
        value = table.get(key)
        if value is None:
            return None
        if not _is_number(value):
            self.problem(where, f"{key} must be a number, got {_type_name(value)} {value!r}")
            return None
        if not (low <= value <= 1.0):
            self.problem(where, f"{key} must be between {low:g} and 1, got {value}")
            return None
        return float(value)

    def boolean(self, where: str, table: dict[str, Any], key: str) -> bool | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.problem(where, f"{key} must be true or false, got {_type_name(value)} {value!r}")
            return None
        return value


def _relative(folder: Path, text: str) -> Path:
    path = Path(os.path.expanduser(text))
    return path if path.is_absolute() else folder / path


def _model_spec(
    reader: _Reader, table: Any, folder: Path
) -> tuple[ModelSpec, ExplainSpec, int, frozenset[str]]:
    """The ``[model]`` table's valid values (the model, the explanation, the batch size), and
    the keys that have a problem."""
    where = "[model]"
    if not isinstance(table, dict):
        reader.problem(where, f"must be a table, got {_type_name(table)}")
        return ModelSpec(), ExplainSpec(), CPU_BATCH_SIZE, frozenset({"[model]"})
    reader.unknown_keys(where, table, MODEL_KEYS)
    bad = {key for key in table if key not in MODEL_KEYS}
    values: dict[str, Any] = {}
    for key in ("model", "weights", "method", "fit", "device", "normalize"):
        value = reader.string(where, table, key)
        if value is not None:
            values[key] = value
    if "model" in values:
        # A factory file next to the spec: ``nets.py:build`` means <spec folder>/nets.py.
        spec_text = values["model"]
        if ":" in spec_text and spec_text.rsplit(":", 1)[0].endswith(".py"):
            where_py, attr = spec_text.rsplit(":", 1)
            values["model"] = f"{_relative(folder, where_py)}:{attr}"
        elif spec_text.lower().endswith(".onnx"):  # an ONNX file beside the spec
            values["model"] = str(_relative(folder, spec_text))
        elif spec_text.startswith("hf:") and (folder / spec_text[3:]).is_dir():
            values["model"] = f"hf:{_relative(folder, spec_text[3:])}"  # a folder beside it
    method = values.get("method")
    if method is not None and method.lower() not in METHODS:
        close = difflib.get_close_matches(method.lower(), list(METHODS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        reader.problem(where, f"unknown method {method!r}{hint} (available: {', '.join(METHODS)})")
        del values["method"]
    if values.get("fit") not in (None, "crop", "stretch"):
        reader.problem(where, f"fit must be crop or stretch, got {values.pop('fit')!r}")
    for key in ("checkpoint", "labels"):
        text = reader.string(where, table, key)
        if text is not None:
            path = _relative(folder, text)
            if path.is_file():
                values[key] = path
            else:
                reader.problem(where, f"{key} {path}: no such file")
    for key, low in (("num_classes", 1), ("input_size", 16), ("batch_size", 1)):
        number = reader.integer(where, table, key, low)
        if number is not None:
            values[key] = number
    for key in ("mean", "std"):
        channels = table.get(key)
        if channels is None:
            continue
        if isinstance(channels, (int, float)) and not isinstance(channels, bool):
            channels = [channels]
        if (
            isinstance(channels, list)
            and len(channels) in (1, 3)
            and all(_is_number(v) for v in channels)
        ):
            values[key] = tuple(float(v) for v in channels)
        else:
            reader.problem(where, f"{key} must be 3 numbers [R, G, B] or one, got {channels!r}")
    layer = table.get("layer")
    if layer is not None:
        names = [layer] if isinstance(layer, str) else layer
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            reader.problem(where, f"layer must be a layer name or a list of names, got {layer!r}")
        else:
            values["layers"] = tuple(names)
    values.update(_black_box_values(reader, where, table))
    runtime = table.get("runtime")
    if runtime is not None and runtime not in RUNTIMES:
        reader.problem(where, f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    elif runtime is not None:
        values["runtime"] = runtime
    taken = set(values) | ({"layer"} if "layers" in values else set())
    bad |= {key for key in table if key in MODEL_KEYS and key not in taken}
    explain_keys = ("method", "layers", "runtime", *BLACK_BOX_KEYS)
    explain = ExplainSpec(**{key: values.pop(key) for key in explain_keys if key in values})
    batch_size = values.pop("batch_size", CPU_BATCH_SIZE)
    return ModelSpec(**values), explain, batch_size, frozenset(bad)


def _black_box_values(reader: _Reader, where: str, table: dict[str, Any]) -> dict[str, Any]:
    """The valid black-box options of ``[model]`` (the rest are reported)."""
    values: dict[str, Any] = {}
    masks = table.get("masks")
    if masks == "auto" or (masks is not None and reader.integer(where, table, "masks", 1)):
        values["masks"] = masks  # a count of 1 or more, or auto
    for key, low in (("mask_cells", 1), ("seed", 0), ("window", 1), ("stride", 1)):
        number = reader.integer(where, table, key, low)
        if number is not None:
            values[key] = number
    p = table.get("mask_p")
    if p is not None and (not _is_number(p) or not 0 < p <= 1):
        reader.problem(where, f"mask_p must be a number in (0, 1], got {p!r}")
    elif p is not None:
        values["mask_p"] = float(p)
    baseline = table.get("baseline")
    if baseline is not None and not _is_number(baseline):
        reader.problem(where, f"baseline must be a number, got {_type_name(baseline)}")
    elif baseline is not None:
        values["baseline"] = float(baseline)
    return values


def _video_size(path: Path) -> tuple[int, int]:
    """A video's frame size as displayed (width, height); InputError as for a bad image."""
    from camcli.video.decode import VideoReader

    with VideoReader(path) as reader:
        return reader.info.width, reader.info.height


def _box(reader: _Reader, where: str, value: Any, key: str) -> tuple[float, ...] | None:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(_is_number(v) and math.isfinite(v) for v in value)
    ):
        reader.problem(where, f"{key} must be [x0, y0, x1, y1] (four numbers), got {value!r}")
        return None
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (x0 < x1 and y0 < y1):
        reader.problem(where, f"{key} {value!r}: needs x0 < x1 and y0 < y1")
        return None
    return (x0, y0, x1, y1)


def _in_bounds(
    reader: _Reader, where: str, box: tuple[float, ...], size: tuple[int, int], image: Path
) -> None:
    width, height = size
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
        reader.problem(
            where,
            f"box {shown} is outside the {width}x{height} image {image} "
            f"(boxes must lie within 0 <= x <= {width}, 0 <= y <= {height})",
        )


def _check_baseline_file(reader: _Reader, where: str, path: Path) -> None:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reader.problem(where, f"baseline {path}: not a readable .npy file ({exc})")
        return
    if array.ndim != 2 or array.dtype.kind != "f" or not np.isfinite(array).all():
        reader.problem(
            where,
            f"baseline {path}: expected a 2-D float map, got {array.dtype} "
            f"{'x'.join(map(str, array.shape)) or 'scalar'}; rewrite it with --update-baselines",
        )


def _case(
    reader: _Reader,
    index: int,
    table: Any,
    defaults: dict[str, Any],
    folder: Path,
    update_baselines: bool,
) -> CaseSpec | None:
    where = f"case {index}"
    if not isinstance(table, dict):
        reader.problem(where, f"must be a table ([[case]]), got {_type_name(table)}")
        return None
    name = reader.string(where, table, "name")
    image_text = reader.string(where, table, "image")
    if name is not None:
        where = f"case {index} ({name!r})"
    elif image_text is not None:
        name = image_text
        where = f"case {index} ({name!r})"
    reader.unknown_keys(where, table, CASE_KEYS)
    if image_text is None and "image" not in table:
        reader.problem(where, 'needs an image = "path"')
    # Without a usable image the case is still read to the end, to report all its problems.
    image = None if image_text is None else _relative(folder, image_text)
    case = CaseSpec(index=index, name=name or "", image=image)

    size = None
    if image is not None:
        try:
            size = _video_size(image) if case.video else load_image(image).size
            case.image_size = size
        except InputError as exc:
            reader.problem(where, f"image {exc.message}")
    if "frames" in table:
        frames = table["frames"]
        if not case.video:
            reader.problem(where, 'frames needs a video (image = "clip.mp4")')
        elif (
            not isinstance(frames, list)
            or len(frames) != 2
            or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in frames)
            or frames[0] > frames[1]
        ):
            reader.problem(
                where, f"frames must be [first, last], 0 <= first <= last, got {frames!r}"
            )
        else:
            case.frames = (frames[0], frames[1])
    if case.video:
        for key in ("baseline", "insertion_auc_min", "deletion_auc_max"):
            if key in table:
                reader.problem(where, f"{key} needs an image, not a video")

    target = table.get("target")
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, (str, int)):
            reader.problem(where, f"target must be a class name, an index or topN, got {target!r}")
        else:
            case.target_text = str(target)
    expect = table.get("expect_class")
    if expect is not None:
        if isinstance(expect, bool) or not isinstance(expect, (str, int)) or expect == "":
            reader.problem(where, f"expect_class must be a class name or index, got {expect!r}")
        elif isinstance(expect, int) and expect < 0:
            reader.problem(where, f"expect_class must be a class index >= 0, got {expect}")
        else:
            case.expect_class = expect
    own = set(table)

    def pick(key: str, value: Any) -> Any:
        return value if key in own else defaults.get(key)

    top_k = pick("top_k", reader.integer(where, table, "top_k", 1))
    min_score = pick("min_score", reader.fraction(where, table, "min_score"))
    if expect is None:
        for key in ("top_k", "min_score"):
            if key in own:
                reader.problem(where, f"{key} needs expect_class")
    else:
        case.top_k = top_k or 1
        case.min_score = min_score

    boxes: list[tuple[float, ...]] = []
    if "box" in table and "boxes" in table:
        reader.problem(where, "give box or boxes, not both")
    elif "box" in table:
        box = _box(reader, where, table["box"], "box")
        boxes = [box] if box else []
    elif "boxes" in table:
        value = table["boxes"]
        if not isinstance(value, list) or not value:
            reader.problem(
                where, f"boxes must be a non-empty list of [x0, y0, x1, y1], got {value!r}"
            )
        else:
            boxes = [b for b in (_box(reader, where, v, "each of boxes") for v in value) if b]
    pointing = pick("pointing", reader.boolean(where, table, "pointing"))
    min_energy = pick("min_energy", reader.fraction(where, table, "min_energy"))
    if "box" in table or "boxes" in table:
        if image is not None and size is not None:
            for box in boxes:
                _in_bounds(reader, where, box, size, image)
        case.boxes = tuple(boxes)  # type: ignore[arg-type]
        case.min_energy = min_energy
        case.pointing = pointing if pointing is not None else True
        if not case.pointing and min_energy is None:
            reader.problem(where, "pointing = false and no min_energy: the box checks nothing")
    else:
        for key in ("pointing", "min_energy"):
            if key in own:
                reader.problem(where, f"{key} needs a box (box = [x0, y0, x1, y1])")

    min_similarity = pick("min_similarity", reader.fraction(where, table, "min_similarity", -1.0))
    min_iou = pick("min_iou", reader.fraction(where, table, "min_iou"))
    baseline_text = reader.string(where, table, "baseline")
    if baseline_text is not None:
        baseline = _relative(folder, baseline_text)
        root = os.path.realpath(folder)
        if baseline.suffix.lower() != ".npy":
            reader.problem(where, f"baseline {baseline} must be a .npy file")
        elif os.path.commonpath([root, os.path.realpath(baseline)]) != root:
            reader.problem(where, f"baseline {baseline} must lie inside the spec's folder {folder}")
        elif baseline.is_dir():
            reader.problem(where, f"baseline {baseline} is a directory")
        elif not baseline.exists():
            if not update_baselines:
                reader.problem(
                    where,
                    f"baseline {baseline}: no such file (create it with "
                    f"camcli check {reader.path} --update-baselines)",
                )
        elif not update_baselines:
            _check_baseline_file(reader, where, baseline)
        case.baseline = baseline
        case.min_similarity = DEFAULT_MIN_SIMILARITY if min_similarity is None else min_similarity
        case.min_iou = min_iou
    elif "baseline" not in table:
        for key in ("min_similarity", "min_iou"):
            if key in own:
                reader.problem(where, f'{key} needs a baseline = "file.npy"')

    case.insertion_auc_min = reader.fraction(where, table, "insertion_auc_min")
    case.deletion_auc_max = reader.fraction(where, table, "deletion_auc_max")
    faithfulness = case.insertion_auc_min is not None or case.deletion_auc_max is not None
    if (
        expect is None
        and "box" not in table
        and "boxes" not in table
        and "baseline" not in table
        and not faithfulness
    ):
        reader.problem(where, "checks nothing: give expect_class, box or boxes, or baseline")
    # Returned even with problems, so that its classes are still checked against the model.
    return case


def parse_spec(path: Path, *, update_baselines: bool = False) -> tuple[CheckSpec | None, list[str]]:
    """Read and validate everything that needs no model; returns the spec and the problems.

    The spec is None only when the file cannot be read as TOML; otherwise it holds every
    valid value even when there are problems. Images are decoded once here to prove they
    can be read and to bound-check the boxes.
    """
    path = Path(path)
    reader = _Reader(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, [f"{path}: no such spec file"]
    except IsADirectoryError:
        return None, [f"{path}: is a directory, not a spec file"]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: cannot read spec file ({exc})"]
    except tomllib.TOMLDecodeError as exc:
        return None, [f"{path}: not valid TOML ({exc})"]
    folder = path.parent
    reader.unknown_keys("top level", data, TOP_KEYS)

    model, explain, batch_size, bad_model_keys = _model_spec(reader, data.get("model", {}), folder)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        reader.problem("[defaults]", f"must be a table, got {_type_name(defaults)}")
        defaults = {}
    reader.unknown_keys("[defaults]", defaults, DEFAULT_KEYS)
    defaults = {
        "top_k": reader.integer("[defaults]", defaults, "top_k", 1),
        "min_score": reader.fraction("[defaults]", defaults, "min_score"),
        "pointing": reader.boolean("[defaults]", defaults, "pointing"),
        "min_energy": reader.fraction("[defaults]", defaults, "min_energy"),
        "min_similarity": reader.fraction("[defaults]", defaults, "min_similarity", -1.0),
        "min_iou": reader.fraction("[defaults]", defaults, "min_iou"),
    }

    tables = data.get("case")
    cases: list[CaseSpec] = []
    if tables is None or tables == []:
        reader.problem("top level", 'no cases: add at least one [[case]] with image = "..."')
    elif not isinstance(tables, list):
        reader.problem(
            "top level", f"case must be an array of tables ([[case]]), got {_type_name(tables)}"
        )
    else:
        for i, table in enumerate(tables, start=1):
            case = _case(reader, i, table, defaults, folder, update_baselines)
            if case is not None:
                cases.append(case)
    seen: dict[str, int] = {}
    baselines: dict[Path, int] = {}
    for case in cases:
        if case.name and case.name in seen:
            reader.problem(
                case.label, f"has the same name as case {seen[case.name]}; give each case a name"
            )
        seen.setdefault(case.name, case.index)
        if case.baseline is not None:
            key = Path(os.path.realpath(case.baseline))
            if key in baselines:
                reader.problem(
                    case.label, f"baseline {case.baseline} is also case {baselines[key]}'s"
                )
            baselines.setdefault(key, case.index)
    if update_baselines and not reader.problems and not baselines:
        reader.problem("top level", "--update-baselines: no case names a baseline")
    spec = CheckSpec(path, folder, model, explain, batch_size, cases, bad_model_keys)
    return spec, reader.problems


def read_boxes(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """The boxes of a ``camcli check`` spec's cases, keyed by each image's absolute path.

    ``camcli evaluate --boxes`` reads the same ``[[case]]`` tables as ``camcli check``
    (``image`` and ``box`` or ``boxes``, paths relative to the file's folder); every other key
    is ignored, so a check spec can be given as it is. Cases without a box are skipped. Raises
    SpecError listing every problem (an unreadable file, a malformed box, a box outside its
    image).
    """
    path = Path(path)
    reader = _Reader(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read the boxes file ({exc})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"{path}: not valid TOML ({exc})"]) from None
    tables = data.get("case")
    if not isinstance(tables, list) or not tables:
        raise SpecError([f"{path}: no [[case]] tables with an image and a box"])
    found: dict[str, list[tuple[float, float, float, float]]] = {}
    for index, table in enumerate(tables, start=1):
        where = f"case {index}"
        if not isinstance(table, dict) or ("box" not in table and "boxes" not in table):
            continue
        image_text = reader.string(where, table, "image")
        if image_text is None:
            reader.problem(where, 'needs an image = "path"')
            continue
        image = _relative(path.parent, image_text)
        values = [table["box"]] if "box" in table else table["boxes"]
        if not isinstance(values, list) or not values:
            reader.problem(
                where, f"boxes must be a non-empty list of [x0, y0, x1, y1], got {values!r}"
            )
            continue
        boxes = [b for b in (_box(reader, where, v, "box") for v in values) if b]
        try:
            size = load_image(image).size
        except InputError as exc:
            reader.problem(where, f"image {exc.message}")
            continue
        for box in boxes:
            _in_bounds(reader, where, box, size, image)
        key = str(image.resolve())
        found.setdefault(key, []).extend(boxes)  # type: ignore[arg-type]
    if reader.problems:
        raise SpecError(reader.problems)
    return found
