"""Row level security and privileges, seen as PostgREST sees them: authenticator switching to a role with claims."""

from __future__ import annotations

import pytest
from psycopg import errors

from tests.sql.demo import (
    ALL_PROPERTIES,
    AWA,
    AWA_UNPUBLISHED,
    FATOU,
    IBRAHIMA,
    IBRAHIMA_DRAFTS,
    LEASE_123,
    LEASE_124,
    MOUSSA,
    PROPERTY_123,
    PUBLISHED,
    PUBLISHED_BY_CITY,
    THIES_201,
    VILLA_789,
)

# -- properties -----------------------------------------------------------------------------


def test_anon_sees_only_published_properties(as_anon):
    with as_anon() as conn:
        rows = conn.execute("select status, count(*) from properties group by status").fetchall()
    assert rows == [("published", PUBLISHED)]


def test_anon_can_filter_published_properties_by_city_case_insensitively(as_anon):
    with as_anon() as conn:
        counts = {
            city: conn.execute("select count(*) from properties where lower(city) = lower(%s)", (city.upper(),)).fetchone()[0]
            for city in PUBLISHED_BY_CITY
        }
    assert counts == PUBLISHED_BY_CITY


@pytest.mark.parametrize(
    "user, own_unpublished",
    [
        (AWA, set(AWA_UNPUBLISHED)),  # her drafts and the archived one
        (IBRAHIMA, IBRAHIMA_DRAFTS),
        (FATOU, set()),  # a tenant owns nothing
    ],
)
def test_a_user_sees_published_properties_and_their_own_unpublished_ones(as_user, user, own_unpublished):
    with as_user(user) as conn:
        unpublished = {r[0] for r in conn.execute("select id from properties where status <> 'published'")}
        total = conn.execute("select count(*) from properties").fetchone()[0]
    assert unpublished == own_unpublished
    assert total == PUBLISHED + len(own_unpublished)


def test_the_superuser_sees_every_property(admin):
    assert admin.execute("select count(*) from properties").fetchone()[0] == ALL_PROPERTIES


def test_an_owner_cannot_read_another_owners_draft(as_user):
    with as_user(AWA) as conn:
        assert conn.execute("select * from properties where id = any(%s)", (list(IBRAHIMA_DRAFTS),)).fetchall() == []


@pytest.mark.parametrize("property_id", [THIES_201, 210], ids=["published", "draft"])
def test_an_owner_cannot_update_or_delete_another_owners_property(as_user, admin, property_id):
    before = admin.execute("select title, status from properties where id = %s", (property_id,)).fetchone()
    with as_user(AWA) as conn:
        assert conn.execute("update properties set title = 'Piraté' where id = %s", (property_id,)).rowcount == 0
        assert conn.execute("delete from properties where id = %s", (property_id,)).rowcount == 0
    assert admin.execute("select title, status from properties where id = %s", (property_id,)).fetchone() == before


def test_an_owner_updates_their_own_property(as_user, admin):
    with as_user(AWA) as conn:
        assert conn.execute("update properties set price = 1300000 where id = %s", (VILLA_789,)).rowcount == 1
    assert admin.execute("select price from properties where id = %s", (VILLA_789,)).fetchone()[0] == 1_300_000


def test_an_owner_cannot_give_a_property_away(as_user, admin):
    # owner_id has no UPDATE privilege (20261202000010_hardening.sql); RLS's WITH CHECK is the second fence.
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"), as_user(AWA) as conn:
        conn.execute("update properties set owner_id = %s where id = %s", (IBRAHIMA, VILLA_789))
    assert admin.execute("select owner_id::text from properties where id = %s", (VILLA_789,)).fetchone()[0] == AWA


def test_an_owner_lists_a_property_in_their_own_name(as_user):
    with as_user(AWA) as conn:
        row = conn.execute(
            "insert into properties (owner_id, title, city, type, price) values (%s, 'Studio à Yoff', 'Dakar', 'studio', 90000) returning id, status",
            (AWA,),
        ).fetchone()
    assert row[0] > VILLA_789  # the identity sequence was moved past the seeded ids
    assert row[1] == "draft"


@pytest.mark.parametrize(
    "user, owner_id",
    [
        (AWA, IBRAHIMA),  # an owner, in someone else's name
        (FATOU, FATOU),  # a tenant, in her own name
    ],
)
def test_nobody_lists_a_property_they_may_not(as_user, user, owner_id):
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"), as_user(user) as conn:
        conn.execute(
            "insert into properties (owner_id, title, city, type, price) values (%s, 'T', 'Dakar', 'studio', 90000)", (owner_id,)
        )


