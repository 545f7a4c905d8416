"""lib/domain/visits: booking a slot (cached pre-check, lock per slot, book_visit RPC as the fence, invalidation),
a user's visits (cached), cancelling one (the slot free at once)."""

from __future__ import annotations

import json
from datetime import timedelta, timezone

import httpx
import pytest
import respx

from lib import context, keys
from lib.cache import locks
from lib.domain import visits
from lib.edge import upstash
from lib.errors import BookingInProgress, NotFound, SlotTaken, TooManyBookings, VisitStarted
from tests.fakes import FakeUpstash
from tests.world import (
    AWA,
    FATOU,
    MOUSSA,
    UPSTASH,
    FakePayDunya,
    FakeSupabase,
    WallClock,
    env,
    reset_breaker,
    rpc_error,
    user,
)


@pytest.fixture
def world(monkeypatch):
    env(monkeypatch)
    clock = WallClock()
    with respx.mock(assert_all_called=False) as router:
        db = FakeSupabase(router, clock)
        FakePayDunya(router)
        redis = FakeUpstash(router, UPSTASH)
        yield db, redis
    reset_breaker()


def slot(db, n=0):
    return db.slots[n]["starts_at"]


def book(db, who=FATOU, n=0, at=None):
    context.begin()
    return visits.book(user(who), 789, at or slot(db, n))


def test_a_free_slot_is_booked_for_the_user(world):
    db, redis = world
    visit = book(db)
    assert visit["visitor_id"] == FATOU and visit["property_id"] == 789 and visit["status"] == "booked"
    assert visit["starts_at"] == slot(db).isoformat()
    assert len(db.visits) == 1
    assert ("POST", "/rpc/book_visit", "service_role") in db.calls


def test_booking_takes_the_slots_lock_and_releases_it(world):
    db, redis = world
    name = keys.visit_lock(789, slot(db))
    assert name == f"dousell:lock:visit:prop789:{slot(db).strftime('%Y%m%dT%H%M%SZ')}"
    seen = {}
    db.before["/rpc/book_visit"] = lambda: seen.update(pttl=redis.redis.pttl(name))
    book(db)
    assert 29_000 < seen["pttl"] <= 30_000
    assert redis.redis.exists(name) == 0


def test_a_booking_removes_the_slot_from_the_cached_list_at_once(world):
    db, redis = world
    assert len(visits.free_slots(789)) == 3
    dashboard = redis.redis.get(keys.tag_key(f"dashboard:{AWA}"))
    book(db)
    assert [s["starts_at"] for s in visits.free_slots(789)] == [slot(db, 1).isoformat(), slot(db, 2).isoformat()]
    assert redis.redis.get(keys.tag_key(f"dashboard:{AWA}")) != dashboard


def test_a_slot_no_longer_in_the_free_list_is_409_without_touching_the_database(world):
    db, redis = world
    book(db)
    visits.free_slots(789)  # someone reads the fresh list (the booking invalidated it)
    db.calls.clear()
    with pytest.raises(SlotTaken) as info:
        book(db, who=MOUSSA)
    assert (info.value.status, info.value.code) == (409, "slot_taken")
    assert db.calls == []  # answered from the cached list


def test_an_instant_that_is_no_slot_is_409_slot_taken(world):
    db, _ = world
    with pytest.raises(SlotTaken):
        book(db, at=slot(db) + timedelta(minutes=30))
    with pytest.raises(SlotTaken):
        book(db, at=db.slots[3]["starts_at"])  # yesterday's slot is never free
    assert db.count("POST", "/rpc/book_visit") == 0


def test_the_same_instant_in_another_offset_is_the_same_slot_and_lock(world):
    db, redis = world
    dakar_plus_one = slot(db).astimezone(timezone(timedelta(hours=1)))
    assert keys.visit_lock(789, dakar_plus_one) == keys.visit_lock(789, slot(db))
    assert book(db, at=dakar_plus_one)["starts_at"] == slot(db).isoformat()


