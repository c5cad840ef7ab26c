"""The shape of the code (docs/architecture.md), read from its source with ``ast``.

Imports run one way (no circle between modules, none between the package's parts); only the
command package and the display print; every exit code is named in errors.py; one ModelSpec;
one writer of JSON, CSV and JUnit; every option that several commands take is declared once;
no command module is over 300 lines. Each rule has a test that shows it can fail.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "camcli"
COMMANDS = "camcli.cli"
DISPLAY = "camcli.display"
MACHINE_OUTPUT = "camcli.machine_output"
MAX_COMMAND_LINES = 300
# Flags that several commands declare on purpose, each with its reason (docs/architecture.md).
OWN_DECLARATIONS = {
    # run's page lives in OUT beside the outputs it links (camcli report OUT rebuilds it):
    # a flag; check and evaluate have no output folder, so theirs names the file.
    "--report": {"camcli.cli.run", "camcli.cli.check", "camcli.cli.evaluate"},
    # run explains with one method; evaluate compares several.
    "--method": {"camcli.cli.run", "camcli.cli.evaluate"},
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, ast.Module]:
    return {module_name(p, root): ast.parse(p.read_text()) for p in sorted(root.rglob("*.py"))}


def imports(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the modules it imports, lazily or not (TYPE_CHECKING blocks too): a name
    imported from a package that is not one of its modules is an import of the package."""
    top = next(iter(trees)).split(".")[0]
    found: dict[str, set[str]] = {}
    for name, tree in trees.items():
        package = name if _is_package(name, trees) else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != top:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in trees else target)
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == top}
        found[name] = {e for e in edges if e in trees and e != name}
    return found


def _is_package(name: str, trees: dict[str, ast.Module]) -> bool:
    return any(other.startswith(f"{name}.") for other in trees)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def part(name: str) -> str:
    """The package's part a module belongs to: ``camcli.check.spec`` -> ``camcli.check``."""
    return ".".join(name.split(".")[:2])


def part_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for name, targets in edges.items():
        for target in targets:
            if part(name) != part(target) and "." in name and "." in target:
                found[part(name)].add(part(target))
    return found


def printing(trees: dict[str, ast.Module]) -> list[str]:
    """Where a module prints or builds a console: print(), typer.echo, sys.std*.write, rich."""
    found = []
    for name, tree in trees.items():
        if name in (DISPLAY, COMMANDS, "camcli.__main__") or name.startswith(f"{COMMANDS}."):
            continue
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id == "print":
                    what = "print()"
                elif isinstance(func, ast.Attribute):
                    text = ast.unparse(func)
                    if text in ("typer.echo", "sys.stdout.write", "sys.stderr.write"):
                        what = text
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if (module or "").split(".")[0] in ("rich", "typer", "click") or module in (
                    DISPLAY,
                    COMMANDS,
                ):
                    what = f"import {module}"
            if what:
                found.append(f"{name}:{node.lineno}: {what}")
    return found


def literal_exit_codes(trees: dict[str, ast.Module]) -> list[str]:
    """Exit codes written as numbers anywhere but errors.py."""
    found = []
    for name, tree in trees.items():
        if name == "camcli.errors":
            continue
        for node in ast.walk(tree):
            values: list[ast.expr] = []
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "typer.Exit",
                "sys.exit",
                "SystemExit",
                "exit",
            ):
                values = list(node.args) + [k.value for k in node.keywords if k.arg == "code"]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(ast.unparse(t).endswith("exit_code") for t in targets):
                    values = [node.value] if node.value is not None else []
            elif (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "getattr"
                and len(node.args) == 3
                and ast.unparse(node.args[1]) == "'exit_code'"
            ):
                values = [node.args[2]]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, int):
                    found.append(f"{name}:{node.lineno}: exit code {value.value}")
    return found


def machine_writers(trees: dict[str, ast.Module]) -> list[str]:
    """JSON, CSV or XML serialised anywhere but the one writer."""
    found = []
    for name, tree in trees.items():
        if name == MACHINE_OUTPUT:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                text = ast.unparse(node.func)
                if text in ("json.dumps", "json.dump", "csv.writer", "csv.DictWriter") or (
                    text.endswith(".tostring") and "ET" in text
                ):
                    found.append(f"{name}:{node.lineno}: {text}")
    return found


