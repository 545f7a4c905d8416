"""Every write invalidates, whoever made it, on the whole stack: a change made through Supabase's REST API as the
owner (the web app's way) or in SQL shows at once on every endpoint that can show it; with the webhook lost or
Redis stopped, within a minute (the cron); negative entries go when the row appears; the API's own write is not
bumped twice. The stack's cron caller runs every 60 s, as Vercel Cron does."""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest

from devstack.__main__ import ANON_KEY, DATABASE_WEBHOOK_SECRET
from lib import signature
from tests.support import wait_for

AWA, MOUSSA, FATOU = "awa.ndiaye@example.sn", "moussa.diop@example.sn", "fatou.sarr@example.sn"
AT_ONCE = 10.0  # seconds: "at once" through the webhook (p50 ~0.2 s on this stack; the bound absorbs a loaded machine)
CRON_WINDOW = 75.0  # the cron's minute, plus one drain and a loaded machine


@pytest.fixture(scope="module")
def sql(stack):
    conn = psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell", autocommit=True)
    yield conn
    conn.close()


@pytest.fixture(scope="module", autouse=True)
def warm(stack):
    """vercel dev builds a function at its first request (~20 s, more on a loaded machine): the webhook's 5 s
    timeout must not meet a build. Ready when each answers its 401 quickly."""
    def answers_quickly(method, path):
        started = time.monotonic()
        try:
            status = stack.api.request(method, path, timeout=30).status_code
        except httpx.HTTPError:
            return False
        return status == 401 and time.monotonic() - started < 2.0

    for method, path in (("POST", "/api/hooks/database"), ("GET", "/api/cron/reconcile")):
        wait_for(lambda m=method, p=path: answers_quickly(m, p), timeout=240, interval=0.5, what=f"{path} built")


@pytest.fixture
def webhooks(stack):
    """`webhooks("drop" | "hold" | "deliver")`: the Supabase stand-in's pg_net worker; back to deliver afterwards."""
    def mode(value: str) -> None:
        httpx.post(f"{stack.supabase_url}/__devstack/webhooks", json={"mode": value}, timeout=5).raise_for_status()

    yield mode
    mode("deliver")


def rest(stack, email: str) -> httpx.Client:
    """Supabase's REST API as that user, the way the web app's supabase-js calls it."""
    return httpx.Client(base_url=f"{stack.supabase_url}/rest/v1", timeout=10, headers={
        "apikey": ANON_KEY, "Authorization": f"Bearer {stack.token(email)}", "Prefer": "return=representation"})


def get(stack, path, email=None):
    return stack.api.get(path, headers=stack.auth(email) if email else None)


def ids(stack, path) -> set[int]:
    body = get(stack, path).json()
    return {row["id"] for row in body.get("properties") or body.get("results") or []}


def pending(sql) -> int:
    return sql.execute("select count(*) from private.invalidation_outbox").fetchone()[0]


def shown_within(seconds: float, check, what: str) -> float:
    """Poll `check` until true; returns how long it took (fails past `seconds`)."""
    t0 = time.monotonic()
    wait_for(check, timeout=seconds, interval=0.05, what=what)
    return time.monotonic() - t0


def listing(**extra):
    return {"id": 9001, "owner_id": "11111111-1111-4111-8111-111111111111", "title": "Studio au Point E (test)",
            "description": "Créé par l'application web.", "city": "dakar", "district": "Point E", "type": "studio",
            "price": 130000, "bedrooms": 0, "status": "published", **extra}


def next_property_id(sql) -> int:
    """The id the properties identity gives next (read without taking it)."""
    last, called = sql.execute("select last_value, is_called from public.properties_id_seq").fetchone()
    return last + 1 if called else last


def without_id(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "id"}


# -- the web app's way: Supabase's REST API as the owner ----------------------------------------------


