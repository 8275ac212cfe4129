"""The package's layers (docs/architecture.md): every import points down, no module
imports its own importer, and the top layer's packages stay out of each other.

Every import counts: at the top of a module, inside a function (a deferred import is
still an arrow) and under ``TYPE_CHECKING``. The graph is read from the source with
``ast``, so nothing is imported to draw it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "eximhook"

# Bottom to top. A module may import from its own layer's other modules only where
# the layer is one package (its modules' arrows must still form no cycle), and from
# any layer below. Top-level packages listed together are siblings: none imports
# another.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "periods", "perms"),
    ("model",),
    ("log",),
    ("config",),
    ("storage",),
    ("backends", "exim"),
    ("engine",),
    ("notify",),
    ("relaytest",),
    ("hooks", "serve"),
    ("ops",),
    ("cli",),
    ("reference",),
    ("__main__",),
]
# Modules of the base layer import one another in this order only (errors first).
BASE_ORDER = ("errors", "periods", "perms")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    out: set[str] = set()

    def add(dotted: str) -> None:
        while dotted and dotted not in MODULES:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            out.add(dotted)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("eximhook."):
                    add(alias.name.removeprefix("eximhook."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("eximhook."):
                base = node.module.removeprefix("eximhook.")
            elif node.module == "eximhook":
                base = ""
            else:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                add(full if full in MODULES else base)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def _layer(name: str) -> int:
    for i, names in enumerate(LAYERS):
        if _top(name) in names:
            return i
    raise AssertionError(f"eximhook.{name} is in no layer: add it to LAYERS in {__file__}")


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        if name:
            _layer(name)


def test_imports_point_down() -> None:
    wrong = []
    for name, targets in GRAPH.items():
        if not name:
            continue
        for target in targets:
            if not target:
                continue
            up = _layer(target) > _layer(name)
            sibling = _layer(target) == _layer(name) and _top(target) != _top(name)
            if _top(name) in BASE_ORDER and _top(target) in BASE_ORDER:
                sibling = BASE_ORDER.index(_top(target)) > BASE_ORDER.index(_top(name))
            if up or sibling:
                wrong.append(f"eximhook.{name} imports eximhook.{target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert not _cycles(), "modules that import each other, directly or around a circle:\n" + "\n".join(
        " <-> ".join(c) for c in _cycles())


def test_the_check_sees_deferred_and_type_checking_imports() -> None:
    """The graph holds an import inside a function and one under TYPE_CHECKING (the
    hooks defer theirs: a check that missed them would pass on any circle)."""
    assert "engine.events" in GRAPH["hooks"]  # imported inside _record
    assert any("TYPE_CHECKING" in MODULES[n].read_text() for n in GRAPH)


def test_only_the_backends_read_which_backend() -> None:
    """``[store] backend`` is read in one place (``backends.cluster``), besides the config
    that loads and checks it: every other module asks ``cluster.shares`` and friends."""
    readers = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "backend" and (
                    isinstance(node.value, ast.Attribute) and node.value.attr == "store"):
                readers.add(name)
    assert readers == {"backends.cluster", "config.load"}, sorted(readers)


def test_the_engine_sees_only_the_backend_interface() -> None:
    """``engine`` reaches a backend through ``backends.base`` alone: which backend it is
    (LMDB, Redis, LMDB with a journal) is for the doors above it to choose."""
    seen = {target for name, targets in GRAPH.items() if _top(name) == "engine"
            for target in targets if _top(target) == "backends"}
    assert seen <= {"backends.base"}, sorted(seen)