def option_declarations(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Flag -> the command modules that declare it: each ``typer.Option(...)`` call, its flag
    the first ``"--flag"`` it names, else the parameter's name (``json_out`` -> ``--json-out``)
    or, for a shared declaration, its name (``NumClassesOption`` -> ``--num-classes``)."""
    found: dict[str, set[str]] = defaultdict(set)

    def calls(node: ast.AST) -> list[ast.Call]:
        return [
            c
            for c in ast.walk(node)
            if isinstance(c, ast.Call) and ast.unparse(c.func) == "typer.Option"
        ]

    def flag(call: ast.Call, fallback: str) -> str:
        for arg in call.args:
            if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
                return str(arg.value)
        return fallback

    for name, tree in trees.items():
        if not name.startswith(f"{COMMANDS}."):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and node.annotation is not None:
                for call in calls(node.annotation):
                    found[flag(call, "--" + node.arg.replace("_", "-"))].add(name)
            elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                words = re.findall("[A-Z][a-z]+", node.targets[0].id.removesuffix("Option"))
                for call in calls(node.value):
                    found[flag(call, "--" + "-".join(w.lower() for w in words))].add(name)
    return found


def classes_named(trees: dict[str, ast.Module], *names: str) -> list[str]:
    return [
        f"{module}.{node.name}"
        for module, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name in names
    ]


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.Module]:
    return modules()


def test_no_module_imports_one_that_imports_it(trees):
    assert cycles(imports(trees)) == []


def test_no_two_parts_of_the_package_import_each_other(trees):
    assert cycles(part_edges(imports(trees))) == []


def test_the_cycle_checks_can_fail(tmp_path):
    root = tmp_path / "camcli"
    (root / "check").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "check" / "__init__.py").write_text("")
    (root / "check" / "cases.py").write_text("from camcli.report.page import esc\n")
    (root / "report").mkdir()
    (root / "report" / "__init__.py").write_text("")
    (root / "report" / "page.py").write_text("")
    (root / "report" / "check.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from camcli.check.cases import run_cases\n"
    )
    (root / "a.py").write_text("def f():\n    from camcli import b\n")
    (root / "b.py").write_text("from .a import f\n")
    edges = imports(modules(root))
    assert cycles(edges) == [["camcli.a", "camcli.b"]]
    assert sorted(cycles(part_edges(edges))) == [
        ["camcli.a", "camcli.b"],
        ["camcli.check", "camcli.report"],
    ]


def test_only_the_commands_and_the_display_print(trees):
    assert printing(trees) == []


def test_the_print_check_can_fail():
    tree = ast.parse(
        "import sys\nfrom rich.console import Console\nprint(1)\nsys.stdout.write('')\n"
    )
    assert len(printing({"camcli.check.cases": tree})) == 3


def test_every_exit_code_is_named_in_errors(trees):
    assert literal_exit_codes(trees) == []
    assert literal_exit_codes({"camcli.cli.run": ast.parse("raise typer.Exit(code=1)")}) == [
        "camcli.cli.run:1: exit code 1"
    ]


def test_one_writer_serialises_json_csv_and_junit(trees):
    assert machine_writers(trees) == []
    assert machine_writers({"camcli.x": ast.parse("json.dumps({})")}) == ["camcli.x:1: json.dumps"]


def test_one_model_spec_and_one_explain_spec(trees):
    assert classes_named(trees, "ModelSpec", "ModelOptions") == ["camcli.config.ModelSpec"]
    assert classes_named(trees, "ExplainSpec") == ["camcli.config.ExplainSpec"]


def test_an_option_that_several_commands_take_is_declared_once(trees):
    declared = option_declarations(trees)
    twice = {flag: sorted(found) for flag, found in declared.items() if len(found) > 1}
    assert twice == {flag: sorted(found) for flag, found in OWN_DECLARATIONS.items()}
    twice = {
        "camcli.cli.options": ast.parse("NumClassesOption = Annotated[int, typer.Option()]"),
        "camcli.cli.run": ast.parse("def run(num_classes: Annotated[int, typer.Option()]): ..."),
    }
    assert option_declarations(twice) == {"--num-classes": {"camcli.cli.options", "camcli.cli.run"}}


def test_every_command_module_is_short():
    long = {
        module_name(p): n
        for p in sorted((PACKAGE / "cli").glob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_COMMAND_LINES
    }
    assert long == {}


def defined_names(tree: ast.Module) -> set[str]:
    """What a module defines at its top level (not what it imports)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If):  # sys.version_info branches
            names |= defined_names(ast.Module(body=node.body + node.orelse, type_ignores=[]))
    return names


def borrowed_imports(trees: dict[str, ast.Module]) -> list[str]:
    """Names taken from a module that only imports them itself (``Target`` through
    ``camcli.explain``): a name comes from the module that defines it. A package's
    ``__init__`` may gather names: that is its public face."""
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in trees:
                continue
            if _is_package(node.module, trees):
                continue
            own = defined_names(trees[node.module])
            for alias in node.names:
                if alias.name not in own and f"{node.module}.{alias.name}" not in trees:
                    found.append(f"{name}:{node.lineno}: {alias.name} from {node.module}")
    return found


def test_a_name_is_imported_from_the_module_that_defines_it(trees):
    assert borrowed_imports(trees) == []
    borrowed = {
        "camcli.targets": ast.parse("class Target: ..."),
        "camcli.explain": ast.parse("from camcli.targets import Target"),
        "camcli.run": ast.parse("from camcli.explain import Target"),
    }
    assert borrowed_imports(borrowed) == ["camcli.run:1: Target from camcli.explain"]
