"""The import graph of magncli has no cycle.

Every import statement counts, wherever it is: at the top, inside a function (an import
put there to break a circle still makes one) or under TYPE_CHECKING. An edge goes to the
module a statement names: `from magncli import datasets` imports magncli.datasets,
`from magncli import __version__` imports magncli (the package's __init__).
"""
import ast
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "magncli"


def _module_names() -> Dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported(node: ast.AST, here: str, is_package: bool, modules: Set[str]) -> Set[str]:
    """The magncli modules one import statement names."""
    found = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            # `import a.b.c` imports the longest prefix that is a module of ours
            for n in range(len(parts), 0, -1):
                if ".".join(parts[:n]) in modules:
                    found.add(".".join(parts[:n]))
                    break
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = here if is_package else here.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            if f"{base}.{alias.name}" in modules:
                found.add(f"{base}.{alias.name}")       # a submodule
            elif base in modules:
                found.add(base)                          # a name defined in `base`
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = _module_names()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            edges |= _imported(node, name, is_package, set(modules))
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None."""
    state: Dict[str, int] = {}          # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_finder_sees_function_local_and_relative_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from magncli import datasets, __version__\n    from . import x\n")
    modules = {"magncli", "magncli.datasets", "magncli.sub", "magncli.sub.x"}
    found = set()
    for node in ast.walk(tree):
        found |= _imported(node, "magncli.sub.y", False, modules)
    assert found == {"magncli", "magncli.datasets", "magncli.sub.x"}


def test_magncli_has_no_import_cycle():
    graph = import_graph()
    assert "magncli.restore" in graph and "magncli.cli.app" in graph   # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_magncli_names_nothing_undefined_and_imports_nothing_unused():
    """pyflakes' checks (ruff's F rules) over the package: an undefined name is a NameError
    waiting for the one path that reaches it (eval --inputs crashed on such a one)."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--select", "F", "--no-cache", str(PACKAGE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
