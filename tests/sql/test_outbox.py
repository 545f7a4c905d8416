"""The invalidation outbox and the database webhook (supabase/migrations/202612020000{20,21}): every change to a
row the API shows is recorded in its own transaction, whoever made it; clients cannot reach it; the drain's
RPCs claim, release and delete; the webhook (20261207000010) is queued through net.http_post with Supabase's
payload, once per statement, signed with the secret in Vault, which never enters the queue."""

from __future__ import annotations

import json
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import errors

from lib import signature
from lib.cache import invalidation as change_map
from lib.errors import InvalidToken
from tests.sql.demo import AWA, FATOU, LEASE_123, MOUSSA, PROPERTY_123, VILLA_789
from tests.sql.helpers import race

CHANGE = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def outbox(admin):
    """The outbox emptied of the seed's own rows; `outbox()` reads what is in it now, oldest first."""
    admin.execute("delete from private.invalidation_outbox")

    def rows() -> list[dict]:
        cur = admin.execute("select to_jsonb(o) from private.invalidation_outbox o order by id")
        return [r[0] for r in cur.fetchall()]

    return rows


@contextmanager
def postgrest(conn, act_as, role, sub=None, headers=None):
    """One PostgREST-style transaction, `request.headers` set as PostgREST sets it (lower-cased keys)."""
    with act_as(conn, role, sub=sub) as c:
        c.execute("select set_config('request.headers', %s, true)", (json.dumps(headers or {}),))
        yield c


def as_request(conn, act_as, role, sql, params=(), sub=None, headers=None):
    with postgrest(conn, act_as, role, sub, headers) as c:
        c.execute(sql, params)


def webhook_settings(admin, url="http://127.0.0.1:9/api/hooks/database", secret="hook-secret"):
    admin.execute("select vault.create_secret(%s, 'dousell_database_webhook_url')", (url,))
    admin.execute("select vault.create_secret(%s, 'dousell_database_webhook_secret')", (secret,))


def queued(admin) -> list[dict]:
    """pg_net's queue, oldest first; `raw` is the body's bytes as the worker sends them."""
    cur = admin.execute("select method, url, headers, convert_from(body, 'UTF8')::jsonb, timeout_milliseconds, body "
                        "from net.http_request_queue order by id")
    return [dict(zip(("method", "url", "headers", "body", "timeout", "raw"), r, strict=True)) for r in cur.fetchall()]


WEBHOOK_TRIGGERS = ("a_record_change", "b_database_webhook_insert", "b_database_webhook_update",
                    "b_database_webhook_delete")


# -- recording ----------------------------------------------------------------------------------


def test_every_table_the_api_shows_has_the_outbox_and_webhook_triggers(admin):
    found = admin.execute(
        "select c.relname, t.tgname from pg_trigger t join pg_class c on c.oid = t.tgrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'public' and (t.tgname = 'a_record_change' or t.tgname like 'b_database_webhook%%') "
        "and not t.tgisinternal"
    ).fetchall()
    assert {(table, name) for table, name in found} == {
        (table, name) for table in change_map.TABLES for name in WEBHOOK_TRIGGERS}


def test_an_owners_update_through_postgrest_is_recorded_with_both_versions(api, act_as, outbox):
    as_request(api, act_as, "authenticated", "update properties set price = 61000, city = 'dakar' where id = %s",
               (PROPERTY_123,), sub=AWA)
    [row] = outbox()
    assert (row["table_name"], row["op"], row["change_id"]) == ("properties", "UPDATE", None)
    assert (row["old_record"]["price"], row["record"]["price"]) == (50000, 61000)
    assert (row["old_record"]["city"], row["record"]["city"]) == ("Dakar", "dakar")
    assert row["claimed_until"] is None


def test_a_rolled_back_change_leaves_nothing(api, act_as, outbox):
    with pytest.raises(errors.CheckViolation):
        with postgrest(api, act_as, "authenticated", sub=AWA) as conn:
            conn.execute("update properties set price = 1 where id = %s", (PROPERTY_123,))
            conn.execute("update properties set price = -1 where id = %s", (PROPERTY_123,))
    assert outbox() == []


def test_a_change_in_sql_is_recorded_as_well(admin, outbox):
    admin.execute("update properties set status = 'published' where id = 117")
    admin.execute("delete from notifications where user_id = %s", (MOUSSA,))
    tables = [(r["table_name"], r["op"]) for r in outbox()]
    assert tables[0] == ("properties", "UPDATE")
    assert set(tables[1:]) == {("notifications", "DELETE")} and len(tables) > 1
    deleted = outbox()[1]
    assert deleted["record"] is None and deleted["old_record"]["user_id"] == MOUSSA