def test_an_owner_deletes_their_own_draft(as_user, admin):
    with as_user(AWA) as conn:
        assert conn.execute("delete from properties where id = 117").rowcount == 1
    assert admin.execute("select count(*) from properties where id = 117").fetchone()[0] == 0


@pytest.mark.parametrize(
    "statement",
    [
        "insert into properties (owner_id, title, city, type, price) values ('{awa}', 'T', 'Dakar', 'studio', 1000)",
        "update properties set title = 'Piraté' where id = 789",
        "delete from properties where id = 789",
    ],
)
def test_anon_cannot_write_properties(as_anon, admin, statement):
    try:
        with as_anon() as conn:
            rowcount = conn.execute(statement.format(awa=AWA)).rowcount
    except errors.InsufficientPrivilege:
        rowcount = 0
    assert rowcount == 0
    assert admin.execute("select count(*), max(title) from properties where id = 789").fetchone() == (1, "Villa 4 chambres avec piscine aux Almadies")
    assert admin.execute("select count(*) from properties").fetchone()[0] == ALL_PROPERTIES


# -- profiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("user", [AWA, IBRAHIMA, MOUSSA, FATOU])
def test_a_user_reads_only_their_own_profile(as_user, user):
    with as_user(user) as conn:
        assert [r[0] for r in conn.execute("select id::text from profiles")] == [user]


def test_anon_reads_no_profile(as_anon):
    with as_anon() as conn:
        assert conn.execute("select count(*) from profiles").fetchone()[0] == 0


def test_a_user_updates_their_name_and_phone(as_user, admin):
    with as_user(FATOU) as conn:
        assert conn.execute("update profiles set full_name = 'Fatou Sarr Diallo', phone = '+221700000000' where id = %s", (FATOU,)).rowcount == 1
    assert admin.execute("select full_name, phone from profiles where id = %s", (FATOU,)).fetchone() == ("Fatou Sarr Diallo", "+221700000000")


def test_a_user_cannot_update_someone_elses_profile(as_user, admin):
    with as_user(FATOU) as conn:
        assert conn.execute("update profiles set full_name = 'X' where id = %s", (MOUSSA,)).rowcount == 0
    assert admin.execute("select full_name from profiles where id = %s", (MOUSSA,)).fetchone()[0] == "Moussa Diop"


@pytest.mark.parametrize("column, value", [("role", "owner"), ("email", "x@example.sn"), ("id", AWA)])
def test_a_user_cannot_change_their_role_email_or_id(as_user, admin, column, value):
    with pytest.raises(errors.InsufficientPrivilege), as_user(FATOU) as conn:
        conn.execute(f"update profiles set {column} = %s where id = %s", (value, FATOU))
    assert admin.execute("select role, email from profiles where id = %s", (FATOU,)).fetchone() == ("tenant", "fatou.sarr@example.sn")


def test_a_user_cannot_create_or_delete_profiles(as_user):
    with pytest.raises(errors.InsufficientPrivilege), as_user(FATOU) as conn:
        conn.execute("delete from profiles where id = %s", (FATOU,))
    with pytest.raises(errors.InsufficientPrivilege), as_user(FATOU) as conn:
        conn.execute("insert into profiles (id, role) values (%s, 'owner')", (FATOU,))


# -- leases and payments: the parties only --------------------------------------------------


@pytest.mark.parametrize(
    "user, leases",
    [
        (MOUSSA, {LEASE_123, LEASE_124}),  # the tenant: current and ended lease
        (FATOU, set()),  # another tenant: none
        (AWA, {LEASE_123}),  # owner of property 123
        (IBRAHIMA, {LEASE_124}),  # owner of property 202
    ],
)
def test_leases_are_visible_to_their_tenant_and_their_owner_only(as_user, user, leases):
    with as_user(user) as conn:
        assert {r[0] for r in conn.execute("select id from leases")} == leases


@pytest.mark.parametrize(
    "user, lease_ids",
    [
        (MOUSSA, [LEASE_124, LEASE_123, LEASE_123]),  # the tenant sees all his payments
        (FATOU, []),  # another tenant sees none
        (AWA, [LEASE_123, LEASE_123]),  # the owner sees those of her lease
        (IBRAHIMA, [LEASE_124]),
    ],
)
def test_payments_are_visible_to_the_parties_of_their_lease_only(as_user, user, lease_ids):
    with as_user(user) as conn:
        assert [r[0] for r in conn.execute("select lease_id from rental_payments order by period")] == lease_ids


def test_anon_sees_no_lease_and_no_payment(as_anon):
    with as_anon() as conn:
        assert conn.execute("select (select count(*) from leases), (select count(*) from rental_payments)").fetchone() == (0, 0)


