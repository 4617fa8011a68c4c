"""Which source files a CLI module runs: the module and everything it imports from this package.

Snakemake tracks a rule's shell command but not the Python modules it imports, so the rules list
these files as inputs. Following the real import graph (rather than whole subpackages) means an
edit to the metrics code reruns evaluation, not GPU feature extraction.
"""

from __future__ import annotations

import ast
import os
from functools import cache
from pathlib import Path

PACKAGE = "workflow_scripts"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_path(module: str) -> Path:
    """workflow_scripts.a.b -> .../workflow_scripts/a/b.py (or the package's __init__.py)."""
    relative = Path(*module.split(".")[1:])
    candidate = PACKAGE_DIR / relative
    if candidate.is_dir():
        return candidate / "__init__.py"
    return candidate.with_suffix(".py")


def _imported_modules(path: Path) -> set[str]:
    """Package modules imported anywhere in `path` (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from workflow_scripts.x import y` may name a module y or an attribute of x
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == PACKAGE and module_path(n).is_file())
    return found


@cache
def module_files(module: str) -> tuple[str, ...]:
    """Sorted source files of `module`, the packages on its path and all it imports,
    transitively."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        # importing a.b.c runs a/__init__, a/b/__init__ first
        parents = [".".join(parts[:i]) for i in range(1, len(parts))]
        for candidate in [name, *parents]:
            if candidate not in seen and module_path(candidate).is_file():
                seen.add(candidate)
                pending.extend(_imported_modules(module_path(candidate)))
    return tuple(sorted(str(module_path(name)) for name in seen))


def relative_module_files(module: str, start: str | os.PathLike = ".") -> list[str]:
    """module_files relative to `start` (the Snakemake working directory), so that moving the
    whole checkout does not look like a changed set of inputs."""
    return [os.path.relpath(path, start) for path in module_files(module)]
