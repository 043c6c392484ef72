"""The package import graph of ``src/stalwart``, checked from the source (no servers).

Every ``import`` / ``from`` statement of every module is read with :mod:`ast`: at module level,
inside functions and under ``if TYPE_CHECKING:``. **Type-only imports count**, for every rule:
a module that names another's types in its signatures depends on it as surely as one that
calls it (a change there changes its API), and "type-only" is the usual way a cycle hides
until someone needs the name at run time. So the rules below are about dependencies, not only
about what Python happens to execute.

Modules group into *units*: each package directly under ``stalwart/`` (``broker``,
``checkpoints``, ``actors``, ``supervisor``, ``telemetry``, ``observability``, ``adapters``,
``testing``) is one unit; each top-level module (``client``, ``cli``, ``config``, ``errors``,
``_text`` ...) is its own; the root ``stalwart/__init__.py`` (the public facade that re-exports
everything) is the unit ``stalwart``. The rules:

1. no cycle between units;
2. ``broker`` and ``checkpoints`` never import each other nor anything above them: only the
   foundation leaves (:data:`FOUNDATION`) and the telemetry leaf;
3. the ``telemetry`` leaf imports nothing of Stalwart's runtime (only :data:`TELEMETRY_MAY_USE`)
   and no third-party package but OpenTelemetry, structlog, the Prometheus client and msgspec;
4. ``supervisor`` never imports ``actors``;
5. ``adapters`` import only public core API: the ``stalwart`` facade and modules whose dotted
   path has no ``_``-prefixed part (``stalwart.errors``, ``stalwart.checkpoints``), never
   ``stalwart.actors._context`` and the like (their own ``stalwart.adapters._x`` are theirs).

No module defines a module-level ``__getattr__`` (an import on first use hides a dependency
from this reader; it is how the old actors/observability cycle was papered over). And one
check at run time: importing ``stalwart.broker`` (or ``stalwart.telemetry``) loads
neither the checkpoint store nor anything above it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "stalwart"

FOUNDATION = frozenset(
    {
        "errors",
        "messages",
        "config",
        "_text",
        "_json",
        "_ids",
        "_secrets",
        "_version",
        "_pricing",
        "_transport",
        "_tasks",
        # Build ids, lanes and compatibility (issue #18): used by the broker and the store.
        "builds",
    }
)
"""Top-level modules that import no Stalwart package: anything may use them."""

TELEMETRY_MAY_USE = frozenset({"telemetry", "errors", "_text", "_secrets", "_version"})
TELEMETRY_THIRD_PARTY = frozenset({"opentelemetry", "structlog", "prometheus_client", "msgspec"})
PACKAGES_OF_ISSUE_11 = ("broker", "checkpoints", "actors", "supervisor", "telemetry")


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, resolved to a module of ``src/stalwart`` when it is one."""

    source: str
    target: str
    line: int
    type_only: bool

    def __str__(self) -> str:
        how = " (TYPE_CHECKING)" if self.type_only else ""
        return f"{self.source}:{self.line} -> {self.target}{how}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module under ``src/stalwart`` by dotted name."""
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, int, bool]] = []
        self._type_only = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_only += 1
            for child in node.body:
                self.visit(child)
            self._type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self._type_only > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        known = modules()
        for alias in node.names:
            # ``from stalwart import observability`` imports a module; ``from stalwart import
            # App`` a name of the package.
            sub = f"{base}.{alias.name}"
            self.found.append((sub if sub in known else base, node.lineno, self._type_only > 0))


