"""The library's floors: no import cycles, no kfp (nor the pipeline/components packages) in src/autoft.

The import graph is read from the source (every ``import`` statement, at module level or inside a
function, except those under ``if TYPE_CHECKING:``), so a lazy import that points back up a floor
counts as the cycle it is. The kfp check imports every module for real, in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "autoft"
FORBIDDEN = ("kfp", "components", "pipeline")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports (``from a.b import c`` counts a.b.c when that is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, known) - {name} for name, path in modules.items()}
    # A package's __init__ is imported with any of its modules; that edge is not a dependency.
    return {name: {t for t in targets if not name.startswith(f"{t}.")} for name, targets in graph.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return cycles


def test_the_library_has_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 30, "the graph covers the whole package"
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_floors_are_where_the_design_puts_them() -> None:
    graph = import_graph()
    # The dataset registry is a leaf: a static name -> function map; the config never needs a dataset module.
    assert graph["autoft.data.registry"] <= {"autoft.errors"}
    assert graph["autoft.errors"] == set()
    reachable_from_config = _reachable(graph, "autoft.config")
    assert not {m for m in reachable_from_config if m.startswith("autoft.data.ds_")}
    # MLflow tracking is orchestration (components/tracking.py); the library only packages a model for serving.
    mlflow_users = {name for name, path in _modules().items() if _imports_package(path, "mlflow")}
    assert mlflow_users == {"autoft.serving", "autoft.pyfunc_model"}


def _imports_package(path: Path, package: str) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        if any(name == package or name.startswith(f"{package}.") for name in names):
            return True
    return False


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_library_module_imports_kfp_or_the_pipeline_packages() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {sorted(_modules())!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO / "tests", timeout=300
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_every_component_input_is_described_in_the_compiled_pipeline() -> None:
    spec = next(yaml.safe_load_all((REPO / "pipeline" / "compiled" / "autoft_pipeline.yaml").read_text()))
    steps = {name: comp for name, comp in spec["components"].items() if "executorLabel" in comp}
    assert len(steps) >= 10
    undescribed = [
        f"{name}.{group}.{key}"
        for name, comp in steps.items()
        for group in ("parameters", "artifacts")
        for key, value in comp.get("inputDefinitions", {}).get(group, {}).items()
        if not value.get("description", "").strip()
    ]
    assert undescribed == []
