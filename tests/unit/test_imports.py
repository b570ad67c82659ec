"""The package's import graph: no cycle between its modules, and the client never imports the writer.

Every import counts, including those inside functions (a lazy import is still a
dependency). Read from the source with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
import os

import nori_wal

ROOT = os.path.dirname(os.path.dirname(nori_wal.__file__))


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(os.path.dirname(nori_wal.__file__)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that module ``name`` imports."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    deps = set()
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:  # ``from . import protocol`` names a module, ``from .x import y`` a name
                deps.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {d for d in deps if d in modules and d != name}


MODULES = _modules()
GRAPH = {name: _imports(name, path, MODULES) for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
    """A path of imports from ``start`` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for dep in GRAPH[node]:
            if dep == start:
                return path + [start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, path + [dep]))
    return None


def test_no_module_imports_itself_through_others():
    cycles = [c for c in map(_cycle_from, sorted(GRAPH)) if c is not None]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_prometheus_exporter_depends_on_the_events_not_on_observe():
    assert "nori_wal.observe" not in GRAPH["nori_wal.prometheus"]
    assert "nori_wal.events" in GRAPH["nori_wal.prometheus"]


def test_the_client_never_imports_the_writer():
    client = {m for m in GRAPH if m.startswith("nori_wal.client")}
    assert client
    for m in client:
        assert not {d for d in GRAPH[m] if d.startswith("nori_wal.writer_proc")}, m
