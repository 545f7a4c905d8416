"""Reads right after an owner's change, on the local stack: the keys the PATCH refilled are hits, with the new
value, and stay so once the database webhook for that same change has been drained."""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest

from tests.support import wait_for

AWA = "awa.ndiaye@example.sn"
VIEWS = ("/api/properties/123", "/api/properties", "/api/properties?city=Dakar")
DRAINED = 75.0  # seconds: the webhook's drain (~0.2 s), or the cron's minute if it met a loaded machine


@pytest.fixture(scope="module", autouse=True)
def newest_123(stack):
    """Listing 123 made the newest for this module, so it is on the lists' first pages (the pages the
    writer refills since lists are paged); its date is put back after."""
    conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell", autocommit=True)
    (created,) = conn.execute("select created_at from properties where id = 123").fetchone()
    conn.execute("update properties set created_at = now() where id = 123")
    yield
    conn.execute("update properties set created_at = %s where id = 123", (created,))
    conn.close()


@pytest.fixture(scope="module")
def outbox_rows(stack):
    """How many changes wait in the database's outbox (the webhook or the cron drains them)."""
    conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell", autocommit=True)

    def count() -> int:
        return conn.execute("select count(*) from private.invalidation_outbox").fetchone()[0]

    yield count
    conn.close()


@pytest.fixture(scope="module", autouse=True)
def webhook_built(stack):
    """vercel dev builds a function at its first request: the webhook's 5 s timeout must not meet that build."""
    def answers_quickly() -> bool:
        started = time.monotonic()
        try:
            status = stack.api.post("/api/hooks/database", timeout=30).status_code
        except httpx.HTTPError:
            return False
        return status == 401 and time.monotonic() - started < 2.0

    wait_for(answers_quickly, timeout=240, interval=0.5, what="/api/hooks/database built")


def get(stack, path):
    return stack.api.get(path)


def price_of(response, property_id=123):
    body = response.json()
    rows = body.get("properties") or [body.get("property")]
    return next(row["price"] for row in rows if row and row["id"] == property_id)


def patch(stack, changes):
    response = stack.api.patch("/api/properties/123", headers=stack.auth(AWA), json=changes)
    assert response.status_code == 200, response.text
    return response.json()["property"]


def hits_with_price(stack, price):
    for path in VIEWS:
        response = get(stack, path)
        assert (response.headers["x-cache"], price_of(response)) == ("HIT", price), path
        assert "db;dur=" not in response.headers["server-timing"], f"{path} asked the database"


def test_after_a_price_change_its_detail_and_lists_are_hits_with_the_new_price(stack):
    stack.redis("FLUSHDB")
    for path in VIEWS:
        get(stack, path)
    original = price_of(get(stack, "/api/properties/123"))
    try:
        patch(stack, {"price": original + 1_000})
        hits_with_price(stack, original + 1_000)
    finally:
        patch(stack, {"price": original})


def test_the_database_webhook_of_the_same_change_leaves_the_refilled_keys_alone(stack, outbox_rows):
    """The PATCH carries a change id: the webhook's drain finds it applied and bumps nothing the API bumped."""
    stack.redis("FLUSHDB")
    for path in VIEWS:
        get(stack, path)
    original = price_of(get(stack, "/api/properties/123"))
    wait_for(lambda: outbox_rows() == 0, timeout=DRAINED, what="an empty outbox before the change")
    # Held until the PATCH has answered: a webhook drained before the API's own bump makes the bump
    # refill nothing (its watched tag moved: a miss, never wrong), which is not what this test is about.
    webhooks(stack, "hold")
    try:
        patch(stack, {"price": original + 2_000})
        webhooks(stack, "deliver")
        wait_for(lambda: outbox_rows() == 0, timeout=DRAINED, what="the change's webhook drained")
        hits_with_price(stack, original + 2_000)
    finally:
        webhooks(stack, "deliver")
        patch(stack, {"price": original})


def webhooks(stack, mode: str) -> None:
    """The Supabase stand-in's pg_net worker: "hold" keeps the webhooks, "deliver" sends them."""
    httpx.post(f"{stack.supabase_url}/__devstack/webhooks", json={"mode": mode}, timeout=5).raise_for_status()


def test_a_property_taken_off_the_market_is_a_404_at_once_and_leaves_the_lists(stack):
    stack.redis("FLUSHDB")
    for path in VIEWS:
        get(stack, path)
    try:
        patch(stack, {"status": "draft"})
        detail = get(stack, "/api/properties/123")
        assert (detail.status_code, detail.headers["x-cache"]) == (404, "HIT"), "refilled as not published"
        for path in VIEWS[1:]:
            response = get(stack, path)
            assert response.headers["x-cache"] == "MISS", f"{path}: the row leaves it, the writer cannot patch that"
            assert 123 not in {row["id"] for row in response.json()["properties"]}
    finally:
        patch(stack, {"status": "published"})
    assert get(stack, "/api/properties/123").status_code == 200
