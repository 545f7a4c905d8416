"""POST /api/paydunya/ipn on a real loopback server: hash, re-confirmation, amount, idempotence, invalidation."""

from __future__ import annotations

import importlib
import json
from urllib.parse import urlencode

import httpx
import pytest
import respx

from lib import keys
from lib.domain import payments, settle
from tests.fakes import FakeUpstash
from tests.support import serve
from tests.world import (
    AWA,
    IPN_HASH,
    MOUSSA,
    UPSTASH,
    FakePayDunya,
    FakeSupabase,
    WallClock,
    World,
    env,
    reset_breaker,
    user,
)

ipn_api = importlib.import_module("api.paydunya.ipn")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def api(monkeypatch):
    env(monkeypatch)
    clock = WallClock()
    monkeypatch.setattr(payments, "now", clock)
    monkeypatch.setattr(settle, "now", clock)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        world = World(FakeUpstash(router, UPSTASH), FakeSupabase(router, clock), FakePayDunya(router), clock, router)
        with serve(ipn_api.handler) as base, httpx.Client(base_url=base, timeout=20) as client:
            yield world, client
    reset_breaker()


def paid(world, status="completed"):
    """A pending payment with its invoice, then the tenant pays (or not) on PayDunya's page."""
    payment = payments.start(user(MOUSSA), 123, "2026-12").payment
    token = world.db.payments[payment["id"]]["provider_token"]
    world.paydunya.invoices[token]["status"] = status
    return token, payment["id"]


def post(client, body, headers=FORM):
    return client.post("/api/paydunya/ipn", content=body, headers=headers)


def test_the_callback_completes_the_payment_without_any_authorization_header(api):
    world, client = api
    token, pid = paid(world)
    response = post(client, world.paydunya.ipn(token))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "status": "completed"}
    assert response.headers["cache-control"] == "no-store"
    assert world.db.payments[pid]["status"] == "completed"
    assert len(world.db.notifications) == 2


def test_the_callback_invalidates_payments_dashboard_and_both_notifications(api):
    world, client = api
    token, _ = paid(world)
    entries = (keys.payments(123), keys.dashboard(AWA), keys.notifications(MOUSSA), keys.notifications(AWA))
    before = {entry.tags[0]: world.tag_version(entry.tags[0]) for entry in entries}
    post(client, world.paydunya.ipn(token))
    for tag, version in before.items():
        assert world.tag_version(tag) not in (None, version), tag


def test_a_replayed_callback_is_200_and_changes_nothing(api):
    world, client = api
    token, _ = paid(world)
    body = world.paydunya.ipn(token)
    post(client, body)
    world.redis.redis.set(keys.payments(123).key, "kept")
    again = post(client, body)
    assert (again.status_code, again.json()) == (200, {"received": True, "status": "completed"})
    assert len(world.db.notifications) == 2
    assert world.redis.redis.get(keys.payments(123).key) == b"kept"  # nothing changed, nothing invalidated


def test_a_forged_callback_is_403_invalid_signature(api):
    world, client = api
    token, pid = paid(world)
    response = post(client, world.paydunya.ipn(token, hash="f" * 128))
    assert (response.status_code, response.json()["error"]["code"]) == (403, "invalid_signature")
    assert world.db.payments[pid]["status"] == "pending"
    assert world.paydunya.confirm_calls == 0


def test_a_wrong_amount_is_409_amount_mismatch_and_changes_nothing(api):
    world, client = api
    token, pid = paid(world)
    response = post(client, world.paydunya.ipn(token, amount=5))
    assert (response.status_code, response.json()["error"]["code"]) == (409, "amount_mismatch")
    assert world.db.payments[pid]["status"] == "pending" and world.db.notifications == []


def test_an_unknown_invoice_is_404(api):
    world, client = api
    world.paydunya.invoices["ghost"] = {"token": "ghost", "status": "completed", "total_amount": 50_000,
                                        "description": "x", "custom_data": {}}
    response = post(client, world.paydunya.ipn("ghost"))
    assert response.status_code == 404


def test_paydunya_unreachable_is_502_so_the_callback_is_tried_again(api):
    world, client = api
    token, pid = paid(world)
    world.paydunya.confirm_failure = httpx.ConnectError("down")
    response = post(client, world.paydunya.ipn(token))
    assert (response.status_code, response.json()["error"]["code"]) == (502, "payment_provider_error")
    assert world.db.payments[pid]["status"] == "pending"


@pytest.mark.parametrize("body, headers", [
    (b"", FORM),
    (b"%%%", FORM),
    (json.dumps({"data": {"hash": IPN_HASH}}).encode(), {"Content-Type": "application/json"}),
    (urlencode({"data[hash]": IPN_HASH}).encode(), FORM),  # no invoice token
])
def test_a_malformed_callback_is_400(api, body, headers):
    _, client = api
    response = post(client, body, headers)
    assert response.status_code == 400


def test_only_post_is_served(api):
    _, client = api
    assert client.get("/api/paydunya/ipn").status_code == 405


# -- the rate limit on refused callbacks ----------------------------------------------------------


def test_refused_callbacks_from_one_address_are_429_after_ten_and_a_valid_ipn_still_passes(api):
    world, client = api
    token, pid = paid(world)
    guesser = {**FORM, "X-Forwarded-For": "203.0.113.7"}
    statuses = [post(client, world.paydunya.ipn(token, hash="0" * 128), guesser).status_code for _ in range(12)]
    assert statuses == [403] * 10 + [429] * 2
    refused = post(client, world.paydunya.ipn(token, hash="1" * 128), guesser)
    assert refused.json()["error"]["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1
    assert post(client, world.paydunya.ipn(token, hash="0" * 128), {**FORM, "X-Forwarded-For": "198.51.100.1"}
                ).status_code == 403  # another address has its own allowance
    genuine = post(client, world.paydunya.ipn(token), guesser)  # PayDunya behind the same address
    assert genuine.status_code == 200 and world.db.payments[pid]["status"] == "completed"


def test_valid_callbacks_are_never_counted(api):
    world, client = api
    token, _ = paid(world)
    for _ in range(15):
        assert post(client, world.paydunya.ipn(token)).status_code == 200
    assert world.redis.redis.keys("dousell:ratelimit:*") == []
