"""Real answers of the local stack (vercel dev) validate against openapi.json: status documented for the
operation, JSON content type, required headers present and well-formed, body valid against the schema.

Each endpoint is tried signed in and not, on its happy path and its main error paths. The database is
put back as the seed left it at the end of the module (`pristine`), so the suites after this one see
the demo data unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
from jsonschema import Draft202012Validator

from devstack.__main__ import METRICS_TOKEN, PAYDUNYA_KEYS

ROOT = Path(__file__).resolve().parents[2]
SPEC = json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))

AWA = "awa.ndiaye@example.sn"  # owner of 123 and 789
IBRAHIMA = "ibrahima.fall@example.sn"  # another owner
MOUSSA = "moussa.diop@example.sn"  # tenant of lease 123 (active) and 124 (ended)
FATOU = "fatou.sarr@example.sn"  # no lease
IPN_HASH = hashlib.sha512(PAYDUNYA_KEYS["PAYDUNYA_MASTER_KEY"].encode()).hexdigest()
FORGED = "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0."  # alg: none

# Every table an endpoint can write, children first (the order rows are put back in reverse).
TABLES = ("notifications", "visits", "rental_payments", "visit_slots", "leases", "properties", "profiles")


# -- the spec as a validator ------------------------------------------------------------------------


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _resolve(node: dict, pointer: str) -> tuple[dict, str]:
    """Follow `$ref`s; the node and the pointer it lives at."""
    while "$ref" in node:
        pointer = node["$ref"]
        node = SPEC
        for part in pointer.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def _errors(instance: object, pointer: str) -> list[str]:
    """Validation errors of `instance` against the schema at `pointer` (refs resolve in the whole document)."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": pointer,
            "components": SPEC["components"], "paths": SPEC["paths"]}
    validator = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message[:300]}"
            for e in validator.iter_errors(instance)]


def conform(response: httpx.Response, method: str, path: str) -> httpx.Response:
    """Assert that `response` is an answer openapi.json documents for `method path`; return it."""
    what = f"{method.upper()} {path} → {response.status_code}"
    status = str(response.status_code)
    if status == "405":
        entry, pointer = _resolve({"$ref": "#/components/responses/MethodNotAllowed"}, "")
    else:
        responses = SPEC["paths"][path][method.lower()]["responses"]
        assert status in responses, f"{what}: undocumented status ({sorted(responses)}): {response.text[:300]}"
        entry, pointer = _resolve(responses[status], _pointer("paths", path, method.lower(), "responses", status))
    problems = []
    for name, header in entry.get("headers", {}).items():
        header, header_pointer = _resolve(header, f"{pointer}/headers/{name.replace('/', '~1')}")
        value = response.headers.get(name)
        if value is None:
            if header.get("required"):
                problems.append(f"header {name} missing")
            continue
        problems += [f"header {name}: {e}" for e in _errors(value, f"{header_pointer}/schema")]
    if "content" in entry:
        assert response.headers.get("content-type") == "application/json; charset=utf-8", what
        problems += _errors(response.json(), f"{pointer}/content/application~1json/schema")
    else:
        assert not response.content, what
    assert not problems, f"{what} does not match openapi.json:\n  " + "\n  ".join(problems) + \
        f"\n  body: {response.text[:500]}"
    return response


def code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# -- the database, as the seed left it ---------------------------------------------------------------


