"""The house's layering, read from the source with `ast` (every import, module-level or inside a function):

- packages: `strict_config` <- `data_pipeline` <- `mktn` <- `cluster`; none imports one to its right, but
  for the one sanctioned exception, `mktn/__init__.py`'s lazy re-export of `cluster.serve.predictor.Predictor`;
- rooms inside `cluster`, in order: job, tracking, train, serve, tune, demo, cli; each imports only itself
  and the rooms before it; every `cluster` module lives in a room (only `cluster/__init__.py` does not);
- no import cycle between modules;
- a `mktn` command module (`cluster/cli/<command>.py`) imports no other command.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cluster.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("strict_config", "data_pipeline", "mktn", "cluster")
ROOMS = ("job", "tracking", "train", "serve", "tune", "demo", "cli")
SANCTIONED = ("mktn", "cluster.serve.predictor")  # mktn/__init__.py's lazy `Predictor` re-export


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    files = {"strict_config": REPO / "strict_config.py"}
    for package in PACKAGES[1:]:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (`from a.b import c` is `a.b.c` when that is a module, else `a.b`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports(path, modules) for name, path in modules.items()}


def layer(module: str) -> int:
    return PACKAGES.index(module.split(".")[0])


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "cluster" and len(parts) > 1 else None


def test_no_package_imports_a_package_above_it(graph: dict[str, set[str]]) -> None:
    upward = [
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if layer(target) > layer(module) and (module, target) != SANCTIONED
    ]
    assert upward == []
    assert SANCTIONED[1] in graph[SANCTIONED[0]], "the sanctioned exception no longer exists: drop it here"


def test_every_cluster_module_lives_in_a_room_and_imports_only_rooms_before_it(
    graph: dict[str, set[str]],
) -> None:
    homeless = [m for m in graph if m.startswith("cluster.") and room(m) not in ROOMS]
    assert homeless == [], f"modules outside the rooms {ROOMS}"
    upward = [
        (module, target)
        for module, targets in graph.items()
        if room(module)
        for target in targets
        if room(target) and ROOMS.index(room(target)) > ROOMS.index(room(module))
    ]
    assert upward == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    edges = {m: {t for t in targets if t in graph and (m, t) != SANCTIONED} for m, targets in graph.items()}
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert cycles == []


def test_commands_import_no_other_command(graph: dict[str, set[str]]) -> None:
    commands = {f"cluster.cli.{name}" for name in COMMANDS}
    assert commands <= set(graph)
    assert {m: graph[m] & (commands - {m}) for m in commands} == {m: set() for m in commands}


def test_the_checks_see_a_violation(tmp_path: Path) -> None:
    """Control: the parser finds function-level imports, and a cycle is found."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from cluster.serve import registry\n    import mktn.model\n")
    assert imports(path, {"cluster.serve.registry": path}) == {"cluster.serve.registry", "mktn.model"}
    assert sorted(map(sorted, strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}))) == [
        ["a", "b"],
        ["c"],
    ]


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of the graph `edges` (node -> successors)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in edges.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components