def test_an_update_that_changes_nothing_is_not_recorded(admin, outbox):
    admin.execute("update notifications set read_at = read_at where user_id = %s", (MOUSSA,))
    assert outbox() == []


def test_rows_without_their_owner_carry_the_owner_of_their_property(api, act_as, admin, outbox, periods):
    with act_as(api, "service_role"):
        api.execute("select reserve_payment(%s, %s, %s)", (LEASE_123, MOUSSA, periods.current))
    admin.execute("insert into visit_slots (property_id, starts_at, ends_at) "
                  "values (%s, now() + interval '9 days', now() + interval '9 days 1 hour')", (VILLA_789,))
    admin.execute("update leases set ends_on = ends_on where id = %s", (LEASE_123,))  # updated_at moves
    rows = outbox()
    assert [(r["table_name"], r["op"]) for r in rows] == [
        ("rental_payments", "INSERT"), ("visit_slots", "INSERT"), ("leases", "UPDATE")]
    assert all(r["owner_ids"] == [AWA] for r in rows)


def test_the_api_change_id_comes_from_postgrest_request_headers(api, act_as, outbox):
    as_request(api, act_as, "authenticated", "update profiles set full_name = 'Moussa D.' where id = %s",
               (MOUSSA,), sub=MOUSSA, headers={"x-dousell-change": CHANGE, "user-agent": "x"})
    assert [r["change_id"] for r in outbox()] == [CHANGE]


@pytest.mark.parametrize("headers", [
    {"x-dousell-change": "not-hex"},  # only 32 lower-case hex digits are an API change id
    {"x-dousell-change": CHANGE.upper()},
    {"x-dousell-change": CHANGE + "00"},
    {"X-Dousell-Change": CHANGE},  # PostgREST lower-cases header names: this is not it
    {},
])
def test_anything_else_is_no_change_id(api, act_as, outbox, headers):
    as_request(api, act_as, "authenticated", "update profiles set phone = '+221770000000' where id = %s",
               (MOUSSA,), sub=MOUSSA, headers=headers)
    assert [r["change_id"] for r in outbox()] == [None]


def test_unreadable_request_headers_never_fail_the_write(api, act_as, outbox):
    with act_as(api, "authenticated", sub=MOUSSA):
        api.execute("select set_config('request.headers', '{not json', true)")
        api.execute("update profiles set full_name = 'Moussa' where id = %s", (MOUSSA,))
    assert [r["change_id"] for r in outbox()] == [None]


# -- out of reach -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_clients_can_neither_read_the_outbox_nor_call_the_drain(api, act_as, role):
    for sql in ("select * from private.invalidation_outbox", "select claim_invalidations(10, 30)",
                "select complete_invalidations(array[1::bigint])", "select release_invalidations(array[1::bigint])",
                "select invalidation_backlog()"):
        with pytest.raises(errors.InsufficientPrivilege):
            with act_as(api, role, sub=FATOU if role == "authenticated" else None):
                api.execute(sql)


# -- the drain's RPCs ---------------------------------------------------------------------------


def service(api, act_as, sql, params=()):
    with act_as(api, "service_role"):
        return api.execute(sql, params).fetchone()[0]


def changes(admin, n):
    for i in range(n):
        admin.execute("update properties set price = %s where id = %s", (70000 + i, PROPERTY_123))


def test_a_claim_takes_the_oldest_rows_and_hides_them_from_the_next_claim(api, act_as, admin, outbox):
    changes(admin, 5)
    ids = [r["id"] for r in outbox()]
    first = service(api, act_as, "select claim_invalidations(3, 30)")
    assert [r["id"] for r in first] == ids[:3]
    assert first[0]["record"]["price"] == 70000 and first[0]["claims"] == 1
    second = service(api, act_as, "select claim_invalidations(3, 30)")
    assert [r["id"] for r in second] == ids[3:]
    assert service(api, act_as, "select claim_invalidations(3, 30)") == []


