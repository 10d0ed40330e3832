"""The dependency rules of docs/architecture.md, checked on the source (no imports executed).

Every `import` counts, including those inside functions (a lazy import is still a dependency);
only `if TYPE_CHECKING:` blocks are skipped, since they never run.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hgm_core", "hgm_node", "hgm_view")

LAYERS: dict[str, int] = {
    "hgm_core.types": 0,
    "hgm_core.layout": 1, "hgm_core.paths": 1, "hgm_core.configs": 1,
    "hgm_core.gaussians": 2, "hgm_core.camera": 2, "hgm_core.runtime": 2, "hgm_core.device": 2,
    "hgm_core.io": 3,
    "hgm_core.render": 4, "hgm_core.perception": 4, "hgm_core.model": 4,
    "hgm_core.body": 5,
    "hgm_core.pipeline": 6,
    "hgm_core.data": 7, "hgm_core.serve": 7,
    "hgm_core.train": 8,
    "hgm_core.cli": 9, "hgm_core.setup_cli": 9, "hgm_core": 9,
    "hgm_core.__main__": 10,
}
"""Room -> layer. A module may import its own room and rooms of lower layers only (plus the
command modules' entry points, below). `body` sits above `perception` because a fit consumes
a `Perception`; `data` renders with `render` and writes with `io`; `train` reads `data`."""

ENTRY_POINT_IMPORTS = {"hgm_core.cli", "hgm_core.runtime"}
"""Any `cli` module may import the command framework and the process setup."""

ROS_PREFIXES = ("rclpy", "rosidl", "rcl_interfaces", "launch", "launch_ros", "ament_index_python",
                "builtin_interfaces", "std_msgs", "sensor_msgs", "geometry_msgs", "visualization_msgs",
                "diagnostic_msgs", "std_srvs", "gsplat_msgs")
NODE_MAY_IMPORT = ("hgm_core.types", "hgm_core.layout", "hgm_core.io", "hgm_core.serve.client",
                   "hgm_core.serve.protocol", "hgm_core.serve.schema", "hgm_core.serve.curve", "hgm_core.serve")

VIEW_MAY_IMPORT = ("hgm_core.types", "hgm_core.layout", "hgm_core.paths", "hgm_core.io", "hgm_core.cli", "hgm_node",
                   "hgm_view")
"""`hgm view` reads files (io), serves the page and follows the node's topics; no rendering, model or pipeline."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Absolute names of everything `source` (module `module`) imports (`from a import b` gives
    `a` and `a.b`)."""
    tree = ast.parse(source)
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
               for n in ast.walk(node)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


@lru_cache(maxsize=1)
def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


@lru_cache(maxsize=1)
def _graph() -> dict[str, tuple[set[str], set[str]]]:
    """Module -> (project modules it imports, top-level third-party names it imports)."""
    mods = _sources()
    out = {}
    for name, path in mods.items():
        found = _imports(path.read_text(), name, path.name == "__init__.py")
        out[name] = ({i for i in found if i in mods and i != name},
                     {i.split(".")[0] for i in found if i.split(".")[0] not in PACKAGES})
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_hgm_core_module_has_a_layer():
    missing = sorted({_room(m) for m in _sources() if m.startswith("hgm_core") and _room(m) not in LAYERS})
    assert not missing, f"add these rooms to LAYERS and docs/architecture.md: {missing}"


def test_no_import_cycles():
    cycles = _cycles({m: deps for m, (deps, _) in _graph().items()})
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_dependencies_point_down():
    wrong = []
    for module, (deps, _) in _graph().items():
        if not module.startswith("hgm_core"):
            continue
        is_cli = module.endswith(".cli") or module.endswith("_cli")
        for dep in deps:
            if _room(dep) == _room(module) or (is_cli and dep in ENTRY_POINT_IMPORTS):
                continue
            if LAYERS[_room(dep)] >= LAYERS[_room(module)]:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))


def test_hgm_core_never_imports_ros():
    hits = sorted(f"{m} imports {t}" for m, (_, third) in _graph().items() if m.startswith("hgm_core")
                  for t in third if t.startswith(ROS_PREFIXES))
    assert not hits, hits


def _closure(start: set[str]) -> set[str]:
    graph, seen, todo = _graph(), set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m][0]
    return seen


def test_the_node_package_never_imports_torch():
    node = {m for m in _sources() if m.startswith("hgm_node")}
    reached = _closure(node)
    outside = sorted(m for m in reached if m.startswith("hgm_core") and not m.startswith(NODE_MAY_IMPORT))
    assert not outside, f"hgm_node reaches library rooms it must not: {outside}"
    heavy = sorted(f"{m} imports {t}" for m in reached for t in _graph()[m][1] if t in ("torch", "numba"))
    assert not heavy, heavy


def test_the_viewer_imports_only_files_topics_and_the_command_framework():
    wrong = sorted(f"{m} -> {d}" for m, (deps, _) in _graph().items() if m.startswith("hgm_view")
                   for d in deps if not d.startswith(VIEW_MAY_IMPORT))
    assert not wrong, f"hgm_view imports rooms it must not: {wrong}"
    importers = sorted(m for m, (deps, _) in _graph().items()
                       if not m.startswith("hgm_view") and any(d.startswith("hgm_view") for d in deps))
    assert not importers, f"the viewer is a leaf: {importers} import it"


@pytest.mark.parametrize("source,expected", [
    ("from hgm_core.types import Mesh\n", {"hgm_core.types", "hgm_core.types.Mesh"}),
    ("def f():\n    import torch\n", {"torch"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n", {"typing", "typing.TYPE_CHECKING"}),
    ("from . import stage\n", {"hgm_core.pipeline", "hgm_core.pipeline.stage"}),
])
def test_the_import_scanner_sees_lazy_imports_and_skips_type_checking(source, expected):
    assert set(_imports(source, "hgm_core.pipeline.probe")) == expected


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
