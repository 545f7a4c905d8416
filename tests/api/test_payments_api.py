"""POST and GET /api/payments on a real loopback server; the network (PostgREST, PayDunya, Upstash, JWKS) faked by respx."""

from __future__ import annotations

import importlib
import json

import httpx
import pytest
import respx

from lib import keys
from lib.domain import payments, settle
from tests.fakes import FakeUpstash
from tests.support import serve
from tests.world import (
    AWA,
    FATOU,
    MOUSSA,
    UPSTASH,
    FakePayDunya,
    FakeSupabase,
    WallClock,
    World,
    bearer,
    env,
    race_while_held,
    reset_breaker,
    serve_jwks,
)

payments_api = importlib.import_module("api.payments")


@pytest.fixture
def api(monkeypatch):
    env(monkeypatch)
    clock = WallClock()
    monkeypatch.setattr(payments, "now", clock)
    monkeypatch.setattr(settle, "now", clock)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        serve_jwks(router)  # before FakeSupabase, which answers the rest of the host
        world = World(FakeUpstash(router, UPSTASH), FakeSupabase(router, clock), FakePayDunya(router), clock, router)
        with serve(payments_api.handler) as base, httpx.Client(base_url=base, timeout=20) as client:
            yield world, client
    reset_breaker()


def pay(client, who=MOUSSA, body=None, **headers):
    return client.post("/api/payments", json=body if body is not None else {"lease_id": 123, "period": "2026-12"},
                       headers={**bearer(who), **headers})


def error(response):
    return response.json()["error"]["code"]


def test_the_tenant_gets_201_then_200_with_the_same_payment(api):
    world, client = api
    first = pay(client)
    assert first.status_code == 201, first.text
    assert first.headers["content-type"] == "application/json; charset=utf-8"
    assert first.headers["cache-control"] == "no-store"
    body = first.json()["payment"]
    assert body["status"] == "pending" and body["checkout_url"].startswith("https://pay.test/checkout/")
    second = pay(client)
    assert (second.status_code, second.json()) == (200, first.json())
    assert len(world.paydunya.invoices) == 1


def test_without_a_token_it_is_401(api):
    _, client = api
    response = client.post("/api/payments", json={"lease_id": 123})
    assert (response.status_code, error(response)) == (401, "authentication_required")


@pytest.mark.parametrize("body, field", [
    ({"lease_id": "123"}, "lease_id"),  # a string is not an id
    ({"lease_id": 0}, "lease_id"),
    ({"lease_id": 1.5}, "lease_id"),
    ({}, "lease_id"),
    ({"lease_id": 123, "period": "2026-1"}, "period"),
    ({"lease_id": 123, "period": "2026-13"}, "period"),
    ({"lease_id": 123, "amount": 1}, "amount"),  # the amount is the lease's, never the client's
])
def test_an_invalid_body_is_422_naming_the_field(api, body, field):
    world, client = api
    response = pay(client, body=body)
    assert (response.status_code, error(response)) == (422, "validation_error")
    assert field in [d["field"] for d in response.json()["error"]["details"]]
    assert not world.paydunya.invoices


def test_a_body_that_is_not_json_is_400(api):
    _, client = api
    response = client.post("/api/payments", content=b"lease_id=123", headers=bearer(MOUSSA))
    assert (response.status_code, error(response)) == (400, "malformed_json")


@pytest.mark.parametrize("who, status, code", [
    (AWA, 403, "not_lease_party"), (FATOU, 404, "not_found"),
])
def test_only_the_tenant_may_pay(api, who, status, code):
    _, client = api
    response = pay(client, who)
    assert (response.status_code, error(response)) == (status, code)


def test_an_ended_lease_is_422_lease_not_active(api):
    _, client = api
    response = pay(client, body={"lease_id": 124})
    assert (response.status_code, error(response)) == (422, "lease_not_active")


def test_a_paid_month_is_409_already_paid(api):
    _, client = api
    response = pay(client, body={"lease_id": 123, "period": "2026-10"})
    assert (response.status_code, error(response)) == (409, "already_paid")


