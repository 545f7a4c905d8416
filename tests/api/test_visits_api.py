"""GET, POST /api/visits and DELETE /api/visits/{id} on a real loopback server; the network faked by respx."""

from __future__ import annotations

import importlib
from datetime import timedelta

import httpx
import pytest
import respx

from lib import keys
from tests.fakes import FakeUpstash
from tests.support import api_module, serve
from tests.world import (
    AWA,
    FATOU,
    MOUSSA,
    UPSTASH,
    FakePayDunya,
    FakeSupabase,
    WallClock,
    bearer,
    env,
    race_while_held,
    reset_breaker,
    serve_jwks,
)

visits_api = importlib.import_module("api.visits.index")


@pytest.fixture
def api(monkeypatch):
    env(monkeypatch)
    with respx.mock(assert_all_called=False) as router:
        router.route(host="127.0.0.1").pass_through()
        serve_jwks(router)
        redis = FakeUpstash(router, UPSTASH)
        db = FakeSupabase(router, WallClock())
        FakePayDunya(router)
        with serve(visits_api.handler) as base, httpx.Client(base_url=base, timeout=20) as client:
            yield db, redis, client
    reset_breaker()


def book(client, db, who=FATOU, n=0, **headers):
    return client.post("/api/visits", json={"property_id": 789, "starts_at": db.slots[n]["starts_at"].isoformat()},
                       headers={**bearer(who), **headers})


def code(response):
    return response.json()["error"]["code"]


def test_a_free_slot_is_booked_201_and_a_second_booking_is_409(api):
    db, _, client = api
    first = book(client, db)
    assert first.status_code == 201, first.text
    visit = first.json()["visit"]
    assert visit["visitor_id"] == FATOU and visit["property_id"] == 789
    second = book(client, db, who=MOUSSA)
    assert (second.status_code, code(second)) == (409, "slot_taken")


def test_a_zulu_time_is_the_same_slot(api):
    db, _, client = api
    at = db.slots[1]["starts_at"].strftime("%Y-%m-%dT%H:%M:%SZ")
    response = client.post("/api/visits", json={"property_id": 789, "starts_at": at}, headers=bearer(FATOU))
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("body, field", [
    ({"property_id": 789, "starts_at": "2026-11-27T10:00:00"}, "starts_at"),  # no time zone
    ({"property_id": 789, "starts_at": 1795780800}, "starts_at"),  # a number, not ISO 8601
    ({"property_id": 789, "starts_at": "demain 10h"}, "starts_at"),
    ({"property_id": "789", "starts_at": "2026-11-27T10:00:00Z"}, "property_id"),
    ({"starts_at": "2026-11-27T10:00:00Z"}, "property_id"),
    ({"property_id": 789, "starts_at": "2026-11-27T10:00:00Z", "visitor_id": AWA}, "visitor_id"),
    # Valid ISO 8601 whose UTC instant is outside what Python's datetime holds (OverflowError).
    ({"property_id": 789, "starts_at": "0001-01-01T00:00:00+01:00"}, "starts_at"),
    ({"property_id": 789, "starts_at": "9999-12-31T23:30:00-01:00"}, "starts_at"),
    ({"property_id": 789, "starts_at": "9999-12-31T23:59:59.999999-23:59"}, "starts_at"),
])
def test_an_invalid_body_is_422(api, body, field):
    db, _, client = api
    response = client.post("/api/visits", json=body, headers=bearer(FATOU))
    assert (response.status_code, code(response)) == (422, "validation_error")
    assert field in [d["field"] for d in response.json()["error"]["details"]]
    assert db.visits == []


@pytest.mark.parametrize("starts_at", ["0001-01-01T00:00:00-01:00", "9999-12-31T23:00:00+01:00"])
def test_an_instant_at_the_edge_of_the_calendar_is_a_slot_that_does_not_exist(api, starts_at):
    db, _, client = api
    response = client.post("/api/visits", json={"property_id": 789, "starts_at": starts_at}, headers=bearer(FATOU))
    assert (response.status_code, code(response)) == (409, "slot_taken")
    assert db.visits == []


def test_without_a_token_it_is_401(api):
    db, _, client = api
    response = client.post("/api/visits", json={"property_id": 789, "starts_at": "2026-11-27T10:00:00Z"})
    assert response.status_code == 401


