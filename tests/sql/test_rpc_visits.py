"""available_slots and book_visit: every branch, and races for one slot."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from psycopg import errors

from tests.sql.demo import (
    AWA,
    FATOU,
    FREE_SLOTS_789,
    IBRAHIMA,
    MERMOZ_102,
    MOUSSA,
    SLOT_HOURS_789,
    THIES_201,
    VILLA_789,
)
from tests.sql.helpers import in_thread, race, raised_code, wait_until_blocked

BOOK = "select book_visit(%s, %s, %s)"


def book(conn, act_as, property_id, starts_at, visitor=FATOU):
    with act_as(conn, "service_role"):
        return conn.execute(BOOK, (property_id, starts_at, visitor)).fetchone()[0]


def free_slots(conn, act_as, property_id, role="anon"):
    with act_as(conn, role):
        return conn.execute("select starts_at, ends_at from available_slots(%s)", (property_id,)).fetchall()


def book_error(conn, act_as, property_id, starts_at, visitor=FATOU) -> str | None:
    with pytest.raises(errors.RaiseException) as info:
        book(conn, act_as, property_id, starts_at, visitor)
    return raised_code(info.value)


def slot_starts(admin, property_id) -> list[datetime]:
    return [r[0] for r in admin.execute("select starts_at from visit_slots where property_id = %s order by starts_at", (property_id,))]


def add_slot(admin, property_id, starts_at, minutes=60):
    admin.execute(
        "insert into visit_slots (property_id, starts_at, ends_at) values (%s, %s, %s)",
        (property_id, starts_at, starts_at + timedelta(minutes=minutes)),
    )


# -- available_slots ------------------------------------------------------------------------


def test_the_villa_offers_twelve_future_one_hour_slots_on_whole_dakar_hours(api, act_as, admin):
    slots = free_slots(api, act_as, VILLA_789)
    now = admin.execute("select now()").fetchone()[0]
    assert len(slots) == FREE_SLOTS_789
    assert slots == sorted(slots)
    for starts_at, ends_at in slots:
        assert starts_at > now
        assert ends_at - starts_at == timedelta(hours=1)
        local = starts_at.astimezone(ZoneInfo("Africa/Dakar"))
        assert (local.minute, local.second, local.microsecond) == (0, 0, 0)
        assert local.hour in SLOT_HOURS_789
    assert len({s.date() for s, _ in slots}) == 4


def test_past_slots_are_not_offered(api, act_as, admin):
    past = slot_starts(admin, VILLA_789)[0]
    assert past < admin.execute("select now()").fetchone()[0]
    assert past not in [s for s, _ in free_slots(api, act_as, VILLA_789)]


@pytest.mark.parametrize(
    "property_id",
    [
        117,  # a draft (even if it has slots)
        999_999,  # no such property
        123,  # published, without slots
    ],
)
def test_no_slots_are_offered_for_drafts_unknown_or_slotless_properties(api, act_as, admin, property_id):
    if property_id == 117:
        admin.execute("insert into visit_slots (property_id, starts_at, ends_at) values (117, now() + interval '1 day', now() + interval '25 hours')")
    assert free_slots(api, act_as, property_id) == []


def test_a_booked_slot_and_the_slots_it_overlaps_are_no_longer_offered(api, act_as, admin):
    first = slot_starts(admin, VILLA_789)[1]
    add_slot(admin, VILLA_789, first + timedelta(minutes=30))  # overlaps the first one
    assert len(free_slots(api, act_as, VILLA_789)) == FREE_SLOTS_789 + 1
    book(api, act_as, VILLA_789, first)
    offered = [s for s, _ in free_slots(api, act_as, VILLA_789)]
    assert first not in offered
    assert first + timedelta(minutes=30) not in offered
    assert len(offered) == FREE_SLOTS_789 - 1


def test_the_seeded_booking_hides_its_slot(api, act_as, admin):
    assert len(slot_starts(admin, MERMOZ_102)) == 2
    assert len(free_slots(api, act_as, MERMOZ_102)) == 1


# -- book_visit -----------------------------------------------------------------------------


def test_booking_a_free_slot_returns_the_visit(api, act_as, admin):
    starts_at = slot_starts(admin, VILLA_789)[1]
    visit = book(api, act_as, VILLA_789, starts_at, MOUSSA)["visit"]
    assert {k: visit[k] for k in ("property_id", "visitor_id", "status")} == {"property_id": VILLA_789, "visitor_id": MOUSSA, "status": "booked"}
    assert datetime.fromisoformat(visit["starts_at"]) == starts_at
    assert datetime.fromisoformat(visit["ends_at"]) == starts_at + timedelta(hours=1)
    slot_id = admin.execute("select id from visit_slots where property_id = %s and starts_at = %s", (VILLA_789, starts_at)).fetchone()[0]
    assert visit["slot_id"] == slot_id
    assert admin.execute("select count(*) from visits where id = %s and status = 'booked'", (visit["id"],)).fetchone()[0] == 1


def test_the_starting_time_matches_whatever_its_time_zone(api, act_as, admin):
    starts_at = slot_starts(admin, VILLA_789)[1]
    as_text = starts_at.astimezone(timezone(timedelta(hours=1))).isoformat()  # "...T11:00:00+01:00" for 10:00Z
    assert book(api, act_as, VILLA_789, as_text)["visit"]["property_id"] == VILLA_789


def test_booking_a_booked_slot_is_refused(api, act_as, admin):
    starts_at = slot_starts(admin, VILLA_789)[1]
    book(api, act_as, VILLA_789, starts_at, MOUSSA)
    assert book_error(api, act_as, VILLA_789, starts_at, FATOU) == "slot_taken"
    assert book_error(api, act_as, VILLA_789, starts_at, MOUSSA) == "slot_taken"  # the same visitor too


def test_booking_a_slot_overlapping_a_booked_one_is_refused(api, act_as, admin):
    first = slot_starts(admin, VILLA_789)[1]
    add_slot(admin, VILLA_789, first + timedelta(minutes=30))
    book(api, act_as, VILLA_789, first)
    assert book_error(api, act_as, VILLA_789, first + timedelta(minutes=30), MOUSSA) == "slot_taken"


def test_a_cancelled_visit_frees_the_slot_for_booking(api, act_as, admin):
    starts_at = slot_starts(admin, MERMOZ_102)[1]  # Fatou's seeded booking
    assert book_error(api, act_as, MERMOZ_102, starts_at, MOUSSA) == "slot_taken"
    admin.execute("update visits set status = 'cancelled' where property_id = %s", (MERMOZ_102,))
    assert book(api, act_as, MERMOZ_102, starts_at, MOUSSA)["visit"]["visitor_id"] == MOUSSA


@pytest.mark.parametrize(
    "case, code",
    [
        ("draft property", "property_not_found"),
        ("archived property", "property_not_found"),
        ("unknown property", "property_not_found"),
        ("no slot at that time", "slot_not_found"),
        ("slot of another property", "slot_not_found"),
        ("slot in the past", "slot_not_found"),
        ("slot starting right now", "slot_not_found"),
        ("no time given", "slot_not_found"),
        ("unknown visitor", "visitor_not_found"),
    ],
)
def test_booking_refuses_with_a_stable_code(api, act_as, admin, case, code):
    future = slot_starts(admin, VILLA_789)[1]
    now = admin.execute("select date_trunc('second', now())").fetchone()[0]
    property_id, starts_at, visitor = VILLA_789, future, FATOU
    if case == "draft property":
        add_slot(admin, 117, future)
        property_id = 117
    elif case == "archived property":
        admin.execute("update properties set status = 'archived' where id = %s", (VILLA_789,))
    elif case == "unknown property":
        property_id = 999_999
    elif case == "no slot at that time":
        starts_at = future + timedelta(minutes=5)
    elif case == "slot of another property":
        starts_at = slot_starts(admin, THIES_201)[0]
    elif case == "slot in the past":
        starts_at = slot_starts(admin, VILLA_789)[0]
    elif case == "slot starting right now":
        add_slot(admin, VILLA_789, now)
        starts_at = now
    elif case == "no time given":
        starts_at = None
    elif case == "unknown visitor":
        visitor = "99999999-9999-4999-8999-999999999999"
    assert book_error(api, act_as, property_id, starts_at, visitor) == code
    assert admin.execute("select count(*) from visits").fetchone()[0] == 1  # only the seeded one


def test_ten_concurrent_bookings_of_one_slot_make_one_visit(api_conns, act_as, admin):
    starts_at = slot_starts(admin, VILLA_789)[1]
    visitors = [FATOU, MOUSSA, AWA, IBRAHIMA] * 3
    results = race(api_conns(10), lambda conn, i: book(conn, act_as, VILLA_789, starts_at, visitors[i]))
    booked = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(booked) == 1
    assert {raised_code(e) for e in refused} == {"slot_taken"}
    assert admin.execute("select count(*) from visits where property_id = %s", (VILLA_789,)).fetchone()[0] == 1


def test_concurrent_bookings_of_overlapping_slots_make_one_visit(api_conns, act_as, admin):
    first = slot_starts(admin, VILLA_789)[1]
    add_slot(admin, VILLA_789, first + timedelta(minutes=30))
    starts = [first, first + timedelta(minutes=30)] * 4
    results = race(api_conns(8), lambda conn, i: book(conn, act_as, VILLA_789, starts[i], (FATOU, MOUSSA)[i % 2]))
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert {raised_code(r) for r in results if isinstance(r, Exception)} == {"slot_taken"}, [repr(r) for r in results]


@pytest.mark.parametrize("overlapping", [False, True], ids=["same slot", "overlapping slot"])
def test_a_booking_that_loses_to_an_unlocked_writer_says_slot_taken(seeded_db, pg_connect, api, act_as, admin, overlapping):
    # A writer that skips the RPC holds an uncommitted booking the RPC's checks cannot
    # see: the RPC's insert waits on the unique index / exclusion constraint and must turn
    # the violation into slot_taken when the writer commits.
    first = slot_starts(admin, VILLA_789)[1]
    target = first
    if overlapping:
        target = first + timedelta(minutes=30)
        add_slot(admin, VILLA_789, target)
    rogue = pg_connect(seeded_db.dsn())
    rogue.autocommit = False
    rogue.execute(
        "insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at) select id, property_id, %s, starts_at, ends_at from visit_slots where property_id = %s and starts_at = %s",
        (MOUSSA, VILLA_789, first),
    )

    pid = api.info.backend_pid
    result = in_thread(lambda: book(api, act_as, VILLA_789, target))
    wait_until_blocked(admin, pid)
    rogue.commit()

    answer = result()
    assert isinstance(answer, errors.RaiseException), answer
    assert raised_code(answer) == "slot_taken"


def test_bookings_of_one_property_queue_up_so_overlaps_cannot_deadlock(seeded_db, pg_connect, api, act_as, admin):
    # Two uncommitted bookings of overlapping slots, each checking the exclusion
    # constraint against the other, would deadlock; so book_visit serialises a
    # property's bookings, even of slots far apart.
    first, later = slot_starts(admin, VILLA_789)[1], slot_starts(admin, VILLA_789)[-1]
    holder = pg_connect(seeded_db.dsn("authenticator"))
    holder.autocommit = False
    holder.execute("select set_config('role', 'service_role', true)")
    holder.execute(BOOK, (VILLA_789, first, FATOU))

    pid = api.info.backend_pid
    result = in_thread(lambda: book(api, act_as, VILLA_789, later, MOUSSA))
    wait_until_blocked(admin, pid)
    holder.commit()

    answer = result()
    assert not isinstance(answer, Exception), answer
    assert admin.execute("select count(*) from visits where property_id = %s", (VILLA_789,)).fetchone()[0] == 2