def test_a_busy_lock_is_409_paiement_en_cours(api):
    world, client = api
    world.redis.redis.set(keys.payment_lock(123), "other", px=30_000)
    response = pay(client)
    assert (response.status_code, error(response)) == (409, "payment_in_progress")
    assert response.json()["error"]["message"].startswith("Paiement en cours")


def test_paydunya_down_is_502_with_a_log_safe_reason_and_nothing_pending(api, capfd):
    world, client = api
    world.paydunya.failure = httpx.Response(200, json={"response_code": "1001", "response_text": "Invalid Masterkey Specified"})
    response = pay(client)
    assert (response.status_code, error(response)) == (502, "payment_provider_error")
    assert world.db.rows(period="2026-12", status="pending") == []
    log = capfd.readouterr().err
    assert '"reason":"response_code 1001: Invalid Masterkey Specified"' in log
    assert "pd-master-key" not in log and "pd-private" not in log


def test_the_idempotency_key_replays_the_first_answer(api):
    world, client = api
    first = pay(client, **{"Idempotency-Key": "click-1"})
    world.db.payments[first.json()["payment"]["id"]]["status"] = "failed"  # whatever happens next...
    again = pay(client, **{"Idempotency-Key": "click-1"})
    assert (again.status_code, again.json()) == (201, first.json())  # ...the retry gets the first answer
    assert again.headers["idempotent-replayed"] == "true"


def test_the_same_key_with_another_body_is_422(api):
    _, client = api
    pay(client, **{"Idempotency-Key": "click-1"})
    response = pay(client, body={"lease_id": 123, "period": "2027-01"}, **{"Idempotency-Key": "click-1"})
    assert (response.status_code, error(response)) == (422, "idempotency_key_reused")


def test_the_body_is_compared_as_json_not_as_bytes(api):
    _, client = api
    pay(client, **{"Idempotency-Key": "k"})
    same = client.post("/api/payments", content=b'{ "period" : "2026-12", "lease_id": 123 }',
                       headers={**bearer(MOUSSA), "Idempotency-Key": "k", "Content-Type": "application/json"})
    assert same.status_code == 201 and same.headers["idempotent-replayed"] == "true"


def test_a_key_longer_than_200_characters_is_422(api):
    world, client = api
    response = pay(client, **{"Idempotency-Key": "k" * 201})
    assert (response.status_code, error(response)) == (422, "validation_error")
    assert response.json()["error"]["details"][0]["field"] == "Idempotency-Key"
    assert world.db.count("POST", "/rpc/reserve_payment") == 0


def test_fifty_simultaneous_clicks_make_one_invoice_and_the_lock_turns_49_away_before_the_database(
        on_standins, standin, admin):
    """On the real database: the lock holder waits on the lease's row (held here); the 49 others are
    409 payment_in_progress from the lock meanwhile, and reserve_payment runs once."""
    paydunya_fake = on_standins
    period = admin.execute("select to_char(now() at time zone 'Africa/Dakar', 'YYYY-MM')").fetchone()[0]
    token = standin.mint_token(MOUSSA, "moussa.diop@example.sn")
    standin.reset_stats()
    with serve(payments_api.handler) as base, httpx.Client(base_url=base, timeout=90) as client:
        def click(_: int) -> httpx.Response:
            return client.post("/api/payments", json={"lease_id": 123, "period": period},
                               headers={"Authorization": f"Bearer {token}"})

        answers, while_held = race_while_held(admin, "select 1 from public.leases where id = 123 for update", click)
    statuses = [r.status_code for r in answers]
    assert sorted(statuses) == [201] + [409] * 49, statuses
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 409} == {"payment_in_progress"}
    assert while_held == 49, "the 49 are turned away by the lock while its holder waits on the database"
    assert standin.stats()["rpc"].get("reserve_payment") == 1, "only the lock's holder reached the database"
    assert len(paydunya_fake.invoices) == 1
    rows = admin.execute("select status, checkout_url is not null from public.rental_payments"
                         " where lease_id = 123 and period = %s", (period,)).fetchall()
    assert rows == [("pending", True)]


