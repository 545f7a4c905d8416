"""lib/cache/outbox on real parts: the seeded PostgreSQL behind the Supabase stand-in (PostgREST, its pg_net worker),
and a Valkey server behind the Upstash stand-in. A change made in SQL or by the API is drained from the outbox,
applied once, never lost when Redis is away, and the read that probes Redis after an outage drains first."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest
import redis as redis_py

from devstack.redis_server import free_port
from devstack.supabase import serve_in_thread as supabase_in_thread
from devstack.supabase_net import configure_webhook
from lib import auth, context, db, keys
from lib.cache import aside, invalidation, outbox
from lib.domain import properties
from lib.edge import breaker as breaker_module
from lib.edge import upstash
from lib.errors import DatabaseUnavailable, NotFound
from tests.sql.demo import AWA, MOUSSA, PROPERTY_123
from tests.support import UPSTASH_TOKEN, serve, wait_for

ANON, SERVICE = "anon-key", "service-key"


class Clock:
    """The breaker's clock, moved by the tests."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def world(seeded_db, pg_connect, valkey, upstash_server, monkeypatch):
    """Everything wired: `world.sql` (superuser, autocommit), `world.redis` (plain redis-py), `world.supabase`."""
    supabase, thread = supabase_in_thread("127.0.0.1", 0, dsn=seeded_db.dsn(), anon_key=ANON, service_role_key=SERVICE)
    for name, value in {"SUPABASE_URL": supabase.url, "SUPABASE_ANON_KEY": ANON, "SUPABASE_SERVICE_ROLE_KEY": SERVICE,
                        "UPSTASH_REDIS_REST_URL": upstash_server.url, "UPSTASH_REDIS_REST_TOKEN": UPSTASH_TOKEN}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CACHE_NAMESPACE", raising=False)
    clock = Clock()
    monkeypatch.setattr(breaker_module, "clock", clock)
    monkeypatch.setattr(aside, "_recovery_hooks", [outbox.drain_after_outage])
    upstash.breaker.reset()
    direct = redis_py.Redis(host=valkey.host, port=valkey.port, decode_responses=True)
    direct.flushdb()
    sql = pg_connect(seeded_db.dsn())
    sql.execute("delete from private.invalidation_outbox")  # the seed's own rows

    class World:
        pass

    w = World()
    w.sql, w.redis, w.supabase, w.clock, w.dsn = sql, direct, supabase, clock, seeded_db.dsn()
    yield w
    supabase.shutdown()
    supabase.server_close()
    thread.join(timeout=5)
    direct.close()
    upstash.breaker.reset()


def detail(property_id=PROPERTY_123):
    ctx = context.begin()
    try:
        value = properties.get_public(property_id)
    except Exception as exc:  # noqa: BLE001 - a 404 is a value here
        value = exc
    return value, ctx.cache_status


def outbox_rows(w) -> list[dict]:
    return [r[0] for r in w.sql.execute("select to_jsonb(o) from private.invalidation_outbox o order by id")]


def redis_away(monkeypatch):
    """Upstash unreachable from the API while Redis keeps its data (a network outage, not a flush)."""
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", f"http://127.0.0.1:{free_port()}")


def redis_back(monkeypatch, w, url):
    monkeypatch.setenv("UPSTASH_REDIS_REST_URL", url)
    w.clock.now += upstash.breaker.interval  # the breaker's interval passes: the next read probes


def owner(w, user_id=AWA) -> auth.User:
    return auth.User(id=user_id, email=None, role="authenticated", token=w.supabase.mint_token(user_id))


# -- a change made outside the API -----------------------------------------------------------------


def test_a_change_in_sql_is_stale_until_drained_then_applied_and_deleted(world):
    assert detail()[0]["price"] == 50000
    world.sql.execute("update properties set price = 55000 where id = %s", (PROPERTY_123,))
    value, status = detail()
    assert (value["price"], status) == (50000, "HIT")  # stale: what the outbox is for
    done = outbox.drain()
    assert (done.applied, done.already, done.deferred) == (1, 0, 0)
    assert {"property:123", "properties:public", "search", "properties:city:dakar", f"dashboard:{AWA}"} <= done.tags
    value, status = detail()
    assert (value["price"], status) == (55000, "MISS")
    assert outbox_rows(world) == []


