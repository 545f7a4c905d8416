"""POST /api/hooks/database on a real loopback server: the signature first (over the raw body, within five minutes),
the body as the database sends it, every bad input refused before the outbox is touched, and the outbox drained. PostgREST is faked at the network boundary
(respx); Redis is a real Valkey behind the Upstash stand-in."""

from __future__ import annotations

import importlib
import json
import time

import httpx
import pytest
import redis as redis_py
import respx

from devstack.redis_server import free_port
from lib import keys, signature
from lib.cache import aside, invalidation
from lib.edge import upstash
from tests.support import UPSTASH_TOKEN, serve

hook_api = importlib.import_module("api.hooks.database")
SUPABASE = "https://project.supabase.test"
SECRET = "s3cret-webhook-secret"
AWA = "11111111-1111-4111-8111-111111111111"
CHANGE = {"type": "UPDATE", "table": "properties", "schema": "public",
          "record": {"id": 123, "owner_id": AWA, "city": "Dakar", "status": "published", "price": 55000},
          "old_record": {"id": 123, "owner_id": AWA, "city": "Dakar", "status": "published", "price": 50000}}


class Outbox:
    """PostgREST's drain RPCs answered from a list of rows; records every call."""

    def __init__(self, router: respx.Router):
        self.rows: list[dict] = []
        self.calls: list[tuple[str, dict]] = []
        self.down = False
        router.post(url__regex=rf"{SUPABASE}/rest/v1/rpc/(?P<name>\w+)").mock(side_effect=self._rpc)
        # The cron's alerts job (lib/ops/alerts) counts the payments needing review: none here.
        router.get(f"{SUPABASE}/rest/v1/rental_payments").mock(
            return_value=httpx.Response(200, json=[], headers={"Content-Range": "*/0"}))

    def _rpc(self, request: httpx.Request, name: str) -> httpx.Response:
        args = json.loads(request.content)
        self.calls.append((name, args))
        if self.down:
            return httpx.Response(503, json={"code": "PGRST001", "message": "down", "details": None, "hint": None})
        if name == "claim_invalidations":
            taken, self.rows = self.rows[:args["p_limit"]], self.rows[args["p_limit"]:]
            return httpx.Response(200, json=taken)
        if name in ("complete_invalidations", "release_invalidations"):
            return httpx.Response(200, json=len(args["p_ids"]))
        if name == "invalidation_backlog":
            return httpx.Response(200, json={"pending": len(self.rows), "oldest_seconds": None})
        if name == "payments_to_reconcile":  # the cron's other job (lib/domain/settle): no payment is due here
            return httpx.Response(200, json={"batch": [], "due": 0})
        return httpx.Response(404, json={"code": "PGRST202", "message": name, "details": None, "hint": None})


@pytest.fixture
def outbox(monkeypatch, valkey, upstash_server):
    server, standin = valkey, upstash_server
    for name, value in {"SUPABASE_URL": SUPABASE, "SUPABASE_ANON_KEY": "anon", "SUPABASE_SERVICE_ROLE_KEY": "service",
                        "UPSTASH_REDIS_REST_URL": standin.url, "UPSTASH_REDIS_REST_TOKEN": UPSTASH_TOKEN,
                        "DATABASE_WEBHOOK_SECRET": SECRET}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    upstash.breaker.reset()
    direct = redis_py.Redis(host=server.host, port=server.port, decode_responses=True)
    direct.flushdb()
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()  # the handler's server and the Upstash stand-in
        fake = Outbox(router)
        fake.redis = direct
        yield fake
    direct.close()


@pytest.fixture(scope="module")
def base():
    with serve(hook_api.handler) as url:
        yield url


@pytest.fixture
def client(outbox, base):
    with httpx.Client(base_url=base, timeout=10) as http:
        yield http


