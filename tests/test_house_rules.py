"""The house rules no tool checks, read from the source with `ast` (nothing is imported to run).

What ruff (BLE, D), mypy and import-linter check (`make lint`: ruff.toml, mypy.ini, .importlinter)
is not repeated here. What is left: every Redis key and tag is built in lib/keys.py; a signed-in
user is typed `auth.User`; a write handler counts the rate limits; each lib module has its test
module; the docs name only what exists.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "lib"
MODULES = sorted(p.relative_to(LIB).with_suffix("").as_posix().replace("/", ".") for p in LIB.rglob("*.py")
                 if p.stem != "__init__")  # dotted below lib: "keys", "cache.aside"
BY_NAME = {m.rsplit(".", 1)[-1]: m for m in MODULES}  # a module by its own name: "aside" → "cache.aside"
HANDLERS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "api").rglob("*.py"))


@cache
def tree(relative: str) -> ast.Module:
    return ast.parse((ROOT / relative).read_text(encoding="utf-8"), filename=relative)


def lib(module: str) -> str:
    return f"lib/{module.replace('.', '/')}.py"


# == auth.User, not Any, for a signed-in user ===================================================


def users_typed_any(path: str) -> list[str]:
    """Parameters named `user` annotated `Any` (or not at all) in `path`'s functions."""
    found = []
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for arg in node.args.args + node.args.kwonlyargs:
                if arg.arg == "user" and (arg.annotation is None or ast.unparse(arg.annotation) == "Any"):
                    found.append(f"{node.name}() line {node.lineno}")
    return found


@pytest.mark.parametrize("module", MODULES)
def test_a_signed_in_user_is_typed_auth_user_not_any(module: str) -> None:
    assert users_typed_any(lib(module)) == [], "annotate `user: User` (from lib.auth)"


# == a signed-in write counts against the rate limits =========================================
# `Request.user()` only reads; the count is the handler's explicit next step, `req.rate_limit(user)`.

WRITES = ("post", "put", "patch", "delete")


def writes_not_limited(module: ast.Module) -> list[str]:
    """The write methods in `module` that call `req.user()` but never `req.rate_limit(...)`."""
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef) and node.name in WRITES:
            called = {ast.unparse(call.func) for call in ast.walk(node) if isinstance(call, ast.Call)}
            if "req.user" in called and "req.rate_limit" not in called:
                found.append(f"{node.name}() line {node.lineno}")
    return found


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_signed_in_write_handler_counts_the_rate_limits(handler: str) -> None:
    assert writes_not_limited(tree(handler)) == [], "call `req.rate_limit(user)` right after `req.user()`"


def test_the_write_rule_sees_a_write_that_forgets_the_limit() -> None:
    source = ("class H:\n"
              "    def post(self, req):\n        return req.user()\n"  # forgot
              "    def patch(self, req):\n        user = req.user()\n        req.rate_limit(user)\n"
              "    def get(self, req):\n        return req.user()\n"  # a read: never counted
              "    def delete(self, req):\n        return req.header('X')\n")  # no user: not this rule's
    assert writes_not_limited(ast.parse(source)) == ["post() line 2"]


# == every Redis key name and every invalidation findable from lib/keys.py =====================
# (and its other half, lib/cache/invalidation.py: the map of what a change invalidates, which it points to)
#
# A key is `<namespace>:<family>:...`; what may build one outside lib/keys.py:
#   - a literal or f-string that starts with the namespace (`"dousell:..."`);
#   - `config.namespace()` (the prefix itself), anywhere but lib/keys.py and lib/config.py;
#   - `keys.name(...)`, the raw composer, anywhere but lib/keys.py;
#   - a literal or f-string that starts with a tag's or a key family's head (`f"dashboard:{owner}"`,
#     `"payments:lease:"`): a tag is a key too (`meta:tag:<tag>`), and a hand-made tag list is a
#     hand-made invalidation. The heads are read from lib/keys.py itself (every key and tag it
#     makes), so a new family is covered the day it is added.
# Docstrings are skipped (they quote the names for the reader). `lock:` is not a head here: the
# metrics' hash fields are `lock:<kind>:<event>`, and a lock key cannot be made without the
# namespace, which the first three rules catch.