def test_released_rows_are_claimable_at_once_and_completed_rows_are_gone(api, act_as, admin, outbox):
    changes(admin, 2)
    claimed = [r["id"] for r in service(api, act_as, "select claim_invalidations(10, 30)")]
    assert service(api, act_as, "select release_invalidations(%s)", (claimed[:1],)) == 1
    again = service(api, act_as, "select claim_invalidations(10, 30)")
    assert [r["id"] for r in again] == claimed[:1] and again[0]["claims"] == 2
    assert service(api, act_as, "select complete_invalidations(%s)", (claimed,)) == 2
    assert outbox() == []
    assert service(api, act_as, "select complete_invalidations(%s)", (claimed,)) == 0  # twice is harmless


def test_a_claim_left_by_a_dead_drainer_runs_out(api, act_as, admin, outbox):
    changes(admin, 1)
    service(api, act_as, "select claim_invalidations(10, 30)")
    admin.execute("update private.invalidation_outbox set claimed_until = clock_timestamp() - interval '1 second'")
    assert len(service(api, act_as, "select claim_invalidations(10, 30)")) == 1


def test_concurrent_drainers_never_claim_the_same_row(api_conns, act_as, admin, outbox):
    changes(admin, 40)
    conns = api_conns(4)

    def claim(conn, i):
        return [r["id"] for r in service(conn, act_as, "select claim_invalidations(15, 30)")]

    claimed = race(conns, claim)
    every = [row_id for ids in claimed for row_id in ids]
    assert len(every) == len(set(every)) == 40


@pytest.mark.parametrize("limit, hold", [(0, 30), (1001, 30), (10, 0), (10, 601), (None, 30)])
def test_a_claim_out_of_bounds_is_refused(api, act_as, limit, hold):
    with pytest.raises(errors.RaiseException, match="invalid_claim"):
        service(api, act_as, "select claim_invalidations(%s, %s)", (limit, hold))


def test_the_backlog_says_how_many_wait_and_for_how_long(api, act_as, admin, outbox):
    assert service(api, act_as, "select invalidation_backlog()") == {"pending": 0, "oldest_seconds": None}
    changes(admin, 3)
    backlog = service(api, act_as, "select invalidation_backlog()")
    assert backlog["pending"] == 3 and backlog["oldest_seconds"] >= 0


# -- the webhook --------------------------------------------------------------------------------


def test_without_a_webhook_url_nothing_is_sent(admin, outbox):
    changes(admin, 1)
    assert queued(admin) == [] and len(outbox()) == 1


def test_each_change_queues_supabases_webhook_signed_and_without_the_secret(api, act_as, admin, outbox):
    webhook_settings(admin)
    as_request(api, act_as, "authenticated", "update properties set price = 61000 where id = %s", (PROPERTY_123,),
               sub=AWA)
    [request_] = queued(admin)
    assert request_["method"] == "POST" and request_["url"] == "http://127.0.0.1:9/api/hooks/database"
    assert set(request_["headers"]) == {"Content-Type", "X-Dousell-Signature"}
    assert "hook-secret" not in json.dumps(request_["headers"]) and b"hook-secret" not in bytes(request_["raw"])
    assert request_["timeout"] == 5000
    body = request_["body"]
    assert set(body) == {"type", "table", "schema", "record", "old_record"}
    assert (body["type"], body["table"], body["schema"]) == ("UPDATE", "properties", "public")
    assert (body["old_record"]["price"], body["record"]["price"]) == (50000, 61000)
    # What the endpoint checks, over the bytes pg_net sends: the database's HMAC is the API's.
    signature.require_signature(request_["headers"]["X-Dousell-Signature"], bytes(request_["raw"]), "hook-secret",
                                "database-webhook")
    with pytest.raises(InvalidToken, match="Signature invalide"):
        signature.require_signature(request_["headers"]["X-Dousell-Signature"], bytes(request_["raw"]),
                                    "another-secret", "database-webhook")


def test_a_body_with_any_character_signs_as_it_is_sent(admin, outbox):
    webhook_settings(admin)
    title = 'Villa « Téranga » \\ "vue mer" 🏠 \\u0000 \t'  # escapes in the JSON text, non-ASCII bytes
    admin.execute("update properties set title = %s where id = %s", (title, PROPERTY_123))
    [request_] = queued(admin)
    assert request_["body"]["record"]["title"] == title
    signature.require_signature(request_["headers"]["X-Dousell-Signature"], bytes(request_["raw"]), "hook-secret",
                                "database-webhook")


