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


# -- the per-visitor cap --------------------------------------------------------------------


def published(admin, n: int, but: tuple[int, ...] = ()) -> list[int]:
    rows = admin.execute("select id from properties where status = 'published' order by id").fetchall()
    return [r[0] for r in rows if r[0] not in but][:n]


def future_slot(admin, property_id, days=5, hour=9) -> datetime:
    starts_at = admin.execute("select date_trunc('hour', now()) + make_interval(days => %s, hours => %s)",
                              (days, hour)).fetchone()[0]
    add_slot(admin, property_id, starts_at)
    return starts_at


def test_a_visitor_books_at_most_three_future_visits_of_one_property(api, act_as, admin):
    starts = slot_starts(admin, VILLA_789)[1:5]
    for starts_at in starts[:3]:
        book(api, act_as, VILLA_789, starts_at, MOUSSA)
    assert book_error(api, act_as, VILLA_789, starts[3], MOUSSA) == "too_many_bookings"
    assert book(api, act_as, VILLA_789, starts[3], FATOU)["visit"]["visitor_id"] == FATOU  # others still can


def test_a_visitor_books_at_most_ten_future_visits_in_all(api, act_as, admin):
    targets = published(admin, 11, but=(MERMOZ_102,))
    slots = [(pid, future_slot(admin, pid)) for pid in targets]
    for pid, starts_at in slots[:10]:
        book(api, act_as, pid, starts_at, MOUSSA)
    assert book_error(api, act_as, *slots[10], MOUSSA) == "too_many_bookings"
    assert admin.execute("select count(*) from visits where visitor_id = %s", (MOUSSA,)).fetchone()[0] == 10


def test_cancelled_and_past_visits_do_not_count_against_the_cap(api, act_as, admin):
    starts = slot_starts(admin, VILLA_789)
    for starts_at in starts[1:4]:
        book(api, act_as, VILLA_789, starts_at, MOUSSA)
    admin.execute("update visits set status = 'cancelled' where visitor_id = %s and starts_at = %s", (MOUSSA, starts[1]))
    admin.execute(  # a visit that took place yesterday (written behind the RPC's back: it refuses the past)
        "insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at) select id, property_id, %s, starts_at, ends_at "
        "from visit_slots where property_id = %s and starts_at = %s", (MOUSSA, VILLA_789, starts[0]))
    assert book(api, act_as, VILLA_789, starts[4], MOUSSA)["visit"]["status"] == "booked"


def test_concurrent_bookings_of_one_account_cannot_pass_the_cap_together(api_conns, act_as, admin):
    targets = published(admin, 14, but=(MERMOZ_102,))
    slots = [(pid, future_slot(admin, pid)) for pid in targets]
    results = race(api_conns(len(slots)), lambda conn, i: book(conn, act_as, *slots[i], MOUSSA))
    refused = [raised_code(r) for r in results if isinstance(r, Exception)]
    assert refused == ["too_many_bookings"] * 4
    assert admin.execute("select count(*) from visits where visitor_id = %s and status = 'booked'", (MOUSSA,)).fetchone()[0] == 10


# -- cancel_visit ---------------------------------------------------------------------------

CANCEL = "select cancel_visit(%s, %s)"


def cancel(conn, act_as, visit_id, user):
    with act_as(conn, "service_role"):
        return conn.execute(CANCEL, (visit_id, user)).fetchone()[0]


def cancel_error(conn, act_as, visit_id, user) -> str | None:
    with pytest.raises(errors.RaiseException) as info:
        cancel(conn, act_as, visit_id, user)
    return raised_code(info.value)


def seeded_visit(admin) -> int:
    return admin.execute("select id from visits where visitor_id = %s", (FATOU,)).fetchone()[0]


def visit_notes(admin):
    return admin.execute("select user_id::text, kind, body from notifications where kind = 'visit_cancelled'").fetchall()


@pytest.mark.parametrize("who, told", [(FATOU, AWA), (AWA, FATOU)])  # the visitor, the property's owner
def test_the_visitor_or_the_owner_cancels_and_the_other_is_told(api, act_as, admin, who, told):
    visit_id = seeded_visit(admin)
    result = cancel(api, act_as, visit_id, who)
    assert (result["changed"], result["visit"]["status"], result["owner_id"], result["visitor_id"]) == (True, "cancelled", AWA, FATOU)
    assert result["notified"] == told
    notes = visit_notes(admin)
    assert [(user, kind) for user, kind, _ in notes] == [(told, "visit_cancelled")]
    assert "Mermoz" in notes[0][2] or "«" in notes[0][2]