def test_a_property_published_after_its_id_was_probed_stops_answering_404(world):
    missing, status = detail(117)  # a draft: 404, cached as None
    assert getattr(missing, "status", None) == 404 and status == "MISS"
    assert getattr(detail(117)[0], "status", None) == 404 and detail(117)[1] == "HIT"
    world.sql.execute("update properties set status = 'published' where id = 117")
    outbox.drain()
    assert detail(117)[0]["id"] == 117


def test_a_lease_created_after_its_id_was_probed_is_readable_by_its_tenant(world):
    from lib.domain import payments

    tenant = auth.User(id=MOUSSA, email=None, role="authenticated", token=world.supabase.mint_token(MOUSSA))
    with pytest.raises(Exception) as refused:
        payments.list_for(tenant, 999)  # no such lease: meta:lease:999 caches None
    assert refused.value.status == 403
    assert world.redis.exists(keys.lease_parties(999).key) == 1
    world.sql.execute("insert into leases (id, property_id, tenant_id, monthly_rent, status, starts_on) "
                      "values (999, 101, %s, 175000, 'active', current_date)", (MOUSSA,))
    outbox.drain()
    assert payments.list_for(tenant, 999) == []


# -- the API's own writes ------------------------------------------------------------------------


def test_the_apis_own_write_carries_its_change_id_to_the_outbox_and_is_not_bumped_twice(world):
    detail()
    updated = properties.update(owner(world), PROPERTY_123, {"price": 56000})
    [row] = outbox_rows(world)
    assert row["change_id"] and len(row["change_id"]) == 32
    assert json.loads(world.redis.get(keys.applied_change(row["change_id"]))) == invalidation.change_tags(
        "properties", row["old_record"], row["record"])
    assert detail() == (updated, "HIT")  # the API's own bump, before it answered, and its refill (lib/cache/refill)
    done = outbox.drain()
    assert (done.applied, done.already, done.tags) == (1, 1, set())
    assert detail() == (updated, "HIT"), "the writer's refill was thrown away by a second bump"


def test_a_functions_named_error_becomes_the_mapped_error_and_any_other_propagates(world):
    writes = outbox.Writes()
    missing = {"p_visit_id": 999_999_999, "p_user_id": AWA}
    with pytest.raises(NotFound, match="introuvable"):
        writes.rpc(db.service(), "cancel_visit", missing, {"visit_not_found": lambda: NotFound("Visite introuvable.")})
    with pytest.raises(db.DatabaseError) as raised:  # not in the map: not turned into a client's error
        writes.rpc(db.service(), "cancel_visit", missing, {})
    assert raised.value.message == "visit_not_found"
    assert len(writes.ids) == 2 and len(set(writes.ids)) == 2  # each call stamped with its own change id
    assert outbox_rows(world) == []  # nothing was written


def test_a_change_the_apis_view_missed_is_still_bumped(world):
    # The web app moved 123 to Mbour; the Mbour list shows it. The API then writes with an older view
    # of the row (Dakar): its own bump misses Mbour, the drain does not.
    world.sql.execute("update properties set city = 'Mbour' where id = %s", (PROPERTY_123,))
    outbox.drain()
    ctx = context.begin()
    assert PROPERTY_123 in [p["id"] for p in properties.list_public("Mbour")["properties"]] and ctx.cache_status == "MISS"
    writes = outbox.Writes()
    client = db.service()
    after = db.run(lambda: writes.stamp(client.from_("properties").update({"city": "Thiès"})
                                        .eq("id", PROPERTY_123)).execute()).data[0]
    seen_before = {**after, "city": "Dakar"}
    writes.applied(invalidation.change_tags("properties", seen_before, after))
    assert PROPERTY_123 in [p["id"] for p in properties.list_public("Mbour")["properties"]], "stale until drained"
    done = outbox.drain()
    assert done.tags == {keys.properties_city("Mbour").tags[0]} and done.already == 0
    assert PROPERTY_123 not in [p["id"] for p in properties.list_public("Mbour")["properties"]]


