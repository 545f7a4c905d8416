"""SECURITY.md ties each claim to a test: every test it names must exist, and the service-role uses it
lists must be the code's, each with the endpoints that reach it, so the doc cannot rot."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECURITY = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)

Node = tuple[str, str]  # (path of the module, name of a top-level def or class, or "<module>")


def test_every_test_security_md_names_exists():
    current, named, missing = None, 0, []
    for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", SECURITY):
        current = path or current
        if not (ROOT / current).exists():
            missing.append(current)
            continue
        if name:
            named += 1
            if not re.search(rf"def {name}\b", (ROOT / current).read_text(encoding="utf-8")):
                missing.append(f"{current}::{name}")
    assert named >= 20
    assert missing == []


class CallGraph:
    """Who can run what in lib/ and api/, from the source: an edge from each top-level function or class
    to every top-level function or class of lib/ or api/ it names (called or handed on), through the
    module's imports. A function handed at import time to another module's function (a registration:
    `aside.on_recovery(drain_after_outage)`) is taken as callable from every definition of that module,
    so a hook can never hide who ends up running it. Coarse on purpose: a path it invents costs a line in
    SECURITY.md; a path it missed would be a service-role use nobody reviewed."""

    def __init__(self) -> None:
        files = sorted([*(ROOT / "lib").rglob("*.py"), *(ROOT / "api").rglob("*.py")])
        self.trees = {self._rel(path): ast.parse(path.read_text(encoding="utf-8")) for path in files}
        self.defs = {name: {node.name for node in tree.body if isinstance(node, DEFINITIONS)}
                     for name, tree in self.trees.items()}
        self.edges: dict[Node, set[Node]] = {}
        for module in self.trees:
            self._link(module)

    @staticmethod
    def _rel(path: Path) -> str:
        return path.relative_to(ROOT).as_posix()

    def _module(self, dotted: str) -> str | None:
        base = ROOT.joinpath(*dotted.split("."))
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.exists():
                return self._rel(path)
        return None

    def _names(self, module: str) -> dict[str, Node | str]:
        """Local name → a definition (module, name), or a module's path; imports anywhere in the file."""
        names: dict[str, Node | str] = {name: (module, name) for name in self.defs[module]}
        for node in ast.walk(self.trees[module]):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    local = alias.asname or alias.name
                    if found := self._module(f"{node.module}.{alias.name}"):
                        names[local] = found
                    elif (found := self._module(node.module)) in self.defs and alias.name in self.defs[found]:
                        names[local] = (found, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and (found := self._module(alias.name)):
                        names[alias.asname] = found
        return names

    def _refs(self, tree: ast.AST, names: dict[str, Node | str]) -> set[Node]:
        found: set[Node] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(names.get(node.id), tuple):
                found.add(names[node.id])  # type: ignore[arg-type]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                module = names.get(node.value.id)
                if isinstance(module, str) and node.attr in self.defs.get(module, ()):
                    found.add((module, node.attr))
        return found

    def _link(self, module: str) -> None:
        names = self._names(module)
        for node in self.trees[module].body:
            if isinstance(node, DEFINITIONS):
                self.edges.setdefault((module, node.name), set()).update(self._refs(node, names) - {(module, node.name)})
                continue
            self.edges.setdefault((module, "<module>"), set()).update(self._refs(node, names))
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                handed = set().union(*(self._refs(arg, names) for arg in [*call.args, *call.keywords]))
                for registry, _ in self._refs(call.func, names):
                    for name in self.defs[registry]:
                        self.edges.setdefault((registry, name), set()).update(handed)

    def reachable(self, start: Node) -> set[Node]:
        seen: set[Node] = set()
        todo = [start]
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(self.edges.get(node, ()))
        return seen

    def service_role_uses(self) -> set[Node]:
        """Each top-level function or class of lib/ or api/ that calls `db.service()` (nested calls included)."""
        return {(module, node.name) for module, tree in self.trees.items() if module != "lib/db.py"
                for node in tree.body if isinstance(node, DEFINITIONS)
                and any(isinstance(call, ast.Call) and ast.unparse(call.func) in ("db.service", "service")
                        for call in ast.walk(node))}

    def endpoints_reaching(self, targets: set[Node]) -> dict[Node, set[str]]:
        """For each target, the api/ files from which it can run."""
        out: dict[Node, set[str]] = {target: set() for target in targets}
        for start in [node for node in self.edges if node[0].startswith("api/")]:
            for target in self.reachable(start) & targets:
                out[target].add(start[0])
        return out


def listed_uses() -> dict[str, set[str]]:
    """The service-role table: `where` → the api/ files its `reached from` cell names."""
    section = SECURITY[SECURITY.index("## The service-role key"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) >= 2 and (where := re.fullmatch(r"`((?:lib|api)/[\w/\[\]]+\.py::\w+)`", cells[0])):
            rows[where.group(1)] = set(re.findall(r"`(api/[\w/\[\]]+\.py)`", cells[1]))
    return rows


def test_the_service_role_uses_listed_are_exactly_those_in_the_code_with_every_endpoint_that_reaches_them():
    graph = CallGraph()
    used = graph.endpoints_reaching(graph.service_role_uses())
    derived = {f"{module}::{name}": endpoints for (module, name), endpoints in used.items()}
    # The scan sees nested calls, and the recovery hook a public read runs after a Redis outage.
    assert "lib/domain/payments.py::_parties" in derived and "lib/domain/visits.py::book" in derived
    assert "api/properties/index.py" in derived["lib/cache/outbox.py::_rpc"]
    listed = listed_uses()
    assert set(listed) == set(derived), (f"used but not in SECURITY.md: {sorted(set(derived) - set(listed))}; "
                                         f"listed but unused: {sorted(set(listed) - set(derived))}")
    wrong = {where: {"missing": sorted(derived[where] - listed[where]), "not reaching": sorted(listed[where] - derived[where])}
             for where in listed if listed[where] != derived[where]}
    assert wrong == {}, f"SECURITY.md's `reached from` differs from the code: {wrong}"


def test_a_registered_hook_is_reached_from_whoever_runs_the_registry():
    # The omission this test was written for: outbox.drain_after_outage is never called by name, only
    # handed to aside.on_recovery at import; a public read then runs it with the service role.
    graph = CallGraph()
    assert ("lib/cache/outbox.py", "drain_after_outage") in graph.reachable(("lib/cache/aside.py", "get_or_load"))
    assert ("lib/cache/outbox.py", "_rpc") in graph.reachable(("api/search.py", "handler"))
