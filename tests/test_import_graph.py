"""The package's layers: what each concern may import, and no import circle anywhere.

Edges come from every import statement of every module, also those inside functions (the same
parse that gives the rules their code inputs, code_deps.py), so a lazy import counts too.
"""

from __future__ import annotations

import pytest

from workflow_scripts.code_deps import PACKAGE_DIR, _imported_modules, module_path

MODULES = sorted(
    "workflow_scripts." + ".".join(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    for path in PACKAGE_DIR.rglob("*.py")
    if path.name != "__init__.py"
)


def imports(module: str) -> set[str]:
    """Package modules (not packages) that `module` imports."""
    return {
        name
        for name in _imported_modules(module_path(module))
        if module_path(name).name != "__init__.py" and name != module
    }


GRAPH = {module: imports(module) for module in MODULES}


def concern(module: str) -> str:
    """The subpackage (data, model, train, evaluate, summary, cluster) or 'top' for a module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "top"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, three colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 unvisited, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, 2) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if colour.get(nxt) == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_lazy_imports():
    # evaluate/extraction_counts imports the backbone builder inside a function
    assert "workflow_scripts.model.backbone" in GRAPH["workflow_scripts.evaluate.extraction_counts"]


def test_no_import_circle():
    assert find_cycle(GRAPH) is None


# what each concern may import besides the top-level helpers (errors, atomic, tables, config, ...)
ALLOWED = {
    "data": {"data"},
    "model": {"model"},
    "train": {"train", "model", "data"},
    "evaluate": {"evaluate", "model", "data"},
    "summary": {"summary"},
    "cluster": {"cluster", "train", "evaluate", "model", "data"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_concern_imports_only_what_lies_below_it(package):
    crossings = {
        (module, name)
        for module in MODULES
        if concern(module) == package
        for name in GRAPH[module]
        if concern(name) != "top" and concern(name) not in ALLOWED[package]
    }
    assert not crossings


def test_training_and_evaluation_do_not_import_each_other():
    for module in MODULES:
        banned = {"train": "evaluate", "evaluate": "train"}.get(concern(module))
        assert not [name for name in GRAPH[module] if concern(name) == banned], module
