"""The house rules (issue 16's goal) as tests: one place for each idea, checked on the source itself.

Each rule reads the code with `ast`, never by importing it (nothing runs). A case that today's
code still breaks, in a module another branch is changing, is an explicit `xfail(strict=True)`
naming that module: once it is fixed the xfail turns into a failure, and the mark is removed.
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
BUSINESS = ("domain.payments", "domain.visits", "domain.properties", "domain.account")  # what the endpoints do: domain values out
MAX_LINES = 300


@cache
def tree(relative: str) -> ast.Module:
    return ast.parse((ROOT / relative).read_text(encoding="utf-8"), filename=relative)


def lib(module: str) -> str:
    return f"lib/{module.replace('.', '/')}.py"


def pending(rule: str, module: str, why: str) -> pytest.MarkDecorator:
    """The mark for a case today's code breaks, in a module another branch owns."""
    return pytest.mark.xfail(strict=True, reason=f"{rule}: {module} still breaks it ({why})")


def cases(names: list[str] | tuple[str, ...], known: dict[str, pytest.MarkDecorator]) -> list[object]:
    return [pytest.param(name, marks=known[name], id=name) if name in known else pytest.param(name, id=name)
            for name in names]


# == no import cycle inside lib/, imports inside functions included =============================


def lib_imports(module: str) -> set[str]:
    """The lib modules `module` imports anywhere in its body (top level, functions, TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(tree(lib(module))):
        if isinstance(node, ast.ImportFrom) and (node.module == "lib" or (node.module or "").startswith("lib.")):
            base = node.module[4:]
            found |= {f"{base}.{alias.name}".lstrip(".") for alias in node.names} | {base}
        elif isinstance(node, ast.Import):
            found |= {alias.name[4:] for alias in node.names if alias.name.startswith("lib.")}
    return (found & set(MODULES)) - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None (depth-first, colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_through_three_modules_and_none_in_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_counts_imports_inside_functions() -> None:
    assert "domain.properties" in lib_imports("domain.visits")  # `from lib.domain import properties` inside _owner_of
    assert "auth" in lib_imports("web.request")  # inside Request.user()


def test_lib_has_no_import_cycle_even_counting_imports_inside_functions() -> None:
    graph = {module: lib_imports(module) for module in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


# == no lib/ module over 300 lines ==============================================================


@pytest.mark.parametrize("module", cases(MODULES, {}))
def test_a_lib_module_has_at_most_300_lines(module: str) -> None:
    lines = (ROOT / lib(module)).read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"lib/{module}.py has {lines} lines: split it by job"


# == one docstring line saying the job =========================================================


@pytest.mark.parametrize("path", [lib(m) for m in MODULES] + HANDLERS)
def test_a_module_starts_with_one_docstring_line_saying_its_job(path: str) -> None:
    docstring = ast.get_docstring(tree(path), clean=False)
    assert docstring, f"{path} has no docstring"
    first = docstring.split("\n", 1)[0]
    assert first.strip() and first.rstrip().endswith((".", ")")), f"{path}: the first line is one sentence: {first!r}"


# == business modules return domain values, never HTTP =========================================


def http_use(module: ast.Module) -> list[str]:
    """Where `module` imports lib.web.http or names `Reply` (constructing or returning one)."""
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom) and (node.module == "lib.web.http" or (
                node.module == "lib.web" and any(a.name == "http" for a in node.names))):
            found.append(f"line {node.lineno}: imports lib.web.http")
        elif isinstance(node, ast.Name) and node.id == "Reply":
            found.append(f"line {node.lineno}: Reply")
        elif isinstance(node, ast.Attribute) and node.attr == "Reply":
            found.append(f"line {node.lineno}: .Reply")
    return found


@pytest.mark.parametrize("module", cases(BUSINESS, {}))
def test_a_business_module_never_imports_lib_http_nor_builds_a_reply(module: str) -> None:
    assert http_use(tree(lib(module))) == [], f"{lib(module)}: return a domain value, the handler picks the status"


def test_the_http_reader_sees_an_import_and_a_reply() -> None:
    source = "from lib.web import http\nfrom lib.web.http import Reply\n\ndef f():\n    return http.Reply({}, 201)\n"
    assert http_use(ast.parse(source)) == ["line 1: imports lib.web.http", "line 2: imports lib.web.http",
                                           "line 5: .Reply"]


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


@pytest.mark.parametrize("module", cases(MODULES, {}))
def test_a_signed_in_user_is_typed_auth_user_not_any(module: str) -> None:
    assert users_typed_any(lib(module)) == [], "annotate `user: User` (from lib.auth)"


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


@pytest.mark.parametrize("path", cases([lib(m) for m in MODULES if m not in ("keys", "cache.invalidation")] + HANDLERS, {}))
def test_no_key_name_or_tag_is_built_outside_lib_keys(path: str) -> None:
    assert hand_made_keys(path, tree(path), key_heads()) == [], f"{path}: add the name to lib/keys.py and call it"


# == a broad except re-raises or logs, never swallows ==========================================


BROAD = {"Exception", "BaseException"}
LOGGED = {"exception", "error", "warning", "_log_exception"}  # log.exception(...), self._log_exception(...)


def swallowing_handlers(module: ast.Module) -> list[str]:
    """`except:` / `except Exception` / `except BaseException` whose body neither raises nor logs."""
    found = []
    for node in ast.walk(module):
        if not isinstance(node, ast.ExceptHandler):
            continue
        caught = [] if node.type is None else [node.type] if not isinstance(node.type, ast.Tuple) else node.type.elts
        if node.type is not None and not any(isinstance(c, ast.Name) and c.id in BROAD for c in caught):
            continue
        inner = [n for stmt in node.body for n in ast.walk(stmt)]
        if not any(isinstance(n, ast.Raise) or isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                   and n.func.attr in LOGGED for n in inner):
            found.append(f"line {node.lineno}")
    return found


def test_the_except_reader_tells_a_swallow_from_a_reraise_and_a_log() -> None:
    source = ("try:\n    f()\nexcept Exception:\n    pass\n"
              "try:\n    f()\nexcept (ValueError, BaseException):\n    x = 1\n"
              "try:\n    f()\nexcept Exception:\n    cleanup()\n    raise\n"
              "try:\n    f()\nexcept Exception:\n    log.exception('bug')\n"
              "try:\n    f()\nexcept ValueError:\n    pass\n")
    assert swallowing_handlers(ast.parse(source)) == ["line 3", "line 7"]


@pytest.mark.parametrize("path", cases([lib(m) for m in MODULES] + HANDLERS, {}))
def test_a_broad_except_reraises_or_logs(path: str) -> None:
    assert swallowing_handlers(tree(path)) == [], f"{path}: catch what you mean, or log it and re-raise"


# == tests mirror modules ======================================================================


@pytest.mark.parametrize("module", MODULES)
def test_every_lib_module_has_its_own_test_module(module: str) -> None:
    *package, name = module.split(".")
    expected = Path("tests", "lib", *package, f"test_{name}.py")
    assert (ROOT / expected).exists(), f"{expected} is missing"


# == the docs name what exists =================================================================


LAYOUT = re.compile(r"^\| (?P<paths>`[^|]+) \| ", re.MULTILINE)


def test_the_readme_layout_table_names_every_lib_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = {m for row in LAYOUT.finditer(readme) for m in re.findall(r"`lib/([\w/]+)\.py`", row["paths"])}
    listed = {m.replace("/", ".") for m in listed}
    assert sorted(set(MODULES) - listed) == [], "README.md's layout table: add a row (or a name) for each"
    assert sorted(listed - set(MODULES)) == [], "README.md's layout table names modules that do not exist"


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
