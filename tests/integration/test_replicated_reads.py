"""Replicated reads on the whole stack (drill 16's check, drills/replicated.py): readers in separate processes, each
its own lib and Upstash client, a writer through the API (PATCH through vercel dev) and one through SQL and the
database webhook, Upstash's replica 20 ms and 500 ms late: 0 stale reads after a write returned; the hit judged
from one MGET without a sync token (the negative control) shows stale reads."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from devstack.__main__ import UPSTASH_TOKEN, function_env
from drills import replicated

PROPERTY = 110  # Awa's, Dakar, published
OWNER = "awa.ndiaye@example.sn"


@pytest.fixture
def drill(stack) -> Iterator:
    sql = psycopg.connect(f"postgresql://postgres@127.0.0.1:{stack.ports.postgres}/dousell", autocommit=True)
    original = sql.execute("select price from properties where id = %s", (PROPERTY,)).fetchone()[0]
    admin = {"Authorization": f"Bearer {UPSTASH_TOKEN}"}

    def write_api(price: int) -> None:
        response = stack.api.patch(f"/api/properties/{PROPERTY}", json={"price": price}, headers=stack.auth(OWNER))
        assert response.status_code == 200, response.text

    def write_sql(price: int) -> None:
        sql.execute("update properties set price = %s where id = %s", (price, PROPERTY))
        deadline = time.monotonic() + 30
        while sql.execute("select 1 from private.invalidation_outbox limit 1").fetchone():
            assert time.monotonic() < deadline, "the webhook did not apply the change within 30 s"
            time.sleep(0.002)

    def run(lag_ms: int, control: bool) -> replicated.Counts:
        stack.api.post(f"{stack.upstash_url}/__devstack/replicas", json={"lag_ms": lag_ms},
                       headers=admin).raise_for_status()
        for key in stack.redis("KEYS", "dousell:ratelimit:*") or []:
            stack.redis("DEL", key)
        start = sql.execute("select price from properties where id = %s", (PROPERTY,)).fetchone()[0]
        return replicated.run(function_env(stack.ports), PROPERTY, start, write_api=write_api, write_sql=write_sql,
                              writes=6, control=control)

    stack.api.get(f"/api/properties/{PROPERTY}")  # the detail function built before the readers start
    yield run
    stack.api.post(f"{stack.upstash_url}/__devstack/replicas", json={"lag_ms": 20}, headers=admin)
    sql.execute("update properties set price = %s where id = %s", (original, PROPERTY))
    sql.close()


@pytest.mark.parametrize("lag_ms", [20, 500])
def test_no_reader_on_another_instance_sees_a_price_older_than_a_write_that_returned(drill, lag_ms):
    counts = drill(lag_ms, control=False)
    assert counts.reads > 100 and counts.hits > 0, counts.line()
    assert counts.stale == 0, (counts.line(), counts.examples)


def test_the_negative_control_shows_the_stale_reads_it_prevents(drill):
    counts = drill(500, control=True)
    assert counts.stale > 0, counts.line()
