"""No import cycle anywhere in the repository's packages (the layering itself is `lint-imports`' job, configured in
pyproject.toml and run by `make test`). Print the graph with: python -m tests.unit.test_import_graph"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import grimp
import pytest

PACKAGES = ("shared", "devtools", "bench")


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def cycles(graph: grimp.ImportGraph, modules: Iterable[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(module: str) -> None:
        nonlocal counter
        index[module] = low[module] = counter
        counter += 1
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in graph.modules or imported.split(".")[0] not in PACKAGES:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_in_any_package() -> None:
    graph = _graph()
    found = cycles(graph, graph.modules)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("broken", [True])
def test_the_cycle_check_finds_a_cycle(broken: bool) -> None:
    graph = grimp.ImportGraph()
    for name in ("shared", "shared.a", "shared.b", "shared.c"):
        graph.add_module(name)
    graph.add_import(importer="shared.a", imported="shared.b")
    graph.add_import(importer="shared.b", imported="shared.c")
    graph.add_import(importer="shared.c", imported="shared.a")
    assert cycles(graph, graph.modules) == [["shared.a", "shared.b", "shared.c"]]


if __name__ == "__main__":  # the graph, one line per module: what it imports of the repository
    g = _graph()
    for name in sorted(g.modules):
        if name.split(".")[0] in PACKAGES:
            inside = sorted(m for m in g.find_modules_directly_imported_by(name) if m.split(".")[0] in PACKAGES)
            print(f"{name} -> {', '.join(inside) or '-'}")