class Database:
    """The stack's PostgreSQL as its superuser: digests of every writable table, a snapshot, a restore."""

    def __init__(self, stack):
        self.dsn = f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell"
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def digests(self) -> dict[str, str]:
        """One md5 per table over all its rows, in id order: any insert, update or delete changes it."""
        selects = ", ".join(
            f"(select md5(coalesce(string_agg(t::text, '|' order by t.id), '')) from public.{table} t) as {table}"
            for table in TABLES)
        row = self.conn.execute(f"select {selects}").fetchone()
        return dict(zip(TABLES, row, strict=True))

    def count(self, table: str, where: str = "true") -> int:
        return self.conn.execute(f"select count(*) from public.{table} where {where}").fetchone()[0]

    def snapshot(self, name: str) -> None:
        self.conn.execute(f"drop schema if exists {name} cascade")
        self.conn.execute(f"create schema {name}")
        for table in TABLES:
            self.conn.execute(f"create table {name}.{table} as table public.{table}")

    def restore(self, name: str) -> None:
        """Every table back to the snapshot, rows and timestamps alike (triggers and FK checks off meanwhile)."""
        with self.conn.transaction():
            self.conn.execute("set local session_replication_role = replica")
            for table in TABLES:
                self.conn.execute(f"delete from public.{table}")
            for table in reversed(TABLES):
                # Generated columns (properties.city_lower) are the database's to fill: never copied back.
                columns = ", ".join(c for (c,) in self.conn.execute(
                    "select quote_ident(column_name) from information_schema.columns where table_schema = 'public' "
                    "and table_name = %s and is_generated = 'NEVER' order by ordinal_position", (table,)))
                self.conn.execute(f"insert into public.{table} ({columns}) select {columns} from {name}.{table}")
        self.conn.execute(f"drop schema {name} cascade")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def database(stack) -> Iterator[Database]:
    db = Database(stack)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(scope="module", autouse=True)
def pristine(stack, database) -> Iterator[None]:
    """What this module writes is undone at its end (see `undo`)."""
    before = database.digests()
    database.snapshot("contract_snapshot")
    yield
    undo(stack, database, "contract_snapshot")
    assert database.digests() == before


def undo(stack, database: Database, snapshot: str) -> None:
    """The database back to `snapshot`, Redis emptied, the PayDunya stand-in's invoices forgotten (the rows
    that named them are gone): the suites after this one count invoices per lease and month."""
    database.restore(snapshot)
    stack.redis("FLUSHDB")
    httpx.post(f"{stack.paydunya_url}/__devstack/reset", timeout=10).raise_for_status()


def this_period(months: int = 0) -> str:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


# -- public reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, path, status", [
    ("/api/health", "/api/health", 200),
    ("/api/openapi", "/api/openapi", 200),
    ("/api/properties", "/api/properties", 200),
    ("/api/properties?city=%20dakar%20", "/api/properties", 200),
    ("/api/properties?city=Nowhere", "/api/properties", 200),  # an unknown city is an empty list
    ("/api/properties?town=Dakar", "/api/properties", 422),
    ("/api/properties?city=Dakar%3A%2A", "/api/properties", 422),
    ("/api/properties?city=", "/api/properties", 422),
    ("/api/properties?city=Dakar&city=Thies", "/api/properties", 422),
    ("/api/properties/123", "/api/properties/{id}", 200),
    ("/api/properties/117", "/api/properties/{id}", 404),  # a draft
    ("/api/properties/abc", "/api/properties/{id}", 404),
    ("/api/properties/0", "/api/properties/{id}", 404),
    ("/api/properties/9999999999999999999", "/api/properties/{id}", 404),
    ("/api/search", "/api/search", 200),
    ("/api/search?city=Thies&type=house&min_price=0&max_price=1000000000&bedrooms=1&q=jardin&page=1&per_page=5",
     "/api/search", 200),
    ("/api/search?page=20&per_page=50", "/api/search", 200),  # past the end, the deepest page paging reaches
    ("/api/search?page=500&per_page=50", "/api/search", 422),  # past the first 1,000 listings
    ("/api/properties?page=3&per_page=7", "/api/properties", 200),
    ("/api/properties?page=50", "/api/properties", 200),
    ("/api/properties?per_page=101", "/api/properties", 422),
    ("/api/properties?page=51", "/api/properties", 422),
    ("/api/search?min_price=", "/api/search", 200),
    ("/api/search?min_price=500&max_price=100", "/api/search", 422),
    ("/api/search?colour=red&bedrooms=-1", "/api/search", 422),
    ("/api/search?q=%2A%2C%28", "/api/search", 422),
    ("/api/search?per_page=51", "/api/search", 422),
    ("/api/visits/slots?property_id=789", "/api/visits/slots", 200),
    ("/api/visits/slots", "/api/visits/slots", 422),
    ("/api/visits/slots?property_id=x", "/api/visits/slots", 422),
    ("/api/visits/slots?property_id=999999", "/api/visits/slots", 404),
    ("/api/search?" + "&".join(f"p{i}=1" for i in range(101)), "/api/search", 400),
])
def test_public_reads(stack, url, path, status):
    response = conform(stack.api.get(url), "get", path)
    assert response.status_code == status, response.text