def test_a_cancelled_slot_is_free_at_once(api, act_as, admin):
    before = len(free_slots(api, act_as, MERMOZ_102))
    cancel(api, act_as, seeded_visit(admin), FATOU)
    assert len(free_slots(api, act_as, MERMOZ_102)) == before + 1
    starts_at = slot_starts(admin, MERMOZ_102)[1]
    assert book(api, act_as, MERMOZ_102, starts_at, MOUSSA)["visit"]["visitor_id"] == MOUSSA


def test_cancelling_twice_changes_nothing_and_tells_nobody_twice(api, act_as, admin):
    visit_id = seeded_visit(admin)
    cancel(api, act_as, visit_id, FATOU)
    again = cancel(api, act_as, visit_id, AWA)
    assert (again["changed"], again["visit"]["status"], again["notified"]) == (False, "cancelled", None)
    assert len(visit_notes(admin)) == 1


@pytest.mark.parametrize("who", [MOUSSA, IBRAHIMA, None])  # another tenant, another owner, nobody
def test_a_stranger_cannot_cancel_nor_learn_that_the_visit_exists(api, act_as, admin, who):
    visit_id = seeded_visit(admin)
    assert cancel_error(api, act_as, visit_id, who) == "visit_not_found"
    assert cancel_error(api, act_as, 999_999, FATOU) == "visit_not_found"
    assert admin.execute("select status from visits where id = %s", (visit_id,)).fetchone()[0] == "booked"


def test_a_visit_that_has_started_cannot_be_cancelled(api, act_as, admin):
    visit_id = seeded_visit(admin)
    admin.execute("update visits set starts_at = now() - interval '10 minutes', ends_at = now() + interval '50 minutes' "
                  "where id = %s", (visit_id,))
    assert cancel_error(api, act_as, visit_id, FATOU) == "visit_started"
    assert admin.execute("select status from visits where id = %s", (visit_id,)).fetchone()[0] == "booked"


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_only_the_server_may_cancel(api, act_as, admin, role):
    with pytest.raises(errors.InsufficientPrivilege), act_as(api, role, sub=FATOU):
        api.execute(CANCEL, (seeded_visit(admin), FATOU))


# -- user_visits ----------------------------------------------------------------------------


def my_visits(as_user_conn, act_as, user):
    with act_as(as_user_conn, "authenticated", sub=user):
        return [dict(zip(("id", "property_id", "property_title", "visitor_id", "role", "starts_at", "status"), r, strict=True))
                for r in as_user_conn.execute(
                    "select id, property_id, property_title, visitor_id::text, role, starts_at, status from user_visits()")]


def test_a_user_sees_their_visits_as_visitor_and_the_owner_sees_them_too(api, act_as, admin):
    fatou = my_visits(api, act_as, FATOU)
    awa = my_visits(api, act_as, AWA)
    assert [(v["property_id"], v["role"]) for v in fatou] == [(MERMOZ_102, "visitor")]
    assert [(v["property_id"], v["role"], v["visitor_id"]) for v in awa] == [(MERMOZ_102, "owner", FATOU)]
    assert fatou[0]["property_title"]
    assert my_visits(api, act_as, IBRAHIMA) == [] and my_visits(api, act_as, MOUSSA) == []


def test_upcoming_visits_come_first_soonest_first_then_the_others(api, act_as, admin):
    starts = slot_starts(admin, VILLA_789)
    for starts_at in (starts[3], starts[1]):
        book(api, act_as, VILLA_789, starts_at, MOUSSA)
    admin.execute(
        "insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at) select id, property_id, %s, starts_at, ends_at "
        "from visit_slots where property_id = %s and starts_at = %s", (MOUSSA, VILLA_789, starts[0]))  # past
    cancelled = book(api, act_as, VILLA_789, starts[5], MOUSSA)["visit"]["id"]
    cancel(api, act_as, cancelled, MOUSSA)
    seen = [(v["starts_at"], v["status"]) for v in my_visits(api, act_as, MOUSSA)]
    assert seen == [(starts[1], "booked"), (starts[3], "booked"), (starts[5], "cancelled"), (starts[0], "booked")]


def test_anon_cannot_list_visits(api, act_as):
    with pytest.raises(errors.InsufficientPrivilege), act_as(api, "anon"):
        api.execute("select * from user_visits()")