def test_a_tenant_still_sees_lease_and_payments_of_an_archived_property(as_user, admin):
    # The tenant's path must not depend on reading the property (RLS hides archived ones).
    admin.execute("update properties set status = 'archived' where id = %s", (PROPERTY_123,))
    with as_user(MOUSSA) as conn:
        assert conn.execute("select count(*) from leases where id = %s", (LEASE_123,)).fetchone()[0] == 1
        assert conn.execute("select count(*) from rental_payments where lease_id = %s", (LEASE_123,)).fetchone()[0] == 2


WRITES_CLIENTS_MAY_NOT_DO = [
    # payments are written by service_role RPCs only
    "insert into rental_payments (lease_id, period, amount) values (123, '2030-01', 50000)",
    "update rental_payments set status = 'completed', paid_at = now() where lease_id = 123",
    "delete from rental_payments where lease_id = 123",
    # leases are managed by the server
    "insert into leases (property_id, tenant_id, monthly_rent, status, starts_on) values (789, '{me}', 1, 'active', '2030-01-01')",
    "update leases set monthly_rent = 1 where id = 123",
    "delete from leases where id = 124",
    # visits go through book_visit
    "insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at) select id, property_id, '{me}', starts_at, ends_at from visit_slots where property_id = 789 limit 1",
    "update visits set status = 'cancelled'",
    "delete from visits",
    # notifications come from the server; users only mark them read
    "insert into notifications (user_id, kind, title) values ('{me}', 'x', 'x')",
    "update notifications set title = 'x'",
    "delete from notifications",
    # TRUNCATE ignores RLS: nobody but the server has it
    "truncate rental_payments cascade",
    "truncate properties cascade",
]


@pytest.mark.parametrize("user", [MOUSSA, AWA], ids=["tenant", "owner"])
@pytest.mark.parametrize("statement", WRITES_CLIENTS_MAY_NOT_DO)
def test_signed_in_users_cannot_write_money_bookings_or_notifications(as_user, admin, user, statement):
    snapshot = "select (select count(*) from rental_payments), (select count(*) from leases), (select count(*) from visits), (select count(*) from notifications), (select count(*) from properties), (select string_agg(status || monthly_rent, ',' order by id) from leases), (select string_agg(status, ',' order by id) from rental_payments), (select string_agg(status, ',' order by id) from visits)"
    before = admin.execute(snapshot).fetchone()
    with pytest.raises(errors.InsufficientPrivilege), as_user(user) as conn:
        conn.execute(statement.format(me=user))
    assert admin.execute(snapshot).fetchone() == before


@pytest.mark.parametrize(
    "statement",
    [
        "insert into rental_payments (lease_id, period, amount) values (123, '2030-01', 50000)",
        "update rental_payments set status = 'failed'",
        "insert into visits (slot_id, property_id, visitor_id, starts_at, ends_at) select id, property_id, '{fatou}', starts_at, ends_at from visit_slots where property_id = 789 limit 1",
        "update leases set status = 'ended'",
        "update profiles set role = 'owner'",
        "insert into notifications (user_id, kind, title) values ('{fatou}', 'x', 'x')",
    ],
)
def test_anon_cannot_write_anything_private(as_anon, statement):
    with pytest.raises(errors.InsufficientPrivilege), as_anon() as conn:
        conn.execute(statement.format(fatou=FATOU))


def test_service_role_writes_payments_directly(as_service, admin):
    # The API stores the PayDunya token and checkout URL on the reserved row this way.
    with as_service() as conn:
        assert conn.execute("update rental_payments set checkout_url = 'https://x' where lease_id = 123").rowcount == 2
    assert admin.execute("select count(*) from rental_payments where checkout_url = 'https://x'").fetchone()[0] == 2


# -- visits and slots -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "user, visible",
    [
        (FATOU, 1),  # the visitor
        (AWA, 1),  # the owner of property 102
        (IBRAHIMA, 0),  # another owner
        (MOUSSA, 0),  # another user
    ],
)
def test_a_visit_is_visible_to_its_visitor_and_the_propertys_owner(as_user, user, visible):
    with as_user(user) as conn:
        assert conn.execute("select count(*) from visits").fetchone()[0] == visible


def test_anon_sees_no_visit(as_anon):
    with as_anon() as conn:
        assert conn.execute("select count(*) from visits").fetchone()[0] == 0