def test_a_listing_created_edited_and_deleted_through_supabase_as_the_owner_shows_at_once_everywhere(stack, sql):
    owner = rest(stack, AWA)
    stack.redis("FLUSHDB")
    # The web app cannot choose an id (the hardening migration grants no insert on it): the listing
    # gets the identity's next value, probed first so its 404 is cached.
    new_id = next_property_id(sql)
    detail = f"/api/properties/{new_id}"
    assert get(stack, detail).status_code == 404 and get(stack, detail).headers["x-cache"] == "HIT"  # cached 404
    views = ["/api/properties", "/api/properties?city=Dakar", "/api/search?city=Dakar&type=studio"]
    for path in views:
        assert new_id not in ids(stack, path) and get(stack, path).headers["x-cache"] == "HIT"
    dashboard = get(stack, "/api/dashboard", AWA).json()["dashboard"]

    created = owner.post("/properties", json=without_id(listing()))  # stored as typed: "dakar"
    assert created.status_code == 201, created.text
    assert created.json()[0]["id"] == new_id, "another listing was created meanwhile"
    try:
        shown_within(AT_ONCE, lambda: get(stack, detail).status_code == 200, "the cached 404 to go")
        for path in views:
            shown_within(AT_ONCE, lambda p=path: new_id in ids(stack, p), f"{new_id} on {path}")
        after = get(stack, "/api/dashboard", AWA).json()["dashboard"]
        assert (after["properties"], after["published"]) == (dashboard["properties"] + 1, dashboard["published"] + 1)

        for path in (detail, *views):
            get(stack, path)  # cached again
        edited = owner.patch("/properties", params={"id": f"eq.{new_id}"}, json={"price": 125000, "city": "Thiès"})
        assert edited.status_code == 200 and edited.json()[0]["price"] == 125000
        shown_within(AT_ONCE, lambda: get(stack, detail).json()["property"]["price"] == 125000, "the new price")
        shown_within(AT_ONCE, lambda: new_id not in ids(stack, "/api/properties?city=Dakar"), "gone from Dakar")
        shown_within(AT_ONCE, lambda: new_id in ids(stack, "/api/properties?city=Thies"), "new_id in Thiès")
        shown_within(AT_ONCE, lambda: new_id not in ids(stack, "/api/search?city=Dakar&type=studio"), "the search")
    finally:
        assert owner.delete("/properties", params={"id": f"eq.{new_id}"}).status_code == 200
    shown_within(AT_ONCE, lambda: get(stack, detail).status_code == 404, "the deleted listing to go")
    shown_within(AT_ONCE, lambda: new_id not in ids(stack, "/api/properties"), "gone from the list")
    assert get(stack, "/api/dashboard", AWA).json()["dashboard"]["properties"] == dashboard["properties"]


def test_a_slot_the_owner_opens_through_supabase_is_bookable_at_once(stack):
    owner = rest(stack, AWA)
    slots = "/api/visits/slots?property_id=789"
    before = get(stack, slots).json()["slots"]
    assert get(stack, slots).headers["x-cache"] == "HIT"
    opened = owner.post("/visit_slots", json={"property_id": 789, "starts_at": "2031-06-01T10:00:00+00:00",
                                               "ends_at": "2031-06-01T11:00:00+00:00"})
    assert opened.status_code == 201, opened.text
    try:
        shown_within(AT_ONCE, lambda: len(get(stack, slots).json()["slots"]) == len(before) + 1, "the new slot")
    finally:
        owner.delete("/visit_slots", params={"id": f"eq.{opened.json()[0]['id']}"})
    shown_within(AT_ONCE, lambda: len(get(stack, slots).json()["slots"]) == len(before), "the removed slot")


# -- SQL, Studio, another service ---------------------------------------------------------------------


def test_a_listing_changed_in_sql_shows_at_once_on_the_list_the_city_page_the_detail_and_the_search(stack, sql):
    views = ["/api/properties", "/api/properties?city=Dakar", "/api/search?city=Dakar&per_page=50"]
    detail = "/api/properties/105"
    price = get(stack, detail).json()["property"]["price"]
    for path in (*views, detail):
        get(stack, path)
        assert get(stack, path).headers["x-cache"] == "HIT"  # cached before the change

    def prices(path):
        body = get(stack, path).json()
        rows = body.get("properties") or body.get("results") or [body.get("property")]
        return {row["price"] for row in rows if row["id"] == 105}

    sql.execute("update properties set price = price + 5, city = 'DAKAR' where id = 105")  # Studio, as typed
    try:
        for path in (*views, detail):
            shown_within(AT_ONCE, lambda p=path: prices(p) == {price + 5}, f"the new price on {path}")
    finally:
        sql.execute("update properties set price = price - 5, city = 'Dakar' where id = 105")