def test_an_unpublished_or_unknown_property_is_404(world):
    db, _ = world
    for pid in (117, 999):
        with pytest.raises(NotFound):
            visits.book(user(FATOU), pid, slot(db))


def test_a_busy_slot_lock_is_409_booking_in_progress(world):
    db, redis = world
    redis.redis.set(keys.visit_lock(789, slot(db)), "other", px=30_000)
    with pytest.raises(BookingInProgress) as info:
        book(db)
    assert (info.value.status, info.value.code) == (409, "booking_in_progress")
    assert db.visits == []


def test_the_rpc_is_the_fence_when_the_cached_list_is_stale(world):
    db, redis = world
    visits.free_slots(789)  # cached: 3 free
    db.visits.append({"slot_id": db.slots[0]["id"], "status": "booked"})  # booked behind our back
    with pytest.raises(SlotTaken):
        book(db)
    assert len(visits.free_slots(789)) == 2  # the wrong list was dropped


@pytest.mark.parametrize("code, error", [
    ("slot_taken", SlotTaken), ("slot_not_found", SlotTaken), ("property_not_found", NotFound),
    ("visitor_not_found", NotFound), ("too_many_bookings", TooManyBookings),
])
def test_each_code_of_the_booking_rpc_becomes_its_contract_error(world, code, error):
    db, _ = world
    db.broken["/rpc/book_visit"] = rpc_error(code)
    with pytest.raises(error):
        book(db)


def test_redis_down_bookings_still_never_double(world):
    db, redis = world
    redis.down = httpx.ConnectError("redis down")
    assert book(db)["visitor_id"] == FATOU
    with pytest.raises(SlotTaken):
        book(db, who=MOUSSA)
    assert len(db.visits) == 1
    assert ("POST", "/rpc/book_visit", "service_role") in db.calls


def test_redis_down_the_visit_is_booked_and_nothing_waits_in_memory(world):
    # The booking's invalidation is in the database's outbox (tests/lib/cache/test_outbox.py), not here.
    db, redis = world
    visits.free_slots(789)
    redis.down = httpx.ConnectError("redis down")
    assert book(db)["status"] == "booked"
    redis.down = None
    upstash.breaker.reset()
    redis.calls.clear()
    visits.free_slots(789)
    assert "slots:789" not in str([c for c in redis.calls if "SET" in str(c)]), "replayed from memory"


def test_a_booking_bumps_the_slots_the_owners_dashboard_and_both_visit_lists(world):
    db, redis = world
    tags = ("slots:789", f"dashboard:{AWA}", f"visits:user:{FATOU}", f"visits:user:{AWA}")
    before = {tag: redis.redis.get(keys.tag_key(tag)) for tag in tags}
    book(db)
    for tag in tags:
        assert redis.redis.get(keys.tag_key(tag)) not in (None, before[tag]), tag


def test_a_lock_held_by_someone_else_is_retried_once(world, monkeypatch):
    db, redis = world
    name = keys.visit_lock(789, slot(db))
    redis.redis.set(name, "other", px=30_000)
    monkeypatch.setattr(locks, "sleep", lambda s: redis.redis.delete(name))  # freed during the pause
    assert book(db)["visitor_id"] == FATOU


def test_the_visit_body_is_the_row(world):
    db, _ = world
    visit = book(db)
    assert set(visit) >= {"id", "slot_id", "property_id", "visitor_id", "starts_at", "ends_at", "status"}
    json.dumps(visit)


# -- a user's visits -------------------------------------------------------------------------------


def my_visits(who):
    ctx = context.begin()
    return visits.list_for(user(who)), ctx.cache_status


def test_a_user_lists_their_visits_as_visitor_and_the_owner_sees_them_as_owner(world):
    db, _ = world
    book(db, n=1)
    book(db, n=0)
    mine, status = my_visits(FATOU)
    assert status == "MISS"
    assert [(v["starts_at"], v["role"]) for v in mine] == [(slot(db, 0).isoformat(), "visitor"),
                                                            (slot(db, 1).isoformat(), "visitor")]
    assert [v["role"] for v in my_visits(AWA)[0]] == ["owner", "owner"]
    assert my_visits(MOUSSA)[0] == []
    assert ("POST", "/rpc/user_visits", "authenticated") in db.calls  # read as the user: RLS applies