def test_anon_sees_slots_of_published_properties_only(as_anon, admin):
    admin.execute("insert into visit_slots (property_id, starts_at, ends_at) values (117, '2030-01-01 10:00Z', '2030-01-01 11:00Z')")
    with as_anon() as conn:
        properties = {r[0] for r in conn.execute("select distinct property_id from visit_slots")}
    assert properties == {VILLA_789, 102, THIES_201}


def test_an_owner_manages_slots_of_their_properties(as_user, admin):
    with as_user(AWA) as conn:
        conn.execute("insert into visit_slots (property_id, starts_at, ends_at) values (117, '2030-01-01 10:00Z', '2030-01-01 11:00Z')")
        assert conn.execute("select count(*) from visit_slots where property_id = 117").fetchone()[0] == 1  # a draft's too
        assert conn.execute("update visit_slots set ends_at = ends_at + interval '30 minutes' where property_id = 117").rowcount == 1
        assert conn.execute("delete from visit_slots where property_id = 117").rowcount == 1
    assert admin.execute("select count(*) from visit_slots where property_id = 117").fetchone()[0] == 0


def test_an_owner_cannot_manage_slots_of_another_owners_property(as_user, admin):
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"), as_user(AWA) as conn:
        conn.execute("insert into visit_slots (property_id, starts_at, ends_at) values (%s, '2030-01-01 10:00Z', '2030-01-01 11:00Z')", (THIES_201,))
    with as_user(AWA) as conn:
        assert conn.execute("delete from visit_slots where property_id = %s", (THIES_201,)).rowcount == 0
    assert admin.execute("select count(*) from visit_slots where property_id = %s", (THIES_201,)).fetchone()[0] == 1


def test_an_owner_cannot_move_a_slot_to_another_owners_property(as_user, admin):
    # property_id has no UPDATE privilege; RLS's WITH CHECK would refuse it too.
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"), as_user(AWA) as conn:
        conn.execute("update visit_slots set property_id = %s where property_id = %s", (THIES_201, VILLA_789))
    assert admin.execute("select count(*) from visit_slots where property_id = %s", (THIES_201,)).fetchone()[0] == 1


# -- columns: clients write only what the API exposes (20261202000010_hardening.sql) ---------

NEW_LISTING = "insert into properties (owner_id, title, city, type, price{extra}) values ('{awa}', 'Studio à Yoff', 'Dakar', 'studio', 90000{value})"


@pytest.mark.parametrize("statement", [
    NEW_LISTING.format(awa=AWA, extra=", created_at", value=", '2099-01-01'"),  # atop the newest-first list for good
    NEW_LISTING.format(awa=AWA, extra=", updated_at", value=", '2099-01-01'"),
    NEW_LISTING.format(awa=AWA, extra=", id", value=", 100000"),  # squats an identity value
    "update properties set created_at = '2099-01-01' where id = 789",
    "update properties set updated_at = '2099-01-01' where id = 789",
    "update properties set id = 100000 where id = 789",
    "update properties set owner_id = '{awa}' where id = 789",  # even to themselves: it never changes
    "insert into visit_slots (id, property_id, starts_at, ends_at) values (100000, 789, '2030-01-01 10:00Z', '2030-01-01 11:00Z')",
    "insert into visit_slots (property_id, starts_at, ends_at, created_at) values (789, '2030-01-01 10:00Z', '2030-01-01 11:00Z', '2000-01-01')",
    "update visit_slots set created_at = '2000-01-01' where property_id = 789",
    "update visit_slots set property_id = 117 where property_id = 789",  # to another of her own, even
])
def test_an_owner_cannot_write_the_columns_the_database_owns(as_user, admin, statement):
    snapshot = "select (select md5(string_agg(t::text, ',' order by id)) from properties t), (select md5(string_agg(s::text, ',' order by id)) from visit_slots s)"
    before = admin.execute(snapshot).fetchone()
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"), as_user(AWA) as conn:
        conn.execute(statement.format(awa=AWA))
    assert admin.execute(snapshot).fetchone() == before


def test_an_explicit_id_cannot_take_the_identity_value_another_owners_insert_gets(as_user, admin):
    upcoming = admin.execute("select last_value + 1 from properties_id_seq").fetchone()[0]
    with pytest.raises(errors.InsufficientPrivilege), as_user(AWA) as conn:
        conn.execute(NEW_LISTING.format(awa=AWA, extra=", id", value=f", {upcoming}"))
    with as_user(IBRAHIMA) as conn:
        listed = conn.execute(NEW_LISTING.format(awa=IBRAHIMA, extra="", value="") + " returning id").fetchone()[0]
    assert listed == upcoming