def test_a_cached_read_says_miss_then_hit(stack):
    stack.redis("FLUSHDB")
    assert conform(stack.api.get("/api/properties/789"), "get", "/api/properties/{id}").headers["x-cache"] == "MISS"
    assert conform(stack.api.get("/api/properties/789"), "get", "/api/properties/{id}").headers["x-cache"] == "HIT"


def test_the_served_document_is_openapi_json(stack):
    assert stack.api.get("/api/openapi").json() == SPEC


@pytest.mark.parametrize("method, url, path", [
    ("DELETE", "/api/properties/123", "/api/properties/{id}"),
    ("POST", "/api/properties", "/api/properties"),
    ("PUT", "/api/profile", "/api/profile"),
    ("GET", "/api/paydunya/ipn", "/api/paydunya/ipn"),
    ("PATCH", "/api/payments", "/api/payments"),
    ("POST", "/api/openapi", "/api/openapi"),
])
def test_a_method_a_path_does_not_answer_is_405_with_allow(stack, method, url, path):
    response = conform(stack.api.request(method, url), method, path)
    assert response.status_code == 405
    documented = {m.upper() for m in SPEC["paths"][path] if m != "parameters"}
    assert set(response.headers["allow"].split(", ")) == documented | {"OPTIONS"} | (
        {"HEAD"} if "GET" in documented else set())
    assert response.json()["error"]["details"]["allowed"] == response.headers["allow"].split(", ")


# -- signed in: reads --------------------------------------------------------------------------------


@pytest.mark.parametrize("url, path, who, status, error", [
    ("/api/dashboard", "/api/dashboard", AWA, 200, None),
    ("/api/dashboard", "/api/dashboard", MOUSSA, 403, "forbidden"),
    ("/api/dashboard", "/api/dashboard", None, 401, "authentication_required"),
    ("/api/profile", "/api/profile", MOUSSA, 200, None),
    ("/api/profile", "/api/profile", None, 401, "authentication_required"),
    ("/api/notifications", "/api/notifications", MOUSSA, 200, None),
    ("/api/notifications", "/api/notifications", FATOU, 200, None),
    ("/api/notifications", "/api/notifications", None, 401, "authentication_required"),
    ("/api/payments?lease_id=123", "/api/payments", MOUSSA, 200, None),
    ("/api/payments?lease_id=123", "/api/payments", AWA, 200, None),  # the owner
    ("/api/payments?lease_id=123", "/api/payments", FATOU, 403, "not_lease_party"),
    ("/api/payments?lease_id=123", "/api/payments", IBRAHIMA, 403, "not_lease_party"),
    ("/api/payments?lease_id=999999", "/api/payments", MOUSSA, 403, "not_lease_party"),
    ("/api/payments?lease_id=123", "/api/payments", None, 401, "authentication_required"),
    ("/api/payments", "/api/payments", MOUSSA, 422, "validation_error"),
    ("/api/payments?lease_id=-1", "/api/payments", MOUSSA, 422, "validation_error"),
    ("/api/payments?lease_id=123&x=1", "/api/payments", MOUSSA, 422, "validation_error"),
])
def test_signed_in_reads(stack, url, path, who, status, error):
    response = conform(stack.api.get(url, headers=stack.auth(who) if who else None), "get", path)
    assert response.status_code == status, response.text
    if error:
        assert code(response) == error


