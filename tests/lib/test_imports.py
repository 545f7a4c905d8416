"""lib's import graph: no cycle (imports inside functions count), and Redis reached only through the edge."""

from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "lib"


def imports_of(path: Path) -> set[str]:
    """The lib modules `path` imports, at module level or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module == "lib" or (node.module or "").startswith("lib.")):
            base = node.module[4:]
            found |= {f"{base}.{alias.name}".lstrip(".") for alias in node.names} | {base}
        elif isinstance(node, ast.Import):
            found |= {alias.name[4:] for alias in node.names if alias.name.startswith("lib.")}
    return (found & set(MODULES)) - {name(path)}


def name(path: Path) -> str:
    """`lib/cache/aside.py` → "cache.aside"."""
    return path.relative_to(LIB).with_suffix("").as_posix().replace("/", ".")


MODULES = {name(path) for path in LIB.rglob("*.py") if path.stem != "__init__"}


def graph() -> dict[str, set[str]]:
    return {name(path): imports_of(path) for path in LIB.rglob("*.py") if path.stem != "__init__"}


def test_lib_has_no_import_cycle():
    edges = graph()
    cycles = []

    def visit(module: str, path: list[str], done: set[str]) -> None:
        for target in sorted(edges.get(module, ())):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                done.add(target)
                visit(target, [*path, target], done)

    for module in sorted(edges):
        visit(module, [module], {module})
    assert cycles == []


def test_only_the_edge_and_its_adapter_talk_to_upstash_redis_or_httpx_for_redis():
    for path in LIB.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in node.names} | {node.module for node in ast.walk(tree)
                                             if isinstance(node, ast.ImportFrom) and node.module}
        if any(name and name.startswith("upstash_redis") for name in names):
            assert path.stem == "upstash_sdk", path.name


def test_cache_locks_writes_and_metrics_reach_redis_through_the_edge_not_through_each_other():
    edges = graph()
    for module in ("cache.locks", "domain.locking", "web.idempotency", "metrics", "ops.report", "ops.health"):
        assert "cache.aside" not in edges[module], f"lib/{module} imports cache.aside"
    assert edges["edge.upstash"] <= {"config", "edge.breaker", "errors", "edge.upstash_sdk", "metrics"}


def test_the_shared_ground_imports_nothing_above_it():
    """lib's root (errors, config, keys, metrics...) is imported by every layer; it imports none."""
    layers = ("web.", "ops.", "domain.", "cache.", "edge.")
    for module, targets in graph().items():
        if "." not in module:
            assert not [t for t in targets if t.startswith(layers)], f"lib/{module}.py imports {targets}"
