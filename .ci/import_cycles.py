"""List import cycles among mmsearch_gym modules (module-level and function-level imports).

    python .ci/import_cycles.py            # prints every cycle and every core -> integration import

Imports under ``if TYPE_CHECKING:`` count too (the house rule: a cycle for the type checker is a
cycle in the design; use a Protocol instead). A ``from pkg import name``
counts as an import of ``pkg.name`` when that is a module, else of ``pkg``; ``import pkg.sub``
counts as an import of ``pkg.sub`` only (Python loads the parent package first, which is not a
dependency of the importer). Exit status 1 when a cycle, or a core module other than the CLI's
``commands`` importing an integration, is found. ``tests/test_imports.py`` runs this check.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mmsearch_gym"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, those under ``if TYPE_CHECKING:`` included."""
    return ast.walk(tree)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, for running or for typing (with the parent packages they load)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(out)


def core_to_integrations(edges: dict[str, set[str]], *, with_commands: bool = False) -> list[tuple[str, str]]:
    """(core module, integration module) pairs: the core must never import an integration.

    The CLI's subcommands (``mmsearch_gym.commands``) drive the trainers and are listed only
    ``with_commands``.
    """
    integ = f"{PACKAGE}.integrations"
    skip = (integ,) if with_commands else (integ, f"{PACKAGE}.commands")
    return sorted((src, dst) for src, targets in edges.items() if not src.startswith(skip)
                  for dst in targets if dst.startswith(integ + "."))


def main() -> int:
    edges = graph()
    found = cycles(edges)
    leaks = core_to_integrations(edges)
    print(f"{len(edges)} modules, {sum(len(v) for v in edges.values())} import edges")
    for component in found:
        print("cycle:", " <-> ".join(component))
    for src, dst in leaks:
        print(f"core imports an integration: {src} -> {dst}")
    for src, dst in sorted(set(core_to_integrations(edges, with_commands=True)) - set(leaks)):
        print(f"(a CLI command imports an integration: {src} -> {dst})")
    if not found and not leaks:
        print("no import cycles; the core imports no integration")
    return 1 if found or leaks else 0


if __name__ == "__main__":
    sys.exit(main())