@pytest.mark.parametrize("authorization", [FORGED, "Bearer not-a-jwt", "Basic bW91c3NhOng=", "Bearer a b"])
@pytest.mark.parametrize("path", ["/api/dashboard", "/api/profile", "/api/notifications"])
def test_a_bad_token_is_401_invalid_token(stack, path, authorization):
    response = conform(stack.api.get(path, headers={"Authorization": authorization}), "get", path)
    assert response.status_code == 401 and code(response) == "invalid_token"


@pytest.mark.parametrize("headers, params, status, error", [
    ({"Authorization": f"Bearer {METRICS_TOKEN}"}, {}, 200, None),
    ({"Authorization": f"Bearer {METRICS_TOKEN}"}, {"window": "last_24h"}, 200, None),
    ({"Authorization": f"Bearer {METRICS_TOKEN}"}, {"window": "forever"}, 422, "invalid_filter"),
    ({"Authorization": f"Bearer {METRICS_TOKEN}"}, {"colour": "red"}, 422, "invalid_filter"),
    ({}, {}, 401, "authentication_required"),
    ({"Authorization": "Bearer wrong"}, {}, 401, "invalid_token"),
])
def test_metrics(stack, headers, params, status, error):
    response = conform(stack.api.get("/api/metrics", headers=headers, params=params), "get", "/api/metrics")
    assert response.status_code == status, response.text
    if error:
        assert code(response) == error


def test_a_user_token_is_not_the_metrics_token(stack):
    response = conform(stack.api.get("/api/metrics", headers=stack.auth(AWA)), "get", "/api/metrics")
    assert response.status_code == 401 and code(response) == "invalid_token"


# -- signed in: writes -------------------------------------------------------------------------------


def test_profile_updates(stack):
    path = "/api/profile"
    before = stack.api.get(path, headers=stack.auth(FATOU)).json()["profile"]
    changed = conform(stack.api.patch(path, headers=stack.auth(FATOU), json={"full_name": "  Fatou Sarr Ndiaye "}),
                      "patch", path)
    assert changed.status_code == 200 and changed.json()["profile"]["full_name"] == "Fatou Sarr Ndiaye"
    assert conform(stack.api.get(path, headers=stack.auth(FATOU)), "get", path).json()["profile"]["full_name"] == \
        "Fatou Sarr Ndiaye"
    for body, status, error in [
        ({"role": "owner"}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"phone": "appelez-moi"}, 422, "validation_error"),
        ([], 400, "malformed_json"),
    ]:
        response = conform(stack.api.patch(path, headers=stack.auth(FATOU), json=body), "patch", path)
        assert (response.status_code, code(response)) == (status, error), body
    for content, status, error in [(b"{nope", 400, "malformed_json"), (b"", 400, "malformed_json"),
                                   (b'{"full_name": "' + b"x" * 70_000 + b'"}', 413, "payload_too_large")]:
        response = conform(stack.api.patch(path, headers={**stack.auth(FATOU), "Content-Type": "application/json"},
                                           content=content), "patch", path)
        assert (response.status_code, code(response)) == (status, error)
    response = conform(stack.api.patch(path, json={"full_name": "Personne"}), "patch", path)
    assert response.status_code == 401
    restored = stack.api.patch(path, headers=stack.auth(FATOU), json={"full_name": before["full_name"]})
    assert restored.status_code == 200


