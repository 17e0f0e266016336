"""The layering rules of ARCHITECTURE.md, checked on the source with ast (nothing is imported).

Every import counts: at module level and inside functions, `import a.b`, `from a import b` (an
import of module a.b when that is a module, else of a), relative imports, and
importlib.import_module("a.b") with a literal name. A module importing a.b.c depends on the
longest prefix of it that is a module of kit/ or device_agents/.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kit", "device_agents")
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted name as written (resolved if relative)
    where: str  # path:line


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports_of(name: str, path: Path) -> list[Import]:
    return _imports_in(name, path.name == "__init__.py", path.read_text(), str(path.relative_to(ROOT)))


def _imports_in(name: str, is_package: bool, source: str, where: str) -> list[Import]:
    """Every name module `name` imports, with the line it does so on."""
    package = name if is_package else name.rpartition(".")[0]
    found = []

    def add(imported: str, node: ast.AST) -> None:
        found.append(Import(name, imported, f"{where}:{node.lineno}"))

    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                add(submodule if submodule in MODULES else module, node)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value, node)
    return found


IMPORTS = [imp for name, path in MODULES.items() for imp in _imports_of(name, path)]


def _resolve(dotted: str) -> str | None:
    """The longest prefix of `dotted` that is one of our modules."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _graph() -> dict[str, dict[str, str]]:
    """module -> {module it imports: where (the first place it does)}."""
    graph: dict[str, dict[str, str]] = {name: {} for name in MODULES}
    for imp in IMPORTS:
        target = _resolve(imp.imported)
        if target and target != imp.importer:
            graph[imp.importer].setdefault(target, imp.where)
    return graph


def _strongly_connected(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep chains)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return components


def _shortest_cycle(graph: dict[str, dict[str, str]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, staying inside the component."""
    start, members = component[0], set(component)
    came_from = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in graph[node]:
            if child == start:
                path = [node]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in came_from:
                came_from[child] = node
                queue.append(child)
    return component  # unreachable for a strongly connected component


def _describe(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    where = ", ".join(graph[a][b] for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}  (imports at {where})"


def test_the_walker_sees_every_kind_of_import():
    source = ("import kit.package.signing\nfrom kit import errors, __version__\n"
              "def f():\n    from .. import results\n    from .base import Device\n    from . import nothing_here\n"
              "    importlib.import_module('kit.recipes.loader')\n")
    found = [(imp.imported, imp.where) for imp in _imports_in("kit.devices.bench", False, source, "x.py")]
    assert found == [("kit.package.signing", "x.py:1"), ("kit.errors", "x.py:2"), ("kit", "x.py:2"),
                     ("kit.results", "x.py:4"), ("kit.devices.base", "x.py:5"), ("kit.devices", "x.py:6"),
                     ("kit.recipes.loader", "x.py:7")]
    assert [imp.imported for imp in _imports_in("kit.devices", True, "from .base import Device\n", "x.py")] == \
        ["kit.devices.base"]
    assert _resolve("kit.package.signing.load_private_key") == "kit.package.signing"
    assert _resolve("numpy.linalg") is None


def test_the_cycle_finder_names_the_cycle():
    graph = {"a": {"b": "a.py:1"}, "b": {"c": "b.py:2", "d": "b.py:3"}, "c": {"a": "c.py:4"}, "d": {}, "e": {"a": "e.py:5"}}
    components = _strongly_connected(graph)
    assert components == [["a", "b", "c"]]
    assert _describe(graph, _shortest_cycle(graph, components[0])) == \
        "a -> b -> c -> a  (imports at a.py:1, b.py:2, c.py:4)"


def test_no_import_cycles():
    graph = _graph()
    cycles = [_describe(graph, _shortest_cycle(graph, c)) for c in _strongly_connected(graph)]
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles)


def test_no_file_over_400_lines():
    too_long = sorted((len(p.read_text().splitlines()), str(p.relative_to(ROOT))) for p in MODULES.values())
    offenders = [f"{path}: {n} lines" for n, path in too_long if n > MAX_LINES]
    assert not offenders, f"files over {MAX_LINES} lines:\n" + "\n".join(offenders)


def _offending(importers: str, forbidden: str, *, except_under: str | None = None) -> list[str]:
    """Imports by modules under `importers` (but not under `except_under`) of anything under `forbidden`."""
    def under(name: str, prefix: str | None) -> bool:
        return prefix is not None and (name == prefix or name.startswith(prefix + "."))

    return sorted(f"{imp.where}: {imp.importer} imports {imp.imported}" for imp in IMPORTS
                  if under(imp.importer, importers) and not under(imp.importer, except_under)
                  and under(imp.imported, forbidden))


def test_device_agents_import_nothing_from_kit():
    # The agent is copied to devices on its own: a kit import there fails on the device.
    offenders = _offending("device_agents", "kit")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", ["kit.devices", "kit.fleet"])
def test_devices_and_fleet_do_not_use_the_testbed(package):
    offenders = _offending(package, "kit.testbed")
    assert not offenders, "\n".join(offenders)


def test_nothing_below_the_cli_imports_it():
    # kit/__main__.py is `python -m kit`, the CLI's entry point: above the CLI, not below it.
    offenders = [o for o in _offending("kit", "kit.cli", except_under="kit.cli") if " kit.__main__ imports " not in o]
    assert not offenders, "\n".join(offenders)
