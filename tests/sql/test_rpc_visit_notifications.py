"""cancel_visit's notifications to the owner are throttled: a book/cancel loop cannot flood an owner (issue 24, finding 6)."""

from __future__ import annotations

from datetime import timedelta

from tests.sql.demo import AWA, FATOU, MOUSSA, VILLA_789
from tests.sql.test_rpc_visits import add_slot, book, cancel, slot_starts


def owner_notes(admin, owner=AWA) -> list[tuple[str, str]]:
    return admin.execute("select data ->> 'visitor_id', data ->> 'property_id' from notifications "
                         "where user_id = %s and kind = 'visit_cancelled' order by id", (owner,)).fetchall()


def loop(api, act_as, admin, property_id, visitor, times, start=None):
    """Book one future slot of the property (its last, or `start`) and cancel it, `times` times: the attack."""
    start = start or slot_starts(admin, property_id)[-1]
    results = []
    for _ in range(times):
        visit = book(api, act_as, property_id, start, visitor)["visit"]
        results.append(cancel(api, act_as, visit["id"], visitor))
    return results


def test_a_book_and_cancel_loop_tells_the_owner_once_an_hour(api, act_as, admin):
    results = loop(api, act_as, admin, VILLA_789, FATOU, 20)
    assert [r["changed"] for r in results] == [True] * 20  # every visit is cancelled, the slot freed each time
    assert [r["notified"] for r in results] == [AWA] + [None] * 19
    assert owner_notes(admin) == [(FATOU, str(VILLA_789))]


def test_an_hour_later_the_owner_is_told_again(api, act_as, admin):
    loop(api, act_as, admin, VILLA_789, FATOU, 2)
    admin.execute("update notifications set created_at = now() - interval '61 minutes' where kind = 'visit_cancelled'")
    assert [r["notified"] for r in loop(api, act_as, admin, VILLA_789, FATOU, 2)] == [AWA, None]


def test_another_visitor_or_property_is_news_but_an_owner_gets_at_most_ten_an_hour(api, act_as, admin):
    # Many accounts or many listings of one owner: the per-owner cap holds whatever the pairs.
    properties = [row[0] for row in admin.execute(
        "select id from properties where owner_id = %s and status = 'published' order by id limit 6", (AWA,))]
    far = admin.execute("select date_trunc('hour', now()) + interval '20 days'").fetchone()[0]  # after any seeded slot
    told = []
    for n, property_id in enumerate(properties):
        add_slot(admin, property_id, far + timedelta(hours=n))
        for visitor in (FATOU, MOUSSA):
            told += [r["notified"] for r in loop(api, act_as, admin, property_id, visitor, 1, far + timedelta(hours=n))]
    assert told == [AWA] * 10 + [None] * 2
    assert len(owner_notes(admin)) == 10


def test_a_visitor_is_always_told_when_the_owner_cancels(api, act_as, admin):
    start = slot_starts(admin, VILLA_789)[-1]
    told = []
    for _ in range(3):
        visit = book(api, act_as, VILLA_789, start, FATOU)["visit"]
        told.append(cancel(api, act_as, visit["id"], AWA)["notified"])
    assert told == [FATOU] * 3