def test_a_payment_and_a_notification_written_in_sql_show_at_once(stack, sql):
    payments = "/api/payments?lease_id=123"
    count = len(get(stack, payments, MOUSSA).json()["payments"])
    notes = len(get(stack, "/api/notifications", MOUSSA).json()["notifications"])
    revenue = get(stack, "/api/dashboard", AWA).json()["dashboard"]
    for path, who in ((payments, MOUSSA), ("/api/notifications", MOUSSA), ("/api/dashboard", AWA)):
        assert get(stack, path, who).headers["x-cache"] == "HIT"
    [(pid,)] = sql.execute("insert into rental_payments (lease_id, period, amount, status, paid_at) "
                           "values (123, '2020-01', 50000, 'pending', null) returning id").fetchall()
    sql.execute("insert into notifications (user_id, kind, title) values "
                "('33333333-3333-4333-8333-333333333333', 'test', 'Message du service client')")
    try:
        shown_within(AT_ONCE, lambda: len(get(stack, payments, MOUSSA).json()["payments"]) == count + 1, "payment")
        shown_within(AT_ONCE, lambda: len(get(stack, "/api/notifications", MOUSSA).json()["notifications"])
                     == min(notes + 1, 50), "the notification")
        shown_within(AT_ONCE, lambda: get(stack, "/api/dashboard", AWA).json()["dashboard"]["pending_payments"]
                     == revenue["pending_payments"] + 1, "the owner's pending payments")
    finally:
        sql.execute("delete from rental_payments where id = %s", (pid,))
        sql.execute("delete from notifications where kind = 'test'")


def test_a_lease_created_after_its_id_was_probed_lets_its_tenant_in(stack, sql):
    probe = get(stack, "/api/payments?lease_id=555", FATOU)
    assert probe.status_code == 403 and stack.redis("EXISTS", "dousell:meta:lease:555") == 1  # a cached "no lease"
    sql.execute("insert into leases (id, property_id, tenant_id, monthly_rent, status, starts_on) values "
                "(555, 104, '44444444-4444-4444-8444-444444444444', 400000, 'active', current_date)")
    try:
        shown_within(AT_ONCE, lambda: get(stack, "/api/payments?lease_id=555", FATOU).status_code == 200,
                     "the tenant's access to her new lease")
    finally:
        sql.execute("delete from leases where id = 555")
    shown_within(AT_ONCE, lambda: get(stack, "/api/payments?lease_id=555", FATOU).status_code == 403, "access gone")


# -- the API's own writes ---------------------------------------------------------------------------


def test_the_apis_own_patch_is_not_bumped_again_by_its_webhook(stack, sql, webhooks):
    detail = "/api/properties/106"
    webhooks("hold")  # the webhook waits until the entry is refilled
    patched = stack.api.patch(detail, headers=stack.auth(AWA), json={"price": 360000})
    assert patched.status_code == 200
    assert get(stack, detail).json()["property"]["price"] == 360000  # shown at once: the API's own bump
    assert get(stack, detail).headers["x-cache"] == "HIT"
    webhooks("deliver")
    wait_for(lambda: pending(sql) == 0, timeout=AT_ONCE, what="the webhook's drain")
    assert get(stack, detail).headers["x-cache"] == "HIT", "the refilled entry was thrown away by a second bump"
    stack.api.patch(detail, headers=stack.auth(AWA), json={"price": 350000})


# -- one signed call per statement, capped writes ------------------------------------------------------------


def webhook_answers(sql) -> list[tuple[int | None, str | None]]:
    return sql.execute("select status_code, content from net._http_response order by created, id").fetchall()


