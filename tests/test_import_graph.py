"""The ppmtrack package's import graph has no cycle, counting imports inside functions (which hide cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

import ppmtrack

ROOT = Path(ppmtrack.__file__).parent
LAYERS = ("engine", "pipelines", "tracker")


def module_files() -> dict[str, Path]:
    """Module name (``ppmtrack.pipelines.track``; a package by its ``__init__.py``) → its source file."""
    modules = {}
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            parts = ("ppmtrack", *path.relative_to(ROOT).with_suffix("").parts)
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, source: str, is_package: bool, modules) -> set[str]:
    """The ppmtrack modules (among ``modules``) that ``name`` imports anywhere in its ``source`` (module level,
    functions, TYPE_CHECKING blocks): ``from A import b`` counts A, and A.b where that is a module."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", modules)
            for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds at least one import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_sees_a_cycle_hidden_in_a_function():
    sources = {"ppmtrack.x.a": "from ppmtrack.x.b import f\n",
               "ppmtrack.x.b": "def f():\n    from . import a\n    return a\n",
               "ppmtrack.x.c": "import ppmtrack.x.a\n"}
    graph = {name: imported_modules(name, text, False, sources) for name, text in sources.items()}
    assert graph == {"ppmtrack.x.a": {"ppmtrack.x.b"}, "ppmtrack.x.b": {"ppmtrack.x.a"},
                     "ppmtrack.x.c": {"ppmtrack.x.a"}}
    assert find_cycles(graph) == [["ppmtrack.x.a", "ppmtrack.x.b"]]


def test_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "ppmtrack.tracker.fusion" in graph["ppmtrack.tracker.kalman"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (function-level imports included): " + "; ".join(
        " ↔ ".join(c) for c in cycles)


def test_layers_depend_one_way():
    """engine and tracker never import pipelines; engine and tracker never import each other."""
    allowed = {"engine": {"engine"}, "tracker": {"tracker"}, "pipelines": {"engine", "tracker", "pipelines"}}
    wrong = [(name, dep) for name, deps in import_graph().items() for dep in deps
             if dep.split(".")[1] not in allowed[name.split(".")[1]]]
    assert not wrong, wrong