def test_property_updates(stack):
    path = "/api/properties/{id}"
    response = conform(stack.api.patch("/api/properties/123", headers=stack.auth(AWA),
                                       json={"price": 51_000, "city": "thies", "district": None}), "patch", path)
    assert response.status_code == 200
    assert response.json()["property"]["city"] == "Thiès" and response.json()["property"]["district"] is None
    draft = conform(stack.api.patch("/api/properties/789", headers=stack.auth(AWA), json={"status": "draft"}),
                    "patch", path)
    assert draft.json()["property"]["status"] == "draft"  # a PATCH answers the property whatever its status
    assert conform(stack.api.get("/api/properties/789"), "get", path).status_code == 404
    published = stack.api.patch("/api/properties/789", headers=stack.auth(AWA), json={"status": "published"})
    assert published.status_code == 200
    for url, who, body, status, error in [
        ("/api/properties/123", IBRAHIMA, {"price": 1}, 403, "forbidden"),
        ("/api/properties/123", None, {"price": 1}, 401, "authentication_required"),
        ("/api/properties/123", AWA, {"price": 0}, 422, "validation_error"),
        ("/api/properties/123", AWA, {"owner_id": "22222222-2222-4222-8222-222222222222"}, 422, "validation_error"),
        ("/api/properties/123", AWA, {"city": "Dakar*"}, 422, "validation_error"),
        ("/api/properties/abc", AWA, {"price": 1}, 404, "not_found"),
        ("/api/properties/999999", AWA, {"price": 1}, 404, "not_found"),
    ]:
        response = conform(stack.api.patch(url, headers=stack.auth(who) if who else None, json=body), "patch", path)
        assert (response.status_code, code(response)) == (status, error), (url, who, body)