def test_a_marker_covers_only_its_own_write(world):
    # Two writes of one request: the first applied, the second's request died before its bump.
    client = db.service()
    writes = outbox.Writes()
    db.run(lambda: writes.stamp(client.from_("properties").update({"price": 57000}).eq("id", PROPERTY_123)).execute())
    writes.applied(invalidation.change_tags("properties", None, {"id": PROPERTY_123, "owner_id": AWA, "city": "Dakar"}))
    detail()
    db.run(lambda: writes.stamp(client.from_("properties").update({"price": 58000}).eq("id", PROPERTY_123)).execute())
    assert detail()[0]["price"] == 57000
    done = outbox.drain()
    assert (done.applied, done.already) == (2, 1) and "property:123" in done.tags
    assert detail()[0]["price"] == 58000


# -- nothing lost ------------------------------------------------------------------------------


def test_redis_away_the_rows_stay_released_and_are_applied_when_it_is_back(world, monkeypatch, upstash_server):
    detail()
    world.sql.execute("update properties set price = 59000 where id = %s", (PROPERTY_123,))
    redis_away(monkeypatch)
    done = outbox.drain()
    assert (done.applied, done.deferred) == (0, 1)
    [row] = outbox_rows(world)
    assert row["claimed_until"] is None, "released at once, not held for the claim's 30 s"
    redis_back(monkeypatch, world, upstash_server.url)
    assert outbox.drain().applied == 1 and outbox_rows(world) == []
    assert detail()[0]["price"] == 59000


def test_the_read_that_probes_redis_after_an_outage_drains_before_it_trusts_an_entry(world, monkeypatch,
                                                                                   upstash_server):
    assert detail()[0]["price"] == 50000  # cached, and Redis keeps it through the outage
    redis_away(monkeypatch)
    assert detail()[1] == "BYPASS"
    world.sql.execute("update properties set price = 60000 where id = %s", (PROPERTY_123,))
    redis_back(monkeypatch, world, upstash_server.url)
    value, status = detail()
    assert (value["price"], status) == (60000, "MISS"), "the entry from before the change was served"
    assert outbox_rows(world) == [] and upstash.breaker.state == "closed"


def test_applying_a_row_twice_is_harmless(world):
    world.sql.execute("update properties set price = 61000 where id = %s", (PROPERTY_123,))
    claimed = db.run(lambda: db.service().rpc("claim_invalidations", {"p_limit": 10, "p_hold_seconds": 30})
                     .execute()).data
    aside.invalidate(outbox.row_tags(claimed[0]))  # a drainer that bumped, then died before deleting
    world.sql.execute("update private.invalidation_outbox set claimed_until = now() - interval '1 second'")
    assert detail()[0]["price"] == 61000
    assert outbox.drain().applied == 1
    value, status = detail()
    assert (value["price"], status) == (61000, "MISS")


def test_the_outbox_unreachable_is_database_unavailable(world):
    world.supabase.set_mode("down")
    with pytest.raises(DatabaseUnavailable):
        outbox.drain()


def test_a_redis_full_of_data_still_voids_the_tags_and_claims_no_marker(world, valkey):
    detail()
    world.redis.config_set("maxmemory", "1")
    try:
        assert aside.invalidate(["property:123"], changes=["ab" * 16]) is True
        assert world.redis.exists(keys.tag_key("property:123")) == 0, "the tag was neither bumped nor voided"
        assert world.redis.exists(keys.applied_change("ab" * 16)) == 0, "a marker for a bump that did not happen"
    finally:
        world.redis.config_set("maxmemory", "256mb")
    assert detail()[1] == "MISS"


# -- the webhook and the cron --------------------------------------------------------------------


