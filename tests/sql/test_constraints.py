"""The schema's own guarantees: what no code path (RPC, service_role, a bug) can write."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from devstack.postgres import apply_schema, schema_files
from tests.sql.demo import AWA, FATOU, LEASE_123, MERMOZ_102, MOUSSA, VILLA_789
from tests.sql.helpers import race
from tests.support import api_module

ROOT = Path(__file__).resolve().parents[2]
INSERT_PAYMENT = "insert into rental_payments (lease_id, period, amount, status, paid_at) values (%s, %s, 50000, %s, %s)"


def insert_payment(conn: psycopg.Connection, period: str, status: str, lease_id: int = LEASE_123) -> None:
    paid_at = "2026-01-05T10:00:00Z" if status == "completed" else None
    conn.execute(INSERT_PAYMENT, (lease_id, period, status, paid_at))


def new_slot(admin: psycopg.Connection, property_id: int, starts: str, ends: str) -> int:
    return admin.execute(
        "insert into visit_slots (property_id, starts_at, ends_at) values (%s, %s, %s) returning id",
        (property_id, starts, ends),
    ).fetchone()[0]


def insert_visit(conn: psycopg.Connection, slot_id: int, visitor: str, status: str = "booked") -> int:
    return conn.execute(
        """
        insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at, status)
        select id, property_id, %s, starts_at, ends_at, %s from visit_slots where id = %s
        returning id
        """,
        (visitor, status, slot_id),
    ).fetchone()[0]


# -- payments: one open attempt and one completed payment per lease and month -------------


@pytest.mark.parametrize("status", ["pending", "completed"])
def test_a_lease_month_holds_only_one_payment_in_each_fenced_status(admin, status):
    insert_payment(admin, "2030-01", status)
    with pytest.raises(errors.UniqueViolation):
        insert_payment(admin, "2030-01", status)


@pytest.mark.parametrize(
    "first, second",
    [
        ("failed", "pending"),  # a failed checkout may be retried
        ("cancelled", "pending"),  # so may a cancelled one
        ("failed", "failed"),  # history of attempts is kept
        ("pending", "completed"),  # the open attempt and the completed one are different fences
    ],
)
def test_history_rows_do_not_block_a_new_attempt(admin, first, second):
    insert_payment(admin, "2030-01", first)
    insert_payment(admin, "2030-01", second)
    assert admin.execute("select count(*) from rental_payments where period = '2030-01'").fetchone()[0] == 2


def test_the_payment_fence_is_per_lease_and_per_month(admin):
    admin.execute(
        "insert into leases (id, property_id, tenant_id, monthly_rent, status, starts_on) values (900, 789, %s, 1200000, 'active', '2030-01-01')",
        (FATOU,),
    )
    insert_payment(admin, "2030-01", "pending")
    insert_payment(admin, "2030-02", "pending")  # another month
    insert_payment(admin, "2030-01", "pending", lease_id=900)  # another lease
    pending = admin.execute("select lease_id, period from rental_payments where status = 'pending' order by 1, 2").fetchall()
    assert pending == [(LEASE_123, "2030-01"), (LEASE_123, "2030-02"), (900, "2030-01")]


@pytest.mark.parametrize("period", ["2030-13", "2030-00", "30-01", "2030-1", "2030-01-01", "2030/01", ""])
def test_a_payment_period_is_a_calendar_month(admin, period):
    with pytest.raises(errors.CheckViolation):
        insert_payment(admin, period, "pending")


@pytest.mark.parametrize(
    "statement",
    [
        # properties: whole positive XOF, known type and status, no negative bedrooms
        "insert into properties (owner_id, title, city, type, price) values ('{awa}', 'T', 'Dakar', 'apartment', 0)",
        "insert into properties (owner_id, title, city, type, price, currency) values ('{awa}', 'T', 'Dakar', 'apartment', 1000, 'EUR')",
        "insert into properties (owner_id, title, city, type, price) values ('{awa}', 'T', 'Dakar', 'castle', 1000)",
        "insert into properties (owner_id, title, city, type, price, status) values ('{awa}', 'T', 'Dakar', 'villa', 1000, 'sold')",
        "insert into properties (owner_id, title, city, type, price, bedrooms) values ('{awa}', 'T', 'Dakar', 'villa', 1000, -1)",
        "insert into properties (owner_id, title, city, type, price) values ('{awa}', '  ', 'Dakar', 'villa', 1000)",
        # leases: positive rent, known status, does not end before it starts
        "insert into leases (property_id, tenant_id, monthly_rent, status, starts_on) values (789, '{fatou}', 0, 'pending', '2030-01-01')",
        "insert into leases (property_id, tenant_id, monthly_rent, status, starts_on) values (789, '{fatou}', 1000, 'signed', '2030-01-01')",
        "insert into leases (property_id, tenant_id, monthly_rent, starts_on, ends_on) values (789, '{fatou}', 1000, '2030-01-01', '2029-12-31')",
        # payments: positive XOF amount, known status, a completed payment says when
        "insert into rental_payments (lease_id, period, amount) values (123, '2030-01', -5)",
        "insert into rental_payments (lease_id, period, amount, currency) values (123, '2030-01', 5, 'USD')",
        "insert into rental_payments (lease_id, period, amount, status) values (123, '2030-01', 5, 'refunded')",
        "insert into rental_payments (lease_id, period, amount, status) values (123, '2030-01', 5, 'completed')",
        # profiles: only the two roles
        "update profiles set role = 'admin' where id = '{fatou}'",
        # slots end after they start
        "insert into visit_slots (property_id, starts_at, ends_at) values (789, '2030-01-01 10:00Z', '2030-01-01 10:00Z')",
    ],
)
def test_check_constraints_reject_impossible_rows(admin, statement):
    with pytest.raises(errors.CheckViolation):
        admin.execute(statement.format(awa=AWA, fatou=FATOU))


def test_a_property_has_one_active_lease_at_a_time(admin):
    with pytest.raises(errors.UniqueViolation):
        admin.execute(
            "insert into leases (property_id, tenant_id, monthly_rent, status, starts_on) values (123, %s, 60000, 'active', '2030-01-01')",
            (FATOU,),
        )


def test_the_payment_fences_hold_between_racing_transactions(seeded_db, pg_connect):
    # Two writers that skip every lock (as a buggy client or a stale Redis lock would):
    # the partial unique index lets exactly one pending row in.
    conns = [pg_connect(seeded_db.dsn()) for _ in range(2)]

    def insert(conn, _):
        with conn.transaction():
            insert_payment(conn, "2030-01", "pending")
        return "inserted"

    results = race(conns, insert)
    assert results.count("inserted") == 1
    assert [type(r) for r in results if r != "inserted"] == [errors.UniqueViolation]
    assert conns[0].execute("select count(*) from rental_payments where period = '2030-01'").fetchone()[0] == 1


# -- visits: a slot once, a property one visit at a time ----------------------------------


def test_a_slot_holds_only_one_booked_visit(admin):
    slot = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    insert_visit(admin, slot, FATOU)
    with pytest.raises(errors.UniqueViolation):
        insert_visit(admin, slot, MOUSSA)


def test_a_cancelled_visit_frees_its_slot(admin):
    slot = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    first = insert_visit(admin, slot, FATOU)
    admin.execute("update visits set status = 'cancelled' where id = %s", (first,))
    second = insert_visit(admin, slot, MOUSSA)
    rows = admin.execute("select id, visitor_id::text, status from visits where slot_id = %s order by id", (slot,)).fetchall()
    assert rows == [(first, FATOU, "cancelled"), (second, MOUSSA, "booked")]  # the history stays


@pytest.mark.parametrize(
    "other_slot, allowed",
    [
        (("2030-01-01 10:30Z", "2030-01-01 11:30Z"), False),  # starts inside the booked hour
        (("2030-01-01 09:30Z", "2030-01-01 10:30Z"), False),  # ends inside it
        (("2030-01-01 09:00Z", "2030-01-01 12:00Z"), False),  # covers it
        (("2030-01-01 11:00Z", "2030-01-01 12:00Z"), True),  # back to back after
        (("2030-01-01 09:00Z", "2030-01-01 10:00Z"), True),  # back to back before
    ],
)
def test_booked_visits_of_one_property_may_not_overlap(admin, other_slot, allowed):
    booked = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    other = new_slot(admin, VILLA_789, *other_slot)
    insert_visit(admin, booked, FATOU)
    if allowed:
        insert_visit(admin, other, MOUSSA)
        both = admin.execute("select count(*) from visits where status = 'booked' and slot_id in (%s, %s)", (booked, other))
        assert both.fetchone()[0] == 2
    else:
        with pytest.raises(errors.ExclusionViolation):
            insert_visit(admin, other, MOUSSA)


def test_overlapping_visits_of_different_properties_are_fine(admin):
    here = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    there = new_slot(admin, MERMOZ_102, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    visits = [insert_visit(admin, here, FATOU), insert_visit(admin, there, FATOU)]
    rows = admin.execute("select property_id, status from visits where id = any(%s) order by property_id", (visits,)).fetchall()
    assert rows == [(MERMOZ_102, "booked"), (VILLA_789, "booked")]


def test_an_overlapping_cancelled_visit_does_not_count(admin):
    booked = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    other = new_slot(admin, VILLA_789, "2030-01-01 10:30Z", "2030-01-01 11:30Z")
    cancelled = insert_visit(admin, booked, FATOU, status="cancelled")
    taken = insert_visit(admin, other, MOUSSA)
    rows = admin.execute("select id, status from visits where id in (%s, %s) order by id", (cancelled, taken)).fetchall()
    assert rows == [(cancelled, "cancelled"), (taken, "booked")]


def test_a_visit_belongs_to_its_slots_property(admin):
    slot = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    with pytest.raises(errors.ForeignKeyViolation):
        admin.execute(
            "insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at) values (%s, 102, %s, '2030-01-01 10:00Z', '2030-01-01 11:00Z')",
            (slot, FATOU),
        )


def test_a_slot_with_a_booking_cannot_be_deleted(admin):
    slot = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    insert_visit(admin, slot, FATOU)
    with pytest.raises(errors.ForeignKeyViolation):
        admin.execute("delete from visit_slots where id = %s", (slot,))


def test_a_property_has_one_slot_per_start_time(admin):
    new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    with pytest.raises(errors.UniqueViolation):
        new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 10:30Z")


@pytest.mark.parametrize(
    "second_slot, error",
    [
        (None, (errors.UniqueViolation,)),  # both book the same slot
        # Overlapping slots: raw concurrent inserts under an exclusion constraint may also end in a
        # deadlock, which aborts the loser just the same (book_visit avoids it with a row lock).
        (("2030-01-01 10:30Z", "2030-01-01 11:30Z"), (errors.ExclusionViolation, errors.DeadlockDetected)),
    ],
)
def test_the_visit_fences_hold_between_racing_transactions(seeded_db, pg_connect, admin, second_slot, error):
    first = new_slot(admin, VILLA_789, "2030-01-01 10:00Z", "2030-01-01 11:00Z")
    second = new_slot(admin, VILLA_789, *second_slot) if second_slot else first
    conns = [pg_connect(seeded_db.dsn()) for _ in range(2)]

    def book(conn, i):
        with conn.transaction():
            insert_visit(conn, (first, second)[i], (FATOU, MOUSSA)[i])
        return "booked"

    results = race(conns, book)
    assert results.count("booked") == 1
    losers = [r for r in results if r != "booked"]
    assert len(losers) == 1 and isinstance(losers[0], error), losers
    assert admin.execute("select count(*) from visits where status = 'booked' and property_id = 789").fetchone()[0] == 1


# -- the API's limits, held by the database too (20261202000010_hardening.sql) -------------------


def request_model(relative: str, name: str) -> Any:
    """A request model of an api/ file (file routing names like `[id].py` are not importable)."""
    return getattr(api_module(relative), name)


def limits(model: Any) -> dict[str, dict[str, Any]]:
    """`{"title": {"min_length": 3, "max_length": 200}, "price": {"gt": 0, "le": 1000000000}, ...}`."""
    found: dict[str, dict[str, Any]] = {}
    for name, info in model.model_fields.items():
        for item in info.metadata:
            for bound in ("min_length", "max_length", "gt", "ge", "le", "pattern"):
                if getattr(item, bound, None) is not None:
                    found.setdefault(name, {})[bound] = getattr(item, bound)
    return found


PROPERTY_LIMITS = limits(request_model("api/properties/[id].py", "PropertyChanges"))
PROFILE_LIMITS = limits(request_model("api/profile.py", "ProfileChanges"))


def edges(limited: dict[str, dict[str, Any]]) -> list[Any]:
    """For each column, a value at each bound the API allows (True) and one just past it (False)."""
    cases = []
    for column, bounds in sorted(limited.items()):
        if "max_length" in bounds:
            cases += [(column, "é" * bounds["max_length"], True, "max"), (column, "é" * (bounds["max_length"] + 1), False, "max+1")]
        if bounds.get("min_length", 0) > 1:
            cases += [(column, "é" * bounds["min_length"], True, "min"), (column, "é" * (bounds["min_length"] - 1), False, "min-1")]
        if "le" in bounds:
            cases += [(column, bounds["le"], True, "max"), (column, bounds["le"] + 1, False, "max+1")]
    return [pytest.param(column, value, allowed, id=f"{column}-{label}") for column, value, allowed, label in cases]


@pytest.mark.parametrize("column, value, allowed", edges(PROPERTY_LIMITS))
def test_a_property_column_takes_exactly_what_the_api_accepts(as_user, admin, column, value, allowed):
    if allowed:
        with as_user(AWA) as conn:
            assert conn.execute(f"update properties set {column} = %s where id = %s", (value, VILLA_789)).rowcount == 1
        assert admin.execute(f"select {column} from properties where id = %s", (VILLA_789,)).fetchone()[0] == value
    else:
        with pytest.raises(errors.CheckViolation), as_user(AWA) as conn:
            conn.execute(f"update properties set {column} = %s where id = %s", (value, VILLA_789))


def test_every_limited_property_field_is_covered():
    assert {"title", "description", "city", "district", "price", "bedrooms"} <= set(PROPERTY_LIMITS)


@pytest.mark.parametrize("column, value, allowed", edges(PROFILE_LIMITS) + [
    ("phone", "+221 77 123 45 67", True),
    ("phone", "221771234567", True),  # as GoTrue stores a phone sign-up's number
    ("phone", "appelez-moi", False),
    ("phone", "+" + "7" * 21, False),
    ("phone", "77 12", False),
])
def test_a_profile_column_takes_exactly_what_the_api_accepts(as_user, admin, column, value, allowed):
    if allowed:
        with as_user(FATOU) as conn:
            assert conn.execute(f"update profiles set {column} = %s where id = %s", (value, FATOU)).rowcount == 1
    else:
        with pytest.raises(errors.CheckViolation), as_user(FATOU) as conn:
            conn.execute(f"update profiles set {column} = %s where id = %s", (value, FATOU))


def test_the_migration_applies_over_rows_that_break_a_limit_and_still_checks_new_writes(pg_cluster, pg_connect):
    # A deployed database where the web app already wrote past the API's limits.
    hardening = ROOT / "supabase" / "migrations" / "20261202000010_hardening.sql"
    name = f"test_legacy_{uuid.uuid4().hex[:8]}"
    dsn = pg_cluster.create_database(name)
    try:
        apply_schema(dsn, files=[path for path in schema_files() if path != hardening])
        admin = pg_connect(dsn)
        admin.execute("update profiles set full_name = %s where id = %s", ("é" * 2040, MOUSSA))
        admin.execute("update properties set price = 2000000000 where id = 789")  # 2 billion XOF

        apply_schema(dsn, files=[hardening])

        validated = dict(admin.execute("select conname, convalidated from pg_constraint where conname in"
                                       " ('profiles_full_name_length', 'properties_price_range', 'properties_title_length')"))
        assert validated == {"profiles_full_name_length": False, "properties_price_range": False,
                             "properties_title_length": True}
        with pytest.raises(errors.CheckViolation):
            admin.execute("update profiles set full_name = %s where id = %s", ("é" * 121, FATOU))
        admin.execute("update profiles set full_name = 'Moussa Diop' where id = %s", (MOUSSA,))  # the fix an operator runs
        admin.execute("alter table profiles validate constraint profiles_full_name_length")
    finally:
        pg_cluster.drop_database(name)


def test_the_database_phone_pattern_is_the_apis():
    migration = (ROOT / "supabase" / "migrations" / "20261202000010_hardening.sql").read_text()
    assert f"phone ~ '{PROFILE_LIMITS['phone']['pattern']}'" in migration


@pytest.mark.parametrize("column, value", [("title", "é" * 201), ("body", "é" * 1001), ("kind", ""), ("kind", "k" * 41)])
def test_notification_texts_are_bounded_whoever_writes_them(admin, column, value):
    with pytest.raises(errors.CheckViolation):
        admin.execute(f"update notifications set {column} = %s where user_id = %s", (value, MOUSSA))


@pytest.mark.parametrize("metadata, name, phone", [
    ({"full_name": "é" * 2040, "phone": "+221 77 000 00 00"}, "é" * 120, "+221 77 000 00 00"),  # cut, not refused
    ({"full_name": "A", "phone": "appelez-moi"}, None, None),  # too short, not a number: left empty
    ({"full_name": "  Aminata Ba  "}, "Aminata Ba", None),
])
def test_signing_up_keeps_the_profile_within_the_limits_rather_than_failing(admin, metadata, name, phone):
    user_id = admin.execute(
        "insert into auth.users (email, raw_user_meta_data) values ('aminata@example.sn', %s) returning id",
        (json.dumps(metadata),),
    ).fetchone()[0]
    assert admin.execute("select full_name, phone from profiles where id = %s", (user_id,)).fetchone() == (name, phone)


def test_a_confirmed_payment_notifies_within_the_limits_with_the_longest_names(admin, as_service, periods):
    # The longest name and title the API accepts, copied into both notifications by confirm_payment.
    admin.execute("update profiles set full_name = %s where id = %s", ("é" * 120, MOUSSA))
    admin.execute("update properties set title = %s where id = 123", ("é" * 200,))
    admin.execute("insert into rental_payments (lease_id, period, amount, provider_token) values (123, %s, 50000, 'tok-long')",
                  (periods.current,))
    with as_service() as conn:
        result = conn.execute("select confirm_payment('tok-long', 'completed', 50000)").fetchone()[0]
    assert result["changed"] is True
    bodies = admin.execute("select body from notifications where data ->> 'period' = %s", (periods.current,)).fetchall()
    assert len(bodies) == 2 and all(len(body) <= 1000 for (body,) in bodies)


# -- triggers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata, role",
    [
        ('{"full_name": "Aminata Ba", "role": "owner"}', "owner"),  # landlords sign up as owners
        ('{"full_name": "Aminata Ba", "role": "tenant"}', "tenant"),
        ('{"full_name": "Aminata Ba", "role": "admin"}', "tenant"),  # unknown roles fall back
        ('{"full_name": "Aminata Ba"}', "tenant"),  # the default
    ],
)
def test_signing_up_creates_the_profile(admin, metadata, role):
    user_id = admin.execute(
        "insert into auth.users (email, raw_user_meta_data) values ('aminata@example.sn', %s) returning id",
        (metadata,),
    ).fetchone()[0]
    profile = admin.execute("select email, full_name, role from profiles where id = %s", (user_id,)).fetchone()
    assert profile == ("aminata@example.sn", "Aminata Ba", role)


def test_a_changed_email_reaches_the_profile(admin):
    admin.execute("update auth.users set email = 'fatou.sarr@example.com' where id = %s", (FATOU,))
    assert admin.execute("select email from profiles where id = %s", (FATOU,)).fetchone()[0] == "fatou.sarr@example.com"


def test_deleting_an_auth_user_deletes_the_profile(admin):
    user_id = admin.execute("insert into auth.users (email) values ('temp@example.sn') returning id").fetchone()[0]
    admin.execute("delete from auth.users where id = %s", (user_id,))
    assert admin.execute("select count(*) from profiles where id = %s", (user_id,)).fetchone()[0] == 0


@pytest.mark.parametrize(
    "table, row_id",
    [("profiles", f"'{AWA}'"), ("properties", "789"), ("leases", "123"), ("rental_payments", "1"), ("visit_slots", "1"), ("visits", "1")],
)
def test_updates_stamp_updated_at_whatever_the_writer_says(admin, table, row_id):
    admin.execute(f"update {table} set updated_at = '2000-01-01' where id = {row_id}")
    stamped = admin.execute(f"select updated_at > now() - interval '1 minute' from {table} where id = {row_id}").fetchone()[0]
    assert stamped