def test_visit_bookings(stack, database):
    path = "/api/visits"
    slots = conform(stack.api.get("/api/visits/slots?property_id=789"), "get", "/api/visits/slots").json()["slots"]
    slot = slots[len(slots) // 2]["starts_at"]
    headers = {**stack.auth(FATOU), "Idempotency-Key": "contract-visit-1"}
    booked = conform(stack.api.post(path, headers=headers, json={"property_id": 789, "starts_at": slot}), "post", path)
    assert booked.status_code == 201, booked.text
    replay = conform(stack.api.post(path, headers=headers, json={"property_id": 789, "starts_at": slot}), "post", path)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == booked.json()
    for who, extra, body, status, error in [
        (MOUSSA, {}, {"property_id": 789, "starts_at": slot}, 409, "slot_taken"),
        (FATOU, {"Idempotency-Key": "contract-visit-1"}, {"property_id": 789, "starts_at": slots[0]["starts_at"]},
         422, "idempotency_key_reused"),
        (MOUSSA, {}, {"property_id": 999999, "starts_at": slot}, 404, "not_found"),
        (MOUSSA, {}, {"property_id": 789, "starts_at": 1_800_000_000}, 422, "validation_error"),
        (MOUSSA, {}, {"property_id": 789, "starts_at": "2026-11-27T10:00:00"}, 422, "validation_error"),  # no zone
        (MOUSSA, {}, {"property_id": "789", "starts_at": slot}, 422, "validation_error"),
        (MOUSSA, {"Idempotency-Key": "k" * 201}, {"property_id": 789, "starts_at": slot}, 422, "validation_error"),
        (None, {}, {"property_id": 789, "starts_at": slot}, 401, "authentication_required"),
    ]:
        response = conform(stack.api.post(path, headers={**(stack.auth(who) if who else {}), **extra}, json=body),
                           "post", path)
        assert (response.status_code, code(response)) == (status, error), (who, body)
    assert database.count("visits", f"property_id = 789 and starts_at = '{slot}' and status = 'booked'") == 1


def test_payments(stack, database):
    path = "/api/payments"
    when = this_period(10)  # the write path suite pays the first months ahead
    started = conform(stack.api.post(path, headers=stack.auth(MOUSSA), json={"lease_id": 123, "period": when}),
                      "post", path)
    assert started.status_code == 201, started.text
    again = conform(stack.api.post(path, headers=stack.auth(MOUSSA), json={"lease_id": 123, "period": when}),
                    "post", path)
    assert again.status_code == 200 and again.json() == started.json()  # the same pending payment, one invoice
    for who, body, status, error in [
        (AWA, {"lease_id": 123}, 403, "not_lease_party"),  # the owner does not pay
        (FATOU, {"lease_id": 123}, 404, "not_found"),  # RLS hides the lease from a stranger
        (MOUSSA, {"lease_id": 124}, 422, "lease_not_active"),
        (MOUSSA, {"lease_id": 123, "period": this_period(-2)}, 409, "already_paid"),  # the seed paid it
        (MOUSSA, {"lease_id": 123, "period": this_period(13)}, 422, "validation_error"),
        (MOUSSA, {"lease_id": 123, "period": "2026-13"}, 422, "validation_error"),
        (MOUSSA, {"lease_id": "123"}, 422, "validation_error"),
        (MOUSSA, {"lease_id": 123, "amount": 1}, 422, "validation_error"),
        (None, {"lease_id": 123}, 401, "authentication_required"),
    ]:
        response = conform(stack.api.post(path, headers=stack.auth(who) if who else None, json=body), "post", path)
        assert (response.status_code, code(response)) == (status, error), (who, body)
    listed = conform(stack.api.get(path, params={"lease_id": 123}, headers=stack.auth(AWA)), "get", path)
    assert started.json()["payment"]["id"] in [p["id"] for p in listed.json()["payments"]]
    assert database.count("rental_payments", f"lease_id = 123 and period = '{when}' and status = 'pending'") == 1


def test_the_paydunya_ipn(stack, database):
    path = "/api/paydunya/ipn"
    when = this_period(11)
    payment = stack.api.post("/api/payments", headers=stack.auth(MOUSSA),
                             json={"lease_id": 123, "period": when}).json()["payment"]
    token = payment["checkout_url"].rsplit("/", 1)[-1]
    completed = httpx.post(f"{stack.paydunya_url}/checkout/{token}/complete", json={"send_ipn": False}, timeout=30)
    assert completed.status_code == 200, completed.text
    form = {"data[hash]": IPN_HASH, "data[status]": "completed", "data[invoice][token]": token,
            "data[invoice][total_amount]": str(payment["amount"]), "data[custom_data][payment_id]": str(payment["id"])}

    def ipn(fields: dict | None = None, content: bytes | None = None, content_type="application/x-www-form-urlencoded"):
        body = content if content is not None else urlencode(fields).encode()
        return conform(stack.api.post(path, content=body, headers={"Content-Type": content_type}), "post", path)

    first = ipn(form)
    assert first.status_code == 200 and first.json() == {"received": True, "status": "completed"}
    notified = database.count("notifications")
    repeated = ipn(form)  # PayDunya sends it twice: nothing changes
    assert repeated.status_code == 200 and database.count("notifications") == notified
    for fields, content, content_type, status, error in [
        ({**form, "data[hash]": "0" * 128}, None, "application/x-www-form-urlencoded", 403, "invalid_signature"),
        ({k: v for k, v in form.items() if k != "data[hash]"}, None, "application/x-www-form-urlencoded", 403,
         "invalid_signature"),
        ({**form, "data[invoice][total_amount]": "1"}, None, "application/x-www-form-urlencoded", 409,
         "amount_mismatch"),
        (None, b"", "application/x-www-form-urlencoded", 400, "bad_request"),
        (None, json.dumps(form).encode(), "application/json", 400, "bad_request"),
        (None, b"data[hash]=a&data[hash]=b", "application/x-www-form-urlencoded", 400, "bad_request"),
        ({**form, "data[invoice][token]": ""}, None, "application/x-www-form-urlencoded", 400, "bad_request"),
    ]:
        response = ipn(fields, content, content_type)
        assert (response.status_code, code(response)) == (status, error), (fields, content)
    paid = conform(stack.api.get("/api/payments", params={"lease_id": 123}, headers=stack.auth(MOUSSA)), "get",
                   "/api/payments")
    assert [p["status"] for p in paid.json()["payments"] if p["id"] == payment["id"]] == ["completed"]
    again = conform(stack.api.post("/api/payments", headers=stack.auth(MOUSSA), json={"lease_id": 123, "period": when}),
                    "post", "/api/payments")
    assert (again.status_code, code(again)) == (409, "already_paid")