def test_the_visit_list_is_cached_and_a_booking_shows_in_it_at_once(world):
    db, _ = world
    my_visits(FATOU)
    assert my_visits(FATOU) == ([], "HIT")
    book(db)
    mine, status = my_visits(FATOU)
    assert status == "MISS" and len(mine) == 1
    assert len(my_visits(AWA)[0]) == 1  # the owner's list too


# -- cancelling ------------------------------------------------------------------------------------


def cancel(who, visit_id):
    context.begin()
    return visits.cancel(user(who), visit_id)


@pytest.mark.parametrize("who, told", [(FATOU, AWA), (AWA, FATOU)])  # the visitor, the property's owner
def test_the_visitor_or_the_owner_cancels_and_the_slot_is_free_at_once_everywhere(world, who, told):
    db, _ = world
    visit = book(db)
    free_before = len(visits.free_slots(789))
    my_visits(FATOU), my_visits(AWA)  # cached
    assert cancel(who, visit["id"])["status"] == "cancelled"
    assert len(visits.free_slots(789)) == free_before + 1
    assert [v["status"] for v in my_visits(FATOU)[0]] == ["cancelled"]
    assert [v["status"] for v in my_visits(AWA)[0]] == ["cancelled"]
    assert [(n["user_id"], n["kind"]) for n in db.notifications] == [(told, "visit_cancelled")]
    assert book(db, who=MOUSSA)["visitor_id"] == MOUSSA  # bookable again at once


def test_cancelling_bumps_the_slots_the_dashboard_both_lists_and_the_other_partys_notifications(world):
    db, redis = world
    visit = book(db)
    tags = ("slots:789", f"dashboard:{AWA}", f"visits:user:{FATOU}", f"visits:user:{AWA}", f"notifications:{AWA}")
    before = {t: redis.redis.get(keys.tag_key(t)) for t in tags}
    cancel(FATOU, visit["id"])
    for tag in tags:
        assert redis.redis.get(keys.tag_key(tag)) != before[tag], tag


def test_cancelling_twice_is_harmless_and_bumps_nothing_the_second_time(world):
    db, redis = world
    visit = book(db)
    cancel(FATOU, visit["id"])
    version = redis.redis.get(keys.tag_key("slots:789"))
    assert cancel(FATOU, visit["id"])["status"] == "cancelled"
    assert redis.redis.get(keys.tag_key("slots:789")) == version
    assert len(db.notifications) == 1


def test_a_stranger_or_an_unknown_visit_is_404(world):
    db, _ = world
    visit = book(db)
    for who, visit_id in ((MOUSSA, visit["id"]), (FATOU, 424242)):
        with pytest.raises(NotFound):
            cancel(who, visit_id)
    assert db.visits[0]["status"] == "booked"


def test_a_visit_that_has_started_cannot_be_cancelled(world):
    db, _ = world
    visit = book(db)
    db.clock.now = slot(db) + timedelta(minutes=5)
    with pytest.raises(VisitStarted) as info:
        cancel(FATOU, visit["id"])
    assert (info.value.status, info.value.code) == (409, "visit_started")


def test_the_cap_refuses_a_fourth_future_visit_of_one_property(world):
    db, _ = world
    db.slots.append({"id": 10, "property_id": 789, "starts_at": slot(db, 2) + timedelta(hours=3),
                     "ends_at": slot(db, 2) + timedelta(hours=4)})
    for n in range(3):
        book(db, n=n)
    with pytest.raises(TooManyBookings) as info:
        book(db, at=db.slots[-1]["starts_at"])
    assert (info.value.status, info.value.code) == (409, "too_many_bookings")
