"""The package boundaries ARCHITECTURE.md draws, checked on the sources (AST only: nothing is imported).

Every import counts, those inside functions too: a lazy import is still a dependency, and a cycle through
one is still a cycle. Layers, bottom to top, are :data:`LAYERS`; an import may only go down or sideways.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.paths import REPO_ROOT

PACKAGES = ("handler", "model")
LOCAL_ONLY = ("handler.local", "model.training")
ENTRY_POINTS = ("handler.lambda_function", "handler.knative")
# The CLI dispatches to every command, local ones included (lazily, and refusing cleanly where they are absent).
ABOVE_EVERYTHING = ("handler.cli",)
# (package, rank): a module belongs to the longest package that contains it; it imports only ranks <= its own.
# Within the inference core: the root error, the card, the CPU count and the memory limit under raster I/O (with
# the package itself, which prepares GDAL on import, and the predictor's options), under the network, under the
# predictor.
LAYERS = (
    ("model.errors", 0),
    ("model.card", 0),
    ("model.cpus", 0),
    ("model.memory", 0),
    ("model", 1),
    ("model.io", 1),
    ("model.options", 1),
    ("model.network", 2),
    ("model.predictor", 3),
    ("handler", 4),
    ("handler.http", 5),
    ("handler.lambda_function", 6),
    ("handler.knative", 6),
    ("handler.local", 7),
    ("model.training", 7),
    ("handler.commands", 8),
    ("handler.cli", 8),
)


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def imports_of(path: Path, *, top_level_only: bool) -> Iterator[str]:
    """Absolute module names imported by ``path``; ``top_level_only`` skips imports inside functions."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            # `from handler import local` names a module too
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours an imported name refers to (``handler.errors.EventError`` -> ``handler.errors``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(*, top_level_only: bool = False, root: Path = REPO_ROOT) -> dict[str, set[str]]:
    modules = our_modules(root)
    graph = {}
    for name, path in modules.items():
        targets = {resolve(i, modules) for i in imports_of(path, top_level_only=top_level_only)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_sees_every_package():
    graph = import_graph()
    assert {"handler.lambda_function", "handler.knative", "handler.http.app", "handler.local.demo"} <= set(graph)
    assert "handler.process" in graph["handler.lambda_function"]
    assert "handler.products" in graph["handler.process"]
    assert "model.predictor.predict" in graph["handler.products"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first, pure)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_import_cycle():
    assert_no_cycle(import_graph())


def test_the_cycle_check_fails_on_a_planted_cycle(tmp_path):
    # GIVEN a tree whose only cycle goes through an import inside a function
    (tmp_path / "model").mkdir()
    (tmp_path / "handler").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "handler" / "__init__.py").write_text("")
    (tmp_path / "handler" / "a.py").write_text("from handler.b import g\n")
    (tmp_path / "handler" / "b.py").write_text("def g():\n    from handler import a\n")
    # WHEN checked THEN the check fails and names the cycle
    with pytest.raises(pytest.fail.Exception, match=re.escape("handler.a -> handler.b -> handler.a")):
        assert_no_cycle(import_graph(root=tmp_path))
    # ... which a check of top-level imports alone would have missed
    assert find_cycle(import_graph(top_level_only=True, root=tmp_path)) is None


def layer_of(name: str) -> int:
    _, rank = max(((p, r) for p, r in LAYERS if within(name, p)), key=lambda pr: len(pr[0]))
    return rank


def test_imports_only_go_down_the_layers():
    graph = import_graph()
    upward = {(m, t) for m, ts in graph.items() for t in ts if layer_of(t) > layer_of(m)}
    assert upward == set()


def test_every_inference_module_has_a_layer_of_its_own():
    # A new module of the core is put in io, network or predictor (or named here), not left flat in `model/`.
    flat = {m for m in import_graph() if max((p for p, _ in LAYERS if within(m, p)), key=len) == "model"}
    assert flat == {"model"}


def test_inference_core_never_imports_the_service_layer():
    graph = import_graph()
    offenders = {(m, t) for m, ts in graph.items() if within(m, "model") for t in ts if within(t, "handler")}
    assert offenders == set()


@pytest.mark.parametrize("local", LOCAL_ONLY)
def test_runtime_never_imports_local_tools(local):
    # Anywhere in the module, function bodies too: the image does not have the local packages at all.
    graph = import_graph()
    runtime = [m for m in graph if not any(within(m, p) for p in LOCAL_ONLY) and m not in ABOVE_EVERYTHING]
    offenders = {(m, t) for m in runtime for t in graph[m] if within(t, local)}
    assert offenders == set()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_reach_no_local_tool_or_moto(entry):
    graph = import_graph()
    modules = our_modules()
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph[name])
    assert not [m for m in seen if any(within(m, p) for p in LOCAL_ONLY)]
    third_party = {i.split(".")[0] for m in seen for i in imports_of(modules[m], top_level_only=False)}
    assert "moto" not in third_party
    assert {"handler.process", "handler.runtime", "model.predictor.predict"} <= seen


def test_http_adapter_is_used_only_by_the_knative_entry_point():
    graph = import_graph()
    users = {m for m, ts in graph.items() if any(within(t, "handler.http") for t in ts)}
    users = {m for m in users if not within(m, "handler.http")}
    assert users <= {"handler.knative", "handler.cli"}
    # The Eventing relay is its own process (`rasterfn relay`), started by the CLI without the function's app.
    assert {t for t in graph["handler.cli"] if within(t, "handler.http")} <= {"handler.http.relay"}
