"""openapi.json: a valid OpenAPI 3.1 document, one path per api/ file and one operation per handler method,
every error code an endpoint can raise, and served as it is by GET /api/openapi."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import re
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

import lib
from lib import errors
from tests.support import api_module, serve

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = ROOT / "openapi.json"
SPEC = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Error classes no code path raises: their code need not be documented (checked below: nothing calls them).
NEVER_RAISED = {"Conflict"}
# docs/api.md's cached GETs (an `X-Cache` on every 200).
CACHED = {"/api/properties", "/api/properties/{id}", "/api/search", "/api/visits/slots", "/api/dashboard",
          "/api/profile", "/api/notifications", "/api/payments"}


def route(path: Path) -> str:
    """`api/properties/[id].py` → `/api/properties/{id}`; `api/visits/index.py` → `/api/visits`."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "index":
        parts.pop()
    return "/" + "/".join(re.sub(r"^\[(\w+)\]$", r"{\1}", part) for part in parts)


API_FILES = {route(p): p for p in sorted((ROOT / "api").rglob("*.py"))
             if not any(part.startswith("_") for part in p.relative_to(ROOT).parts)}


def load_handler(path: Path):
    return api_module(path.relative_to(ROOT).as_posix()).handler


def resolve(node):
    """Follow a local `$ref` (`#/components/...`)."""
    while isinstance(node, dict) and "$ref" in node:
        target = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def operations():
    for path, item in SPEC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def documented_codes() -> dict[str, set[int]]:
    """Every error code the spec lists, with the statuses it is listed under."""
    found: dict[str, set[int]] = {}
    responses = [(path, status, response) for path, _, operation in operations() for status, response in
                 operation["responses"].items()]
    responses += [(None, "405", SPEC["components"]["responses"]["MethodNotAllowed"])]
    for path, status, response in responses:
        response = resolve(response)
        if int(status) < 400:
            continue
        schema = response["content"]["application/json"]["schema"]
        if (path, status) == ("/api/health", "503"):
            assert schema == {"$ref": "#/components/schemas/HealthDown"}  # the health body, not an error
            continue
        assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}, (status, schema)
        for code in schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]:
            found.setdefault(code, set()).add(int(status))
    return found


def error_classes() -> list[type[errors.DousellError]]:
    """DousellError and every subclass defined in lib/ (lib.domain.payments adds its own)."""
    for module in pkgutil.iter_modules(lib.__path__):
        importlib.import_module(f"lib.{module.name}")
    seen, todo = [], [errors.DousellError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return [cls for cls in seen if cls.__module__.startswith("lib.")]


# -- the document -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1():
    validate(SPEC)
    assert SPEC["openapi"].startswith("3.1.")
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids)), "operationId must be unique"


def test_every_api_file_has_its_path_and_every_path_its_file():
    assert set(SPEC["paths"]) == set(API_FILES)


@pytest.mark.parametrize("path", sorted(API_FILES))
def test_the_operations_are_exactly_the_methods_the_handler_answers(path):
    answered = {m.lower() for m in load_handler(API_FILES[path]).allowed_methods()} - {"head", "options"}
    documented = {m for m in METHODS if m in SPEC["paths"][path]}
    assert documented == answered


def test_every_error_code_an_endpoint_can_raise_is_documented_under_its_status():
    documented = documented_codes()
    for cls in error_classes():
        if cls.__name__ in NEVER_RAISED:
            continue
        assert cls.code in documented, f"{cls.__module__}.{cls.__name__} ({cls.code}) is in no response"
        assert cls.status in documented[cls.code], f"{cls.code} is documented under {documented[cls.code]}, " \
                                                   f"raised as {cls.status}"


def test_every_documented_code_exists_with_that_status():
    statuses = {cls.code: cls.status for cls in error_classes()}
    for code, listed in documented_codes().items():
        assert code in statuses, f"{code} is documented but no error class has it"
        assert listed == {statuses[code]}, f"{code} is listed under {listed}, its class answers {statuses[code]}"