def test_fifty_quick_clicks_past_the_rate_limit_are_429_and_nothing_is_doubled(api):
    world, client = api
    answers = [pay(client) for _ in range(50)]
    statuses = [r.status_code for r in answers]
    assert (statuses[0], statuses[1:30]) == (201, [200] * 29)  # the limit: 30 writes a minute
    assert statuses[30:] == [429] * 20
    refused = answers[-1]
    assert error(refused) == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["error"]["details"] == {"retry_after": int(refused.headers["Retry-After"])}
    assert len(world.paydunya.invoices) == 1
    assert len(world.db.rows(period="2026-12", status="pending")) == 1
    other = client.post("/api/payments", json={"lease_id": 123}, headers=bearer(FATOU))
    assert other.status_code == 404  # another user is not limited by Moussa's clicks


def test_a_forged_token_is_401_before_the_rate_limit_counts_anything(api):
    world, client = api
    for _ in range(40):
        assert client.post("/api/payments", json={"lease_id": 123},
                           headers={"Authorization": "Bearer forged"}).status_code == 401
    assert world.redis.redis.keys("dousell:ratelimit:*") == []


def test_get_lists_the_payments_for_tenant_and_owner_cached(api):
    _, client = api
    pay(client)
    first = client.get("/api/payments", params={"lease_id": 123}, headers=bearer(MOUSSA))
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "MISS"
    assert [p["period"] for p in first.json()["payments"]] == ["2026-12", "2026-10", "2026-09"]
    owner = client.get("/api/payments", params={"lease_id": 123}, headers=bearer(AWA))
    assert owner.headers["x-cache"] == "HIT" and owner.json() == first.json()
    assert owner.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("query, status, code", [
    ("lease_id=123", 403, "not_lease_party"),
    ("lease_id=999", 403, "not_lease_party"),
    ("", 422, "validation_error"),
    ("lease_id=abc", 422, "validation_error"),
    ("lease_id=123&lease_id=124", 422, "validation_error"),
    ("lease_id=123&page=2", 422, "validation_error"),
])
def test_get_refuses_strangers_and_bad_queries(api, query, status, code):
    _, client = api
    response = client.get(f"/api/payments?{query}", headers=bearer(FATOU))
    assert (response.status_code, error(response)) == (status, code)


def test_get_without_a_token_is_401(api):
    _, client = api
    assert client.get("/api/payments?lease_id=123").status_code == 401


def test_other_methods_are_405(api):
    _, client = api
    response = client.put("/api/payments", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST, OPTIONS"


def test_a_replayed_answer_is_valid_json_of_the_contract(api):
    world, client = api
    pay(client, **{"Idempotency-Key": "k"})
    name = keys.idempotency(MOUSSA, "k")
    record = json.loads(world.redis.redis.get(name))
    assert record["state"] == "done" and record["status"] == 201
    assert set(record["body"]["payment"]) == set(payments.PAYMENT_FIELDS)


def test_in_production_without_paydunya_mode_a_payment_is_refused_naming_it_and_nothing_is_made(api, monkeypatch):
    # Sandbox keys on a production deploy would take the sandbox's "completed" as rent paid.
    world, client = api
    monkeypatch.setenv("VERCEL", "1")
    monkeypatch.setenv("VERCEL_ENV", "production")
    monkeypatch.delenv("PAYDUNYA_MODE", raising=False)
    response = pay(client)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "configuration_error"
    assert response.json()["error"]["details"] == {"variable": "PAYDUNYA_MODE"}
    assert world.paydunya.invoices == {} and world.db.rows(period="2026-12") == []


def test_an_anonymous_sign_in_cannot_pay(api):
    world, client = api
    response = client.post("/api/payments", json={"lease_id": 123, "period": "2026-12"},
                           headers=bearer(MOUSSA, anonymous=True))
    assert (response.status_code, error(response)) == (403, "anonymous_not_allowed")
    assert world.paydunya.invoices == {} and world.db.rows(period="2026-12") == []