@pytest.mark.parametrize("column, value", [
    ("title", "Villa rénovée aux Almadies"), ("description", "Nouvelle description."), ("city", "Saly"),
    ("district", "Ngaparou"), ("district", None), ("type", "house"), ("price", 1_250_000), ("bedrooms", 5),
    ("status", "archived"), ("currency", "XOF"),
])
def test_an_owner_still_writes_every_field_the_api_and_the_web_app_edit(as_user, admin, column, value):
    with as_user(AWA) as conn:
        assert conn.execute(f"update properties set {column} = %s where id = 789", (value,)).rowcount == 1
    assert admin.execute(f"select {column} from properties where id = 789").fetchone()[0] == value


def test_an_owner_still_lists_with_every_field_of_the_form(as_user):
    with as_user(AWA) as conn:
        row = conn.execute(
            "insert into properties (owner_id, title, description, city, district, type, price, currency, bedrooms, status)"
            " values (%s, 'Villa à Saly', 'Piscine.', 'Saly', 'Ngaparou', 'villa', 900000, 'XOF', 3, 'published')"
            " returning status, created_at > now() - interval '1 minute'", (AWA,)).fetchone()
        slot = conn.execute("insert into visit_slots (property_id, starts_at, ends_at) values (789, '2030-01-01 10:00Z',"
                            " '2030-01-01 11:00Z') returning id").fetchone()[0]
        assert conn.execute("update visit_slots set starts_at = starts_at + interval '1 hour', ends_at = ends_at +"
                            " interval '1 hour' where id = %s", (slot,)).rowcount == 1
    assert row == ("published", True)


@pytest.mark.parametrize("table", ["properties", "visit_slots"])
def test_anon_holds_no_write_privilege_on_owner_tables(admin, table):
    granted = admin.execute(
        "select privilege_type from information_schema.role_table_grants where grantee = 'anon' and table_name = %s"
        " and privilege_type in ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')", (table,)).fetchall()
    columns = admin.execute(
        "select column_name, privilege_type from information_schema.column_privileges where grantee = 'anon'"
        " and table_name = %s and privilege_type in ('INSERT', 'UPDATE')", (table,)).fetchall()
    assert (granted, columns) == ([], [])


# -- notifications --------------------------------------------------------------------------


@pytest.mark.parametrize("user, count", [(MOUSSA, 3), (AWA, 2), (FATOU, 1), (IBRAHIMA, 1)])
def test_a_user_reads_only_their_own_notifications(as_user, user, count):
    with as_user(user) as conn:
        owners = [r[0] for r in conn.execute("select user_id::text from notifications")]
    assert owners == [user] * count


def test_a_user_marks_their_notifications_read_and_no_one_elses(as_user, admin):
    with as_user(AWA) as conn:
        assert conn.execute("update notifications set read_at = now() where read_at is null").rowcount == 2
    unread = dict(admin.execute("select user_id::text, count(*) from notifications where read_at is null group by 1").fetchall())
    assert unread == {FATOU: 1, IBRAHIMA: 1}


# -- who may call which function ------------------------------------------------------------

SERVICE_ONLY_CALLS = [
    "select reserve_payment(123, '33333333-3333-4333-8333-333333333333', '2030-01')",
    "select confirm_payment('seed-123-2030-01', 'completed', 50000)",
    "select book_visit(789, now() + interval '1 day', '44444444-4444-4444-8444-444444444444')",
]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("call", SERVICE_ONLY_CALLS, ids=["reserve_payment", "confirm_payment", "book_visit"])
def test_service_only_functions_refuse_browser_roles(api, act_as, role, call):
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"), act_as(api, role, sub=MOUSSA if role == "authenticated" else None):
        api.execute(call)


def test_service_role_may_call_the_service_only_functions(as_service):
    with as_service() as conn:
        result = conn.execute(SERVICE_ONLY_CALLS[0]).fetchone()[0]
    assert result["created"] is True


def test_anon_may_not_call_the_owner_dashboard(as_anon):
    with pytest.raises(errors.InsufficientPrivilege), as_anon() as conn:
        conn.execute("select owner_dashboard()")


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_everyone_may_list_available_slots(api, act_as, role):
    with act_as(api, role, sub=FATOU if role == "authenticated" else None):
        assert api.execute("select count(*) from available_slots(789)").fetchone()[0] == 12


@pytest.mark.parametrize(
    "call",
    [
        "select private.format_xof(1)",  # helpers live outside the API's schema
        "select public.handle_new_user()",  # trigger functions are not API
    ],
)
def test_internal_functions_are_not_callable_by_clients(as_user, call):
    with pytest.raises(errors.InsufficientPrivilege), as_user(AWA) as conn:
        conn.execute(call)