def test_a_statement_of_a_thousand_rows_queues_one_request_each_time(admin, outbox):
    webhook_settings(admin)
    admin.execute("insert into visit_slots (property_id, starts_at, ends_at) "
                  "select %s, now() + make_interval(days => 400, hours => g), "
                  "now() + make_interval(days => 400, hours => g, mins => 30) from generate_series(1, 1000) g",
                  (VILLA_789,))
    admin.execute("update visit_slots set ends_at = ends_at + interval '5 minutes' "
                  "where property_id = %s and starts_at > now() + interval '399 days'", (VILLA_789,))
    admin.execute("delete from visit_slots where property_id = %s and starts_at > now() + interval '399 days'",
                  (VILLA_789,))
    requests = queued(admin)
    assert [(r["body"]["type"], r["body"]["table"]) for r in requests] == [
        ("INSERT", "visit_slots"), ("UPDATE", "visit_slots"), ("DELETE", "visit_slots")]
    updated = requests[1]["body"]
    assert updated["record"]["id"] == updated["old_record"]["id"] and updated["record"] != updated["old_record"]
    assert len(outbox()) == 3_000  # the outbox still has every row: the drain applies them all


def test_a_statement_that_changes_nothing_queues_nothing(admin, outbox):
    webhook_settings(admin)
    admin.execute("update notifications set read_at = read_at where user_id = %s", (MOUSSA,))
    admin.execute("delete from notifications where kind = 'no such kind'")
    admin.execute("insert into notifications (user_id, kind, title) select user_id, kind, title from notifications "
                  "where false")
    assert queued(admin) == [] and outbox() == []


def test_without_the_secret_in_vault_nothing_is_sent_and_the_outbox_keeps_the_change(admin, outbox):
    admin.execute("select vault.create_secret('http://127.0.0.1:9/api/hooks/database', 'dousell_database_webhook_url')")
    warnings = []
    admin.add_notice_handler(lambda diag: warnings.append(diag.message_primary))
    admin.execute("update properties set price = 64000 where id = %s", (PROPERTY_123,))
    assert queued(admin) == [] and len(outbox()) == 1
    assert any("no dousell_database_webhook_secret" in w for w in warnings)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_the_queue_readable_by_every_role_holds_no_secret(api, act_as, admin, role):
    # On hosted Supabase PUBLIC can read pg_net's queue, headers included; the stand-in grants the same.
    webhook_settings(admin)
    admin.execute("update properties set price = 65000 where id = %s", (PROPERTY_123,))
    with act_as(api, role, sub=FATOU if role == "authenticated" else None) as conn:
        rows = conn.execute("select headers::text, convert_from(body, 'UTF8') from net.http_request_queue").fetchall()
    assert len(rows) == 1 and "hook-secret" not in "".join(rows[0])


def test_inserts_and_deletes_carry_one_version_as_supabase_sends_them(admin, outbox):
    webhook_settings(admin)
    admin.execute("insert into notifications (user_id, kind, title) values (%s, 'test', 'Bonjour')", (MOUSSA,))
    admin.execute("delete from notifications where kind = 'test'")
    inserted, deleted = (r["body"] for r in queued(admin))
    assert (inserted["type"], inserted["old_record"], inserted["record"]["title"]) == ("INSERT", None, "Bonjour")
    assert (deleted["type"], deleted["record"], deleted["old_record"]["title"]) == ("DELETE", None, "Bonjour")


def test_a_rolled_back_change_sends_no_webhook(admin, outbox):
    webhook_settings(admin)
    with pytest.raises(errors.CheckViolation):
        with admin.transaction():
            admin.execute("update properties set price = 1 where id = %s", (PROPERTY_123,))
            admin.execute("update properties set price = -1 where id = %s", (PROPERTY_123,))
    assert queued(admin) == [] and outbox() == []


def test_a_webhook_that_cannot_be_queued_never_fails_the_write(admin, outbox):
    webhook_settings(admin)
    admin.execute("alter table net.http_request_queue rename to http_request_queue_gone")
    with admin.cursor() as cur:
        cur.execute("update properties set price = 62000 where id = %s", (PROPERTY_123,))
        assert cur.rowcount == 1
    warnings = []
    admin.add_notice_handler(lambda diag: warnings.append(diag.message_primary))
    admin.execute("update properties set price = 63000 where id = %s", (PROPERTY_123,))
    assert any("database webhook not queued" in w for w in warnings)
    assert [r["record"]["price"] for r in outbox()] == [62000, 63000]


def test_the_webhook_settings_are_not_readable_by_clients(api, act_as, admin):
    webhook_settings(admin)
    for role in ("anon", "authenticated"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with act_as(api, role, sub=FATOU if role == "authenticated" else None):
                api.execute("select * from vault.decrypted_secrets")