@cache
def imports() -> tuple[Import, ...]:
    """Every import of every module under ``src/stalwart``."""
    out: list[Import] = []
    for name, path in modules().items():
        collector = _Collector(name, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        out += [Import(name, t, line, type_only) for t, line, type_only in collector.found]
    return tuple(out)


def internal_imports() -> list[Import]:
    """The imports of one Stalwart module by another."""
    return [i for i in imports() if i.target == "stalwart" or i.target.startswith("stalwart.")]


def unit(module: str) -> str:
    """The unit a module belongs to: its top-level package or module under ``stalwart``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "stalwart"


def unit_edges() -> dict[tuple[str, str], list[Import]]:
    """Unit -> unit dependencies, each with the imports that make it."""
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in internal_imports():
        a, b = unit(imp.source), unit(imp.target)
        if a != b:
            edges.setdefault((a, b), []).append(imp)
    return edges


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected groups of more than one unit (Tarjan), sorted."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def _offenders(source_unit: str, allowed: frozenset[str]) -> list[str]:
    return [
        str(i)
        for i in internal_imports()
        if unit(i.source) == source_unit and unit(i.target) not in allowed | {source_unit}
    ]


# -- the reader itself ----------------------------------------------------------------------


def test_the_reader_sees_relative_type_only_and_function_level_imports() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from . import _names\n"
        "from ..errors import StalwartError\n"
        "if TYPE_CHECKING:\n"
        "    from stalwart.checkpoints import RunRecord\n"
        "def f() -> None:\n"
        "    import stalwart.actors\n"
    )
    collector = _Collector("stalwart.broker._broker", is_package=False)
    collector.visit(ast.parse(source))
    assert collector.found == [
        ("__future__", 1, False),
        ("typing", 2, False),
        ("stalwart.broker._names", 3, False),
        ("stalwart.errors", 4, False),
        ("stalwart.checkpoints", 6, True),
        ("stalwart.actors", 8, False),
    ]


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({("a", "b"), ("b", "c")}, []),
        ({("a", "b"), ("b", "a")}, [["a", "b"]]),
        ({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}, [["a", "b", "c"]]),
        ({("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")}, [["a", "b"], ["c", "d"]]),
    ],
)
def test_cycles_finds_every_loop(edges: set[tuple[str, str]], expected: list[list[str]]) -> None:
    assert cycles(edges) == expected


def test_the_graph_is_read_from_the_whole_tree() -> None:
    names = modules()
    for package in PACKAGES_OF_ISSUE_11:
        assert f"stalwart.{package}" in names, package
    # The reader found the imports everyone knows are there.
    assert any(
        i.target.startswith("stalwart.checkpoints") for i in imports() if unit(i.source) == "actors"
    )


# -- the rules ------------------------------------------------------------------------------


def test_no_cycle_between_packages() -> None:
    edges = unit_edges()
    found = cycles(set(edges))
    detail = [
        str(i)
        for group in found
        for (a, b), via in sorted(edges.items())
        if a in group and b in group
        for i in via[:3]
    ]
    assert found == [], "\n".join(detail)


@pytest.mark.parametrize("layer", ["broker", "checkpoints"])
def test_broker_and_checkpoints_import_only_the_foundation(layer: str) -> None:
    assert _offenders(layer, FOUNDATION | {"telemetry"}) == []


def test_telemetry_is_a_leaf() -> None:
    assert _offenders("telemetry", TELEMETRY_MAY_USE) == []
    stdlib = sys.stdlib_module_names
    third_party = sorted(
        str(i)
        for i in imports()
        if unit(i.source) == "telemetry"
        and not i.target.startswith("stalwart")
        and i.target.split(".")[0] not in stdlib | TELEMETRY_THIRD_PARTY
    )
    assert third_party == []


def test_supervisor_never_imports_actors() -> None:
    assert [
        str(i)
        for i in internal_imports()
        if unit(i.source) == "supervisor" and unit(i.target) == "actors"
    ] == []


def _public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split(".")[1:])


def test_adapters_import_only_public_core_api() -> None:
    private = [
        str(i)
        for i in internal_imports()
        if unit(i.source) == "adapters" and unit(i.target) != "adapters" and not _public(i.target)
    ]
    assert private == []


def test_no_module_hides_imports_behind_a_module_getattr() -> None:
    # A module ``__getattr__`` that imports on first use is how the old cycle was papered
    # over; it also hides the dependency from this reader.
    lazy = [
        name
        for name, path in modules().items()
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
            for node in ast.parse(path.read_text(encoding="utf-8")).body
        )
    ]
    assert lazy == []


# -- at run time ----------------------------------------------------------------------------

# The root ``stalwart/__init__.py`` is the public facade and imports every package, so any
# ``import stalwart.x`` loads it all; to see what a package itself pulls in, the probe puts a
# bare ``stalwart`` package (its path only, no facade) in ``sys.modules`` first.
_PROBE = """
import json, sys, types
root = types.ModuleType("stalwart")
root.__path__ = [{pkg!r}]
sys.modules["stalwart"] = root
import {module}
print(json.dumps(sorted(m for m in sys.modules if m.startswith("stalwart."))))
"""


def _loaded_by(module: str) -> set[str]:
    code = _PROBE.format(pkg=str(PKG), module=module)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return {unit(m) for m in json.loads(out.stdout)}


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("stalwart.broker", FOUNDATION | {"broker", "telemetry"}),
        ("stalwart.checkpoints", FOUNDATION | {"checkpoints", "telemetry"}),
        ("stalwart.telemetry", TELEMETRY_MAY_USE),
    ],
)
def test_importing_a_low_package_loads_nothing_above_it(
    module: str, allowed: frozenset[str]
) -> None:
    loaded = _loaded_by(module)
    assert unit(module) in loaded
    assert loaded - allowed == set()
    if module == "stalwart.broker":
        assert "checkpoints" not in loaded