def test_300_slots_written_through_supabase_are_one_signed_webhook_per_statement_and_the_cap_holds(stack, sql):
    owner = rest(stack, AWA)
    sql.execute("delete from net._http_response")
    slots = [{"property_id": 789, "starts_at": f"2031-01-{1 + i // 10:02d}T{8 + i % 10:02d}:00:00Z",
              "ends_at": f"2031-01-{1 + i // 10:02d}T{8 + i % 10:02d}:30:00Z"} for i in range(300)]
    created = owner.post("/visit_slots", json=slots)
    assert created.status_code == 201, created.text
    try:
        moved = owner.patch("/visit_slots", params={"property_id": "eq.789", "starts_at": "gte.2031-01-01"},
                            json={"ends_at": "2031-02-01T00:00:00Z"})
        assert moved.status_code == 200 and len(moved.json()) == 300
        # Two statements, two calls, each accepted by the API: the database's signature is the API's.
        wait_for(lambda: len(webhook_answers(sql)) >= 2, timeout=AT_ONCE, what="the two webhooks")
        answers = webhook_answers(sql)
        assert [status for status, _ in answers] == [200, 200], answers
        more = [{"property_id": 789, "starts_at": f"2031-03-{1 + i // 10:02d}T{8 + i % 10:02d}:00:00Z",
                 "ends_at": f"2031-03-{1 + i // 10:02d}T{8 + i % 10:02d}:30:00Z"} for i in range(200)]
        refused = owner.post("/visit_slots", json=more)
        assert refused.status_code == 400 and refused.json()["message"] == "too_many_visit_slots", refused.text
    finally:
        owner.delete("/visit_slots", params={"property_id": "eq.789", "starts_at": "gte.2031-01-01"})
    wait_for(lambda: pending(sql) == 0, timeout=CRON_WINDOW, what="the outbox drained")


def test_a_call_not_signed_by_the_database_is_refused_on_the_stack(stack):
    body = b'{"type": "DELETE", "table": "properties", "schema": "public", "record": null, "old_record": {"id": 1}}'
    stale = signature.sign(DATABASE_WEBHOOK_SECRET, body, int(time.time()) - 600)
    for headers in ({"Authorization": f"Bearer {DATABASE_WEBHOOK_SECRET}"},
                    {"X-Dousell-Signature": signature.sign("guessed", body, int(time.time()))},
                    {"X-Dousell-Signature": stale}):
        response = stack.api.post("/api/hooks/database", content=body,
                                  headers={"Content-Type": "application/json", **headers})
        assert response.status_code == 401, (headers, response.text)


# -- nothing lost ---------------------------------------------------------------------------------------


def test_with_the_webhook_lost_the_change_shows_within_the_crons_minute(stack, sql, webhooks):
    detail = "/api/properties/107"
    price = get(stack, detail).json()["property"]["price"]
    webhooks("drop")
    sql.execute("update properties set price = price + 1 where id = 107")
    assert get(stack, detail).json()["property"]["price"] == price  # stale: the webhook is lost
    took = shown_within(CRON_WINDOW, lambda: get(stack, detail).json()["property"]["price"] == price + 1,
                        "the cron to apply the lost change")
    assert pending(sql) == 0
    print(f"lost webhook: shown after {took:.1f} s")
    sql.execute("update properties set price = price - 1 where id = 107")


def test_with_redis_stopped_during_the_change_it_waits_in_the_outbox_and_shows_after(stack, sql):
    detail = "/api/properties/108"
    price = get(stack, detail).json()["property"]["price"]
    stack.devstack("redis-stop")
    try:
        sql.execute("update properties set price = price + 1 where id = 108")
        # The webhook came, its drain could not bump: the change waits in the database, not in a function.
        wait_for(lambda: sql.execute("select count(*) from net._http_response where status_code = 503 and "
                                     "created > now() - interval '30 seconds'").fetchone()[0] >= 1,
                 timeout=AT_ONCE, what="the webhook's 503")
        assert pending(sql) >= 1
        assert get(stack, detail).json()["property"]["price"] == price + 1  # from the database meanwhile
    finally:
        stack.devstack("redis-start")
    # Reads go on meanwhile: the first one that probes Redis again drains before it trusts an entry; the
    # cron would within its minute anyway.
    took = shown_within(CRON_WINDOW, lambda: get(stack, detail).json()["property"]["price"] == price + 1
                        and pending(sql) == 0, "the outbox to be drained after Redis is back")
    print(f"Redis outage: outbox drained {took:.1f} s after Redis came back")
    sql.execute("update properties set price = price - 1 where id = 108")