def key_heads() -> set[str]:
    """`family:` heads of every key (after the namespace) and every tag lib/keys.py makes."""
    keys = importlib.import_module("lib.keys")
    invalidation = importlib.import_module("lib.cache.invalidation")
    made = [keys.properties_all(), keys.properties_city("Dakar"), keys.property_detail(1), keys.search({}),
            keys.visit_slots(1), keys.dashboard("u"), keys.profile("u"), keys.notifications("u"), keys.payments(1),
            keys.user_visits("u"), keys.lease_parties(1)]
    names = [k.key for k in made] + [keys.metrics_bucket("m", 1), keys.idempotency("u", "h"), keys.applied_change("c"),
                                     keys.tag_key("t")]
    tags = [t for k in made for t in k.tags]
    row = {"id": 1, "owner_id": "o", "city": "Dakar", "lease_id": 1, "property_id": 1, "visitor_id": "v",
           "user_id": "u", "status": "published"}
    for table in invalidation.TABLES:
        tags += invalidation.change_tags(table, row, {**row, "owner_id": "p"}, ["o"])
    heads = {name.split(":")[1] + ":" for name in names} | {tag.split(":")[0] + ":" for tag in tags if ":" in tag}
    return heads - {"lock:"}


def literal_heads(module: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, leading text) of every string literal and f-string of `module`, docstrings left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(module)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    inside_fstrings = {id(part) for node in ast.walk(module) if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(module):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings | inside_fstrings:
            yield node.lineno, node.value
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            yield node.lineno, str(node.values[0].value)


def calls(module: ast.Module, owner: str, name: str) -> list[int]:
    """Lines where `module` calls `<owner>.<name>(...)`."""
    return [node.lineno for node in ast.walk(module) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == name
            and isinstance(node.func.value, ast.Name) and node.func.value.id == owner]


def hand_made_keys(path: str, module: ast.Module, heads: set[str]) -> list[str]:
    """What in `module` (the source of `path`) builds a key name or a tag by hand, by line."""
    found = [f"line {line}: {text[:40]!r}" for line, text in literal_heads(module)
             if text.startswith("dousell:") or any(text.startswith(head) for head in heads)]
    if path not in ("lib/keys.py", "lib/config.py"):
        found += [f"line {line}: config.namespace()" for line in calls(module, "config", "namespace")]
    if path != "lib/keys.py":
        found += [f"line {line}: keys.name()" for line in calls(module, "keys", "name")]
    return sorted(found, key=lambda f: int(f.split(":")[0].split()[1]))


def test_the_heads_come_from_lib_keys_and_cover_keys_and_tags() -> None:
    heads = key_heads()
    assert {"properties:", "meta:", "dashboard:", "payments:", "visits:", "slots:", "property:", "lease:"} <= heads
    assert "lock:" not in heads and "lat:" not in heads and "db:" not in heads  # metrics' hash fields


def test_the_key_rule_catches_a_hand_made_key_a_tag_and_the_namespace() -> None:
    source = ('import config, keys\n'
              'A = f"dousell:properties:detail:{1}"\n'
              'B = ["payments:lease:" + str(1)]\n'
              'C = f"dashboard:{owner}"\n'
              'D = config.namespace() + ":x"\n'
              'E = keys.name("ratelimit", "u")\n'
              'F = f"lat:{name}:{label}"\n'  # a metrics field: not a key
              'def f():\n    """dousell:properties:all_public is quoted for the reader."""\n')
    found = hand_made_keys("lib/sample.py", ast.parse(source), key_heads())
    assert [f.split(":")[0] for f in found] == ["line 2", "line 3", "line 4", "line 5", "line 6"]


@pytest.mark.parametrize("path", [lib(m) for m in MODULES if m not in ("keys", "cache.invalidation")] + HANDLERS)
def test_no_key_name_or_tag_is_built_outside_lib_keys(path: str) -> None:
    assert hand_made_keys(path, tree(path), key_heads()) == [], f"{path}: add the name to lib/keys.py and call it"


# == tests mirror modules ======================================================================


@pytest.mark.parametrize("module", MODULES)
def test_every_lib_module_has_its_own_test_module(module: str) -> None:
    *package, name = module.split(".")
    expected = Path("tests", "lib", *package, f"test_{name}.py")
    assert (ROOT / expected).exists(), f"{expected} is missing"


# == the docs name what exists =================================================================


LAYOUT = re.compile(r"^\| (?P<paths>`[^|]+) \| ", re.MULTILINE)
PACKAGES = sorted(p.parent.name for p in LIB.glob("*/__init__.py"))  # web, domain, cache, edge, ops
GROUND = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")  # lib's root: errors, config, keys...


def layout_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [row["paths"] for row in LAYOUT.finditer(readme)]


def test_the_readme_layout_table_has_one_row_per_lib_package_and_one_for_the_ground() -> None:
    rows = layout_rows()
    packages = sorted(package for row in rows for package in re.findall(r"^`lib/(\w+)/`", row))
    assert packages == PACKAGES, "README.md's layout table: one row per package of lib/, named `lib/<package>/`"
    ground = [row for row in rows if row.startswith("`lib/*.py`")]
    assert len(ground) == 1, "README.md's layout table: one row `lib/*.py` for the modules at lib's root"
    named = sorted(re.findall(r"`(\w+)`", ground[0].split("`lib/*.py`", 1)[1]))
    assert named == GROUND, "the `lib/*.py` row names each module at lib's root, and only those"


DOCS = ["README.md", "SECURITY.md", "bench/README.md", "drills/README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]
# `lib/x.py`, `lib/x.py::name`, `lib/x.name`, `lib.x.name`, or a bare `x.name` for a lib module x.
# `request.*` is left out: PostgREST's `request.headers` / `request.jwt.claims` settings share the word.
REFERENCE = re.compile(r"`(?:lib[/.](?:(?:web|domain|cache|edge|ops)[/.])?)?(?P<module>[a-z_]+)(?P<py>\.py)?"
                       r"(?:(?:::|\.)(?P<name>[A-Za-z_]\w*))?")


def references(text: str) -> Iterator[tuple[str, str | None]]:
    for match in REFERENCE.finditer(text):
        module, name, explicit = match["module"], match["name"], match.group(0).startswith(("`lib/", "`lib."))
        if module not in BY_NAME or module == "request" and not explicit:
            continue
        if name is None and not (explicit and match["py"]):
            continue  # a bare word (`cache`, `metrics`): prose, not a reference
        yield module, name


@pytest.mark.parametrize("doc", DOCS)
def test_a_doc_names_only_lib_modules_and_attributes_that_exist(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    missing = sorted({f"{module}.{name}" if name else f"lib/{module}.py" for module, name in references(text)
                      if not (ROOT / lib(BY_NAME[module])).exists()
                      or name and not hasattr(importlib.import_module(f"lib.{BY_NAME[module]}"), name)})
    assert missing == [], f"{doc} names what the code does not have"


def test_the_reference_reader_finds_the_shapes_docs_use() -> None:
    text = ("`lib/cache/locks.py` `lib/cache/locks.py::release_if_held` `lib/cache/invalidation.change_tags` "
            "`lib.domain.properties.update` "
            "`locking.under_lock` `request.headers` `locks.on_event` `cache`")
    assert list(references(text)) == [("locks", None), ("locks", "release_if_held"), ("invalidation", "change_tags"),
                                      ("properties", "update"), ("locking", "under_lock"), ("locks", "on_event")]
