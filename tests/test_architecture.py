"""The package boundaries ARCHITECTURE.md draws, checked on the sources (AST only: nothing is imported).

Layers, bottom to top: ``model`` (inference core) < ``handler`` (the function's runtime) < ``handler.http``
(the Knative HTTP adapter) and the entry points < ``handler.local`` / ``model.training`` (local tools) <
``handler.cli``. An import may only go down.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.paths import REPO_ROOT

PACKAGES = ("handler", "model")
LOCAL_ONLY = ("handler.local", "model.training")
ENTRY_POINTS = ("handler.lambda_function", "handler.knative")
# The CLI dispatches to every command, local ones included (lazily, and refusing cleanly where they are absent).
ABOVE_EVERYTHING = ("handler.cli",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))}


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


def import_graph(*, top_level_only: bool) -> dict[str, set[str]]:
    modules = our_modules()
    graph = {}
    for name, path in modules.items():
        targets = {resolve(i, modules) for i in imports_of(path, top_level_only=top_level_only)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_graph_sees_every_package():
    graph = import_graph(top_level_only=True)
    assert {"handler.lambda_function", "handler.knative", "handler.http.app", "handler.local.demo"} <= set(graph)
    assert "handler.process" in graph["handler.lambda_function"]
    assert "model.predict" in graph["handler.process"]


def test_no_import_cycle():
    graph = import_graph(top_level_only=True)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_inference_core_never_imports_the_service_layer():
    graph = import_graph(top_level_only=False)
    offenders = {(m, t) for m, ts in graph.items() if within(m, "model") for t in ts if within(t, "handler")}
    assert offenders == set()


@pytest.mark.parametrize("local", LOCAL_ONLY)
def test_runtime_never_imports_local_tools(local):
    # Anywhere in the module, function bodies too: the image does not have the local packages at all.
    graph = import_graph(top_level_only=False)
    runtime = [m for m in graph if not any(within(m, p) for p in LOCAL_ONLY) and m not in ABOVE_EVERYTHING]
    offenders = {(m, t) for m in runtime for t in graph[m] if within(t, local)}
    assert offenders == set()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_reach_no_local_tool_or_moto(entry):
    graph = import_graph(top_level_only=False)
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
    assert {"handler.process", "handler.runtime", "model.predict"} <= seen


def test_http_adapter_is_used_only_by_the_knative_entry_point():
    graph = import_graph(top_level_only=False)
    users = {m for m, ts in graph.items() if any(within(t, "handler.http") for t in ts)}
    users = {m for m in users if not within(m, "handler.http")}
    assert users <= {"handler.knative", "handler.cli"}
    # The Eventing relay is its own process (`rasterfn relay`), started by the CLI without the function's app.
    assert {t for t in graph["handler.cli"] if within(t, "handler.http")} <= {"handler.http.relay"}
