"""SECURITY.md ties each claim to a test: every test it names must exist, and the service-role uses it
lists must be the code's, so the doc cannot rot."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECURITY = (ROOT / "SECURITY.md").read_text(encoding="utf-8")


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


def service_role_uses() -> set[str]:
    """`lib/domain/payments.py::_reserve`, ...: each top-level function of lib/ or api/ that calls `db.service()`."""
    found = set()
    for path in sorted([*(ROOT / "lib").rglob("*.py"), *(ROOT / "api").rglob("*.py")]):
        if path.name == "db.py" and path.parent.name == "lib":
            continue  # where the client is made, not used
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in tree.body:
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            calls = [node for node in ast.walk(function) if isinstance(node, ast.Call)
                     and ast.unparse(node.func) in ("db.service", "service")]
            if calls:
                found.add(f"{path.relative_to(ROOT)}::{function.name}")
    return found


def test_the_service_role_uses_listed_are_exactly_those_in_the_code():
    section = SECURITY[SECURITY.index("## The service-role key"):]
    section = section[:section.index("\n## ", 1)]
    listed = set(re.findall(r"`((?:lib|api)/[\w/\[\]]+\.py::\w+)`", section))
    used = service_role_uses()
    assert "lib/domain/payments.py::_parties" in used and "lib/domain/visits.py::book" in used  # the scan sees nested calls
    assert listed == used, f"used but not in SECURITY.md: {sorted(used - listed)}; listed but unused: {sorted(listed - used)}"