def post(client, body=CHANGE, secret=SECRET, at=None, **headers):
    """POST `body`, signed with `secret` at `at` (now by default) unless `secret` is None."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    if secret is not None:
        headers.setdefault("X-Dousell-Signature", signature.sign(secret, content, int(time.time() if at is None else at)))
    return client.post("/api/hooks/database", content=content, headers={"Content-Type": "application/json", **headers})


def error(response):
    return response.json()["error"]


def row(change=CHANGE, change_id=None, owners=()):
    return {"id": 1, "table_name": change["table"], "op": change["type"], "record": change["record"],
            "old_record": change["old_record"], "owner_ids": list(owners), "change_id": change_id}


# -- the signature -------------------------------------------------------------------------------

BODY = json.dumps(CHANGE).encode()
NOW = int(time.time())


def _digest(secret: str, body: bytes, t: int) -> str:
    return signature.sign(secret, body, t).split(",v1=")[1]


@pytest.mark.parametrize("headers, code", [
    ({}, "authentication_required"),  # no signature
    ({"Authorization": f"Bearer {SECRET}"}, "authentication_required"),  # the secret itself is no longer accepted
    ({"X-Dousell-Signature": signature.sign("wrong-secret", BODY, NOW)}, "invalid_token"),
    ({"X-Dousell-Signature": signature.sign(SECRET, BODY + b" ", NOW)}, "invalid_token"),  # another body
    ({"X-Dousell-Signature": f"t={NOW + 1},v1={_digest(SECRET, BODY, NOW)}"}, "invalid_token"),  # another time
    ({"X-Dousell-Signature": signature.sign(SECRET, BODY, NOW).upper()}, "invalid_token"),
    ({"X-Dousell-Signature": f"v1={_digest(SECRET, BODY, NOW)},t={NOW}"}, "invalid_token"),  # fields swapped
    ({"X-Dousell-Signature": f"t={NOW}"}, "invalid_token"),  # no digest
    ({"X-Dousell-Signature": f"t=-{NOW},v1={_digest(SECRET, BODY, -NOW)}"}, "invalid_token"),
    ({"X-Dousell-Signature": SECRET}, "invalid_token"),
])
def test_without_the_secret_it_is_401_and_the_outbox_is_not_touched(client, outbox, headers, code):
    outbox.rows = [row()]
    response = post(client, body=BODY, secret=None, **headers)
    assert (response.status_code, error(response)["code"]) == (401, code)
    assert response.headers["www-authenticate"] == 'Signature realm="database-webhook", header="X-Dousell-Signature"'
    assert error(response)["message"]
    assert outbox.calls == []


@pytest.mark.parametrize("skew", [-301, 301, -10**6, 10**6])
def test_a_signature_more_than_five_minutes_away_is_refused(client, outbox, skew):
    outbox.rows = [row()]
    response = post(client, body=BODY, at=time.time() + skew)
    assert (response.status_code, error(response)["code"]) == (401, "invalid_token")
    assert response.json()["error"]["message"] == "Signature expirée."
    assert outbox.calls == []


@pytest.mark.parametrize("skew", [-290, 290])
def test_a_signature_within_five_minutes_is_accepted(client, outbox, skew):
    assert post(client, body=BODY, at=time.time() + skew).status_code == 200


def test_a_second_digest_lets_a_rotated_secret_through(client, outbox):
    t = int(time.time())
    header = f"t={t},v1={_digest('old-secret', BODY, t)},v1={_digest(SECRET, BODY, t)}"
    assert post(client, body=BODY, secret=None, **{"X-Dousell-Signature": header}).status_code == 200


def test_a_bad_body_with_a_wrong_signature_is_still_401_first(client, outbox):
    assert post(client, body=b"{not json", secret="nope").status_code == 401


def test_with_no_secret_configured_the_hook_is_closed(client, outbox, monkeypatch):
    monkeypatch.delenv("DATABASE_WEBHOOK_SECRET")
    response = post(client, secret="anything")
    assert (response.status_code, error(response)["code"]) == (500, "configuration_error")
    assert error(response)["details"] == {"variable": "DATABASE_WEBHOOK_SECRET"}
    assert SECRET not in response.text and outbox.calls == []


# -- the body ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "malformed_json"),
    (b"", 400, "malformed_json"),
    (b"[]", 400, "malformed_json"),
    ({**CHANGE, "type": "TRUNCATE"}, 422, "validation_error"),  # no TRUNCATE trigger sends one
    ({**CHANGE, "table": "auth_users"}, 422, "validation_error"),  # a table the API does not show
    ({**CHANGE, "schema": "auth"}, 422, "validation_error"),
    ({**CHANGE, "record": None}, 422, "validation_error"),  # an UPDATE without its new row
    ({**CHANGE, "type": "DELETE", "old_record": None}, 422, "validation_error"),
    ({**CHANGE, "record": "123"}, 422, "validation_error"),
    ({"type": "INSERT", "table": "properties", "schema": "public"}, 422, "validation_error"),
    (b"{" + b'"x":"' + b"a" * 70_000 + b'"}', 413, "payload_too_large"),
])
def test_every_bad_body_is_refused_in_the_contracts_shape_and_changes_nothing(client, outbox, body, status, code):
    outbox.rows = [row()]
    response = post(client, body=body)
    assert (response.status_code, error(response)["code"]) == (status, code), response.text
    assert error(response)["message"]
    assert outbox.calls == []


def test_each_bad_field_is_named(client):
    response = post(client, body={"type": "UPSERT", "table": "nope", "schema": "public", "record": None})
    fields = {d["field"] for d in error(response)["details"]}
    assert fields == {"type", "table"}


def test_fields_supabase_may_add_are_ignored(client, outbox):
    response = post(client, body={**CHANGE, "commit_timestamp": "2026-11-28T10:00:00Z"})
    assert response.status_code == 200


def test_only_post_is_answered(client):
    response = client.get("/api/hooks/database")
    assert response.status_code == 405 and response.headers["allow"] == "POST, OPTIONS"


# -- what it does --------------------------------------------------------------------------------


def test_it_drains_the_outbox_and_answers_the_tags_it_bumped(client, outbox):
    outbox.rows = [row(owners=[AWA])]
    response = post(client)
    assert response.status_code == 200
    body = response.json()
    assert body["invalidated"] == invalidation.change_tags("properties", CHANGE["old_record"], CHANGE["record"], [AWA])
    assert (body["applied"], body["already_applied"], body["deferred"]) == (1, 0, 0)
    assert [name for name, _ in outbox.calls] == ["claim_invalidations", "complete_invalidations"]
    for tag in body["invalidated"]:
        assert outbox.redis.exists(keys.tag_key(tag)) == 1, tag
    assert response.headers["cache-control"] == "no-store"


def test_a_change_the_api_applied_itself_is_deleted_without_a_second_bump(client, outbox):
    change_id = "c" * 32
    tags = invalidation.change_tags("properties", CHANGE["old_record"], CHANGE["record"], [AWA])
    assert aside.invalidate(tags, changes=[change_id])
    versions = {tag: outbox.redis.get(keys.tag_key(tag)) for tag in tags}
    outbox.rows = [row(change_id=change_id, owners=[AWA])]
    body = post(client).json()
    assert (body["invalidated"], body["applied"], body["already_applied"]) == ([], 1, 1)
    assert {tag: outbox.redis.get(keys.tag_key(tag)) for tag in tags} == versions


def test_the_outbox_unreachable_the_bodys_row_is_invalidated(client, outbox):
    outbox.down = True
    body = post(client).json()
    assert body["outbox"] == "unreachable"
    assert body["invalidated"] == invalidation.change_tags("properties", CHANGE["old_record"], CHANGE["record"])


def test_redis_refusing_is_a_503_and_the_rows_are_released(client, outbox, monkeypatch):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{free_port()}")
    outbox.rows = [row()]
    response = post(client)
    assert (response.status_code, error(response)["code"]) == (503, "service_unavailable")
    assert [name for name, _ in outbox.calls] == ["claim_invalidations", "release_invalidations"]