def test_the_classes_left_undocumented_are_really_never_raised():
    for source in [*(ROOT / "lib").rglob("*.py"), *(ROOT / "api").rglob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in NEVER_RAISED, f"{source}:{node.lineno} raises {node.func.id}"


def test_every_operation_documents_the_answers_lib_http_can_give_it():
    for path, method, operation in operations():
        statuses = set(operation["responses"])
        assert {"400", "500"} <= statuses, (method, path)
        assert any(s.startswith("2") for s in statuses), (method, path)
        if "requestBody" in operation:
            assert "413" in statuses, (method, path)
        if operation.get("security") == [{"supabaseAuth": []}]:
            unauthorized = resolve(operation["responses"]["401"])
            codes = unauthorized["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]
            assert set(codes["properties"]["code"]["enum"]) == {"authentication_required", "invalid_token"}
            assert "503" in statuses, (method, path)  # the JWKS may be unreachable
        for status, response in operation["responses"].items():
            headers = resolve(response)["headers"]
            assert {"Cache-Control", "Server-Timing"} <= set(headers), (method, path, status)
            if method == "get" and path in CACHED and status == "200":
                assert resolve(headers["X-Cache"])["required"] is True, (method, path)


def test_signed_in_operations_declare_the_supabase_scheme_and_public_ones_none():
    public = {("get", p) for p in ("/api/health", "/api/openapi", "/api/properties", "/api/properties/{id}",
                                   "/api/search", "/api/visits/slots")} | {("post", "/api/paydunya/ipn")}
    for path, method, operation in operations():
        if (method, path) in public:
            assert not operation.get("security"), (method, path)
        elif path == "/api/metrics":
            assert operation["security"] == [{"metricsToken": []}]
        elif path == "/api/hooks/database":
            assert operation["security"] == [{"databaseWebhookSecret": []}]
        elif path == "/api/cron/reconcile":
            assert operation["security"] == [{"cronSecret": []}]
        else:
            assert operation["security"] == [{"supabaseAuth": []}], (method, path)


def test_every_example_is_valid_against_its_schema():
    from jsonschema import Draft202012Validator

    def validate_at(instance, pointer):
        root = {"$ref": pointer, "components": SPEC["components"], "paths": SPEC["paths"]}
        errors_found = [e.message for e in Draft202012Validator(root).iter_errors(instance)]
        assert not errors_found, (pointer, instance, errors_found)

    checked = 0
    for path, method, operation in operations():
        base = "#/paths/" + path.replace("/", "~1") + f"/{method}"
        parameters = [(f"{base}/parameters/{i}", p) for i, p in enumerate(operation.get("parameters", []))]
        parameters += [(f"#/paths/{path.replace('/', '~1')}/parameters/{i}", p)
                       for i, p in enumerate(SPEC["paths"][path].get("parameters", []))]
        for pointer, parameter in parameters:
            if "example" in resolve(parameter):
                validate_at(resolve(parameter)["example"], parameter.get("$ref", pointer) + "/schema")
                checked += 1
        for media, content in operation.get("requestBody", {}).get("content", {}).items():
            if "example" in content:
                validate_at(content["example"], f"{base}/requestBody/content/{media.replace('/', '~1')}/schema")
                checked += 1
    assert checked >= 8


def test_the_x_cache_values_are_the_contracts():
    assert SPEC["components"]["schemas"]["XCacheValue"]["enum"] == ["HIT", "MISS", "STALE", "BYPASS"]


# -- GET /api/openapi ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    openapi_api = importlib.import_module("api.openapi")
    with serve(openapi_api.handler) as base:
        yield base


def test_get_api_openapi_answers_the_document(served):
    response = httpx.get(f"{served}/api/openapi", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == SPEC


def test_the_document_is_read_once_per_instance(served, monkeypatch):
    openapi_api = importlib.import_module("api.openapi")
    httpx.get(f"{served}/api/openapi", timeout=5)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read again"))
    assert httpx.get(f"{served}/api/openapi", timeout=5).json() == SPEC
    assert openapi_api.document() is openapi_api.document()


def test_other_methods_are_refused_with_allow(served):
    response = httpx.post(f"{served}/api/openapi", timeout=5)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, OPTIONS"
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert httpx.head(f"{served}/api/openapi", timeout=5).status_code == 200


@pytest.mark.parametrize("method, path", [("patch", "/api/profile"), ("post", "/api/paydunya/ipn"),
                                          ("delete", "/api/visits/{id}")])
def test_a_rate_limited_answer_is_one_the_document_describes(method, path):
    from lib.errors import RateLimited
    from tests.integration.test_contract import conform

    error = RateLimited(7)
    answer = httpx.Response(429, content=json.dumps(error.to_body()).encode(), headers={
        **error.headers, "Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store", "Server-Timing": "total;dur=1.0", "X-Content-Type-Options": "nosniff"})
    conform(answer, method, path)