def test_an_unpublished_property_is_404(api):
    db, _, client = api
    response = client.post("/api/visits", json={"property_id": 117, "starts_at": db.slots[0]["starts_at"].isoformat()},
                           headers=bearer(FATOU))
    assert (response.status_code, code(response)) == (404, "not_found")


def test_a_busy_slot_lock_is_409_booking_in_progress(api):
    db, redis, client = api
    redis.redis.set(keys.visit_lock(789, db.slots[0]["starts_at"]), "x", px=30_000)
    response = book(client, db)
    assert (response.status_code, code(response)) == (409, "booking_in_progress")


def test_a_retry_with_the_same_idempotency_key_gets_the_booking_not_slot_taken(api):
    db, _, client = api
    first = book(client, db, **{"Idempotency-Key": "visit-1"})
    again = book(client, db, **{"Idempotency-Key": "visit-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = book(client, db, n=1, **{"Idempotency-Key": "visit-1"})
    assert (other.status_code, code(other)) == (422, "idempotency_key_reused")


def test_fifty_simultaneous_bookings_of_one_slot_make_one_visit_and_the_lock_turns_49_away_before_the_database(
        on_standins, standin, admin):
    """On the real database: the slot lock's holder waits on the property's row (held here); the 49
    others are 409 booking_in_progress from the lock meanwhile, and book_visit runs once."""
    starts_at = admin.execute("select starts_at from public.visit_slots where property_id = 789 and starts_at > now()"
                              " order by starts_at limit 1").fetchone()[0]
    tokens = [standin.mint_token(who, email) for who, email in
              ((FATOU, "fatou.sarr@example.sn"), (MOUSSA, "moussa.diop@example.sn"))]
    standin.reset_stats()
    with serve(visits_api.handler) as base, httpx.Client(base_url=base, timeout=90) as client:
        def click(i: int) -> httpx.Response:
            return client.post("/api/visits", json={"property_id": 789, "starts_at": starts_at.isoformat()},
                               headers={"Authorization": f"Bearer {tokens[i % 2]}"})

        answers, while_held = race_while_held(admin, "select 1 from public.properties where id = 789 for update", click)
    statuses = [r.status_code for r in answers]
    assert sorted(statuses) == [201] + [409] * 49, statuses
    assert {code(r) for r in answers if r.status_code == 409} == {"booking_in_progress"}
    assert while_held == 49, "the 49 are turned away by the lock while its holder waits on the database"
    assert standin.stats()["rpc"].get("book_visit") == 1, "only the lock's holder reached the database"
    booked = admin.execute("select count(*) from public.visits where property_id = 789 and starts_at = %s"
                           " and status = 'booked'", (starts_at,)).fetchone()[0]
    assert booked == 1


# -- GET /api/visits and DELETE /api/visits/{id} ------------------------------------------------


@pytest.fixture
def cancel_url(api):
    with serve(api_module("api/visits/[id].py").handler) as base:
        yield base


def test_get_lists_the_users_visits_upcoming_first_and_is_cached(api):
    db, _, client = api
    book(client, db, n=1)
    book(client, db, n=0)
    first = client.get("/api/visits", headers=bearer(FATOU))
    assert first.status_code == 200, first.text
    assert [v["starts_at"] for v in first.json()["visits"]] == [db.slots[0]["starts_at"].isoformat(),
                                                                db.slots[1]["starts_at"].isoformat()]
    assert first.headers["x-cache"] == "MISS" and first.headers["cache-control"] == "no-store"
    assert client.get("/api/visits", headers=bearer(FATOU)).headers["x-cache"] == "HIT"
    assert [v["role"] for v in client.get("/api/visits", headers=bearer(AWA)).json()["visits"]] == ["owner", "owner"]


def test_get_needs_a_token_and_takes_no_query(api):
    _, _, client = api
    assert code(client.get("/api/visits")) == "authentication_required"
    assert client.get("/api/visits?user_id=x", headers=bearer(FATOU)).status_code == 422


def test_delete_cancels_200_and_the_slot_is_free_at_once(api, cancel_url):
    db, _, client = api
    visit = book(client, db).json()["visit"]
    with httpx.Client(base_url=cancel_url, timeout=20) as other:
        response = other.delete(f"/api/visits/{visit['id']}", headers=bearer(AWA))  # the owner
        assert response.status_code == 200, response.text
        assert response.json()["visit"]["status"] == "cancelled"
        again = other.delete(f"/api/visits/{visit['id']}", headers=bearer(FATOU))
        assert (again.status_code, again.json()["visit"]["status"]) == (200, "cancelled")
    assert book(client, db, who=MOUSSA).status_code == 201  # the same slot, at once


@pytest.mark.parametrize("path, who, status, error", [
    ("/api/visits/{id}", MOUSSA, 404, "not_found"),  # a stranger: as if it did not exist
    ("/api/visits/424242", FATOU, 404, "not_found"),
    ("/api/visits/abc", FATOU, 404, "not_found"),
    ("/api/visits/0", FATOU, 404, "not_found"),
    ("/api/visits/{id}", None, 401, "authentication_required"),
])
def test_delete_refuses_what_is_not_yours_or_not_a_visit(api, cancel_url, path, who, status, error):
    db, _, client = api
    visit = book(client, db).json()["visit"]
    with httpx.Client(base_url=cancel_url, timeout=20) as other:
        response = other.delete(path.format(id=visit["id"]), headers=bearer(who) if who else {})
    assert (response.status_code, code(response)) == (status, error)
    assert db.visits[0]["status"] == "booked"


def test_delete_of_a_visit_that_started_is_409_visit_started(api, cancel_url):
    db, _, client = api
    visit = book(client, db).json()["visit"]
    db.clock.now = db.slots[0]["starts_at"]
    with httpx.Client(base_url=cancel_url, timeout=20) as other:
        response = other.delete(f"/api/visits/{visit['id']}", headers=bearer(FATOU))
    assert (response.status_code, code(response)) == (409, "visit_started")


def test_a_fourth_booking_of_one_property_is_409_too_many_bookings(api):
    db, _, client = api
    db.slots.append({"id": 10, "property_id": 789, "starts_at": db.slots[2]["starts_at"] + timedelta(hours=3),
                     "ends_at": db.slots[2]["starts_at"] + timedelta(hours=4)})
    for n in range(3):
        assert book(client, db, n=n).status_code == 201
    response = book(client, db, n=4)
    assert (response.status_code, code(response)) == (409, "too_many_bookings")
    assert "3 par bien" in response.json()["error"]["message"]


def test_an_anonymous_sign_in_cannot_book_nor_cancel_but_still_reads(api, cancel_url):
    # The attack: anonymous sign-ins are free and unlimited, so each per-account cap (3 bookings of a
    # property, 30 writes a minute) is one click away from void.
    db, redis, client = api
    anonymous = bearer(FATOU, anonymous=True)
    refused = client.post("/api/visits", json={"property_id": 789, "starts_at": db.slots[0]["starts_at"].isoformat()},
                          headers=anonymous)
    assert refused.status_code == 403
    assert refused.json()["error"] == {"code": "anonymous_not_allowed", "message": refused.json()["error"]["message"]}
    assert "compte" in refused.json()["error"]["message"]
    assert db.visits == [] and db.count("POST", "/rpc/book_visit") == 0
    assert redis.redis.keys("dousell:ratelimit:*") == []  # refused before anything is counted
    visit = book(client, db).json()["visit"]
    with httpx.Client(base_url=cancel_url, timeout=20) as other:
        assert other.delete(f"/api/visits/{visit['id']}", headers=anonymous).status_code == 403
    assert db.visits[0]["status"] == "booked"
    assert client.get("/api/visits", headers=anonymous).status_code == 200  # reading is not a write


def test_many_accounts_writing_from_one_address_are_cut_at_the_address_limit(api, monkeypatch):
    db, _, client = api
    monkeypatch.setenv("RATE_LIMIT_WRITES_PER_ADDRESS_PER_MINUTE", "4")
    here, elsewhere = {"X-Forwarded-For": "197.159.1.2"}, {"X-Forwarded-For": "41.82.7.9"}
    statuses = [book(client, db, who=who, n=n % 3, **here).status_code
                for n, who in enumerate((FATOU, MOUSSA, AWA, FATOU, MOUSSA))]
    assert statuses[4] == 429 and 429 not in statuses[:4]
    assert book(client, db, who=MOUSSA, n=2, **elsewhere).status_code != 429
