"""Replicated reads (drills/replicated.py on the real stand-ins): readers in separate processes, each its own lib and
Upstash client, a writer through the API's write path and one through SQL and the database webhook, Upstash's
replica 20 ms and 500 ms late. After a write returned, no read shows an older price; the hit judged from one MGET
(the negative control) does show them."""

from __future__ import annotations

import importlib
import os

import pytest

from devstack.supabase_net import configure_webhook
from drills import replicated
from lib.domain import properties
from tests.sql.demo import AWA, PROPERTY_123
from tests.support import serve, wait_for

pytestmark = pytest.mark.usefixtures("configured")
SECRET = "replicated-webhook-secret"
ENV = ("SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY", "UPSTASH_REDIS_REST_URL",
       "UPSTASH_REDIS_REST_TOKEN")


@pytest.fixture
def drill(replicas, admin, signed_in, seeded_db, monkeypatch):
    """`drill(lag_ms, control)`: the drill's counts, the replicas `lag_ms` late, the webhook served here."""
    if not replicas.count:
        pytest.skip("about replicas: DEVSTACK_UPSTASH_REPLICAS=0 runs none")
    monkeypatch.setenv("DATABASE_WEBHOOK_SECRET", SECRET)
    handler = importlib.import_module("api.hooks.database").handler
    owner = signed_in(AWA)
    before = replicas.lag_ms

    def write_api(price: int) -> None:
        properties.update(owner, PROPERTY_123, {"price": price})

    def write_sql(price: int) -> None:
        admin.execute("update properties set price = %s where id = %s", (price, PROPERTY_123))
        wait_for(lambda: not admin.execute("select 1 from private.invalidation_outbox").fetchall(),
                 timeout=10, interval=0.002, what="the webhook's bump")

    with serve(handler) as base:
        configure_webhook(seeded_db.dsn(), f"{base}/api/hooks/database", SECRET)
        admin.execute("delete from private.invalidation_outbox")

        def run(lag_ms: float, control: bool) -> replicated.Counts:
            replicas.lag_ms = lag_ms
            start = admin.execute("select price from properties where id = %s", (PROPERTY_123,)).fetchone()[0]
            env = {name: os.environ[name] for name in ENV}
            return replicated.run(env, PROPERTY_123, int(start), write_api=write_api, write_sql=write_sql,
                                  readers=3, writes=8, control=control)

        yield run
    replicas.lag_ms = before


@pytest.mark.parametrize("lag_ms", [20, 500])
def test_no_reader_on_any_instance_sees_a_price_older_than_a_write_that_returned(drill, lag_ms):
    counts = drill(lag_ms, control=False)
    assert counts.reads > 100 and counts.hits > 0, counts.line()
    assert counts.stale == 0, (counts.line(), counts.examples)


@pytest.mark.parametrize("lag_ms", [20, 500])
def test_the_negative_control_a_hit_judged_from_one_mget_shows_stale_reads(drill, lag_ms):
    counts = drill(lag_ms, control=True)
    assert counts.stale > 0, counts.line()