def test_the_webhook_body_is_used_only_when_the_outbox_is_unreachable(world):
    detail()
    change = {"type": "UPDATE", "table": "properties", "schema": "public",
              "record": {"id": PROPERTY_123, "owner_id": AWA, "city": "Dakar", "status": "published"},
              "old_record": {"id": PROPERTY_123, "owner_id": AWA, "city": "Dakar", "status": "published"}}
    assert outbox.on_database_change(change)["invalidated"] == []  # nothing waits: nothing to bump
    assert detail()[1] == "HIT"
    world.supabase.set_mode("down")
    body = outbox.on_database_change(change)
    assert body["outbox"] == "unreachable" and "property:123" in body["invalidated"]
    world.supabase.set_mode("normal")
    assert detail()[1] == "MISS"


def test_redis_refusing_the_webhooks_drain_is_a_503_and_nothing_is_lost(world, monkeypatch):
    world.sql.execute("update properties set price = 62000 where id = %s", (PROPERTY_123,))
    redis_away(monkeypatch)
    with pytest.raises(outbox.CacheUnreachable) as refused:
        outbox.on_database_change({"type": "UPDATE", "table": "properties", "record": {}, "old_record": {}})
    assert (refused.value.status, refused.value.code) == (503, "service_unavailable")
    assert len(outbox_rows(world)) == 1


def test_reconcile_drains_and_reports_what_is_left(world):
    for price in (63000, 64000, 65000):
        world.sql.execute("update properties set price = %s where id = %s", (price, PROPERTY_123))
    body = outbox.reconcile()
    assert (body["applied"], body["deferred"], body["pending"], body["oldest_seconds"]) == (3, 0, 0, None)
    assert body["invalidated"] == len(invalidation.change_tags("properties", None, {"id": 123, "owner_id": AWA,
                                                                             "city": "Dakar"}))


def test_the_stand_ins_pg_net_worker_delivers_the_webhook_after_commit(world, monkeypatch):
    import importlib

    monkeypatch.setenv("DATABASE_WEBHOOK_SECRET", "s3cret")
    handler = importlib.import_module("api.hooks.database").handler
    with serve(handler) as base:
        configure_webhook(world.dsn, f"{base}/api/hooks/database", "s3cret")
        detail()
        with psycopg.connect(world.dsn, autocommit=True) as conn:
            with conn.transaction():
                conn.execute("update properties set price = 66000 where id = %s", (PROPERTY_123,))
                assert outbox_rows(world) == []  # uncommitted: invisible, and nothing sent
        wait_for(lambda: not outbox_rows(world), timeout=10, what="the webhook's drain")
        assert detail()[0]["price"] == 66000
        logged = world.sql.execute("select status_code from net._http_response").fetchall()
        assert logged == [(200,)]


@pytest.mark.parametrize("mode", ["drop", "hold"])
def test_a_dropped_or_held_webhook_leaves_the_change_in_the_outbox(world, monkeypatch, mode):
    import importlib

    monkeypatch.setenv("DATABASE_WEBHOOK_SECRET", "s3cret")
    calls = []
    handler = importlib.import_module("api.hooks.database").handler

    class Counting(handler):
        def post(self, req):
            calls.append(1)
            return super().post(req)

    with serve(Counting) as base:
        configure_webhook(world.dsn, f"{base}/api/hooks/database", "s3cret")
        world.supabase.net.mode = mode
        world.sql.execute("update properties set price = 67000 where id = %s", (PROPERTY_123,))
        if mode == "drop":
            wait_for(lambda: world.supabase.net.stats()["dropped"] == 1, timeout=10, what="the drop")
        assert calls == [] and len(outbox_rows(world)) == 1
        world.supabase.net.mode = "deliver"
        if mode == "hold":  # a stopped pg_net worker sends its queue when it is back
            wait_for(lambda: calls and not outbox_rows(world), timeout=10, what="the held webhook")
        else:
            assert len(outbox_rows(world)) == 1, "lost webhook: only the cron can apply it"
            assert outbox.reconcile()["applied"] == 1


def test_concurrent_drains_apply_every_row_once(world):
    for price in range(70000, 70040):
        world.sql.execute("update properties set price = %s where id = %s", (price, PROPERTY_123))
    results: list[outbox.Drained] = []

    def run():
        results.append(outbox.drain(batch=7))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r.applied for r in results) == 40 and outbox_rows(world) == []
